from __future__ import annotations

import math

import pytest
import torch

from perceiver_vl.bench import (
    EXTRA_KEYS,
    ROW_KEYS,
    SWEEPS,
    BenchCase,
    Benchmark,
    build_model,
    default_cases,
    make_inputs,
    run_benchmark,
    sweep_cases,
)
from perceiver_vl.flops import count_flops

from .conftest import tiny_bench_config


def _case(**changes) -> BenchCase:
    return BenchCase(**{"image_size": 32, "text_length": 6, "latents": 8, **changes})


@pytest.fixture(scope="module")
def flops_by_frames():
    bench = Benchmark()
    bench.settings.base_config = tiny_bench_config()
    frames = (2, 4, 6, 8)
    return {
        model: [bench.flops(_case(model=model, frames=t)) for t in frames]
        for model in ("perceiver-vl", "joint")
    }


def test_perceiver_vl_flops_grow_linearly_with_frames(flops_by_frames):
    f = flops_by_frames["perceiver-vl"]
    steps = [b - a for a, b in zip(f, f[1:])]
    assert all(s > 0 for s in steps)
    assert steps[0] == steps[1] == steps[2]  # exactly affine in the number of input tokens


def test_joint_flops_grow_faster_than_linearly(flops_by_frames):
    f = flops_by_frames["joint"]
    steps = [b - a for a, b in zip(f, f[1:])]
    assert steps[0] < steps[1] < steps[2]  # the attention term is quadratic
    # second differences are constant: a quadratic in the number of tokens
    assert steps[1] - steps[0] == steps[2] - steps[1] > 0
    # the baseline's cost overtakes Perceiver-VL's as the input grows
    ratios = [j / p for j, p in zip(f, flops_by_frames["perceiver-vl"])]
    assert ratios == sorted(ratios) and ratios[-1] > ratios[0]


def test_meta_device_count_equals_a_real_count():
    case = _case(model="joint", frames=3)
    bench = Benchmark()
    bench.settings.base_config = tiny_bench_config()
    real = count_flops(
        build_model(case, base_config=tiny_bench_config()),
        **make_inputs(case, vocab_size=100),
    )
    assert bench.flops(case) == real


def test_flops_scale_with_batch_and_not_dtype():
    bench = Benchmark()
    bench.settings.base_config = tiny_bench_config()
    one = bench.flops(_case(frames=2))
    assert bench.flops(_case(frames=2, batch=3)) == 3 * one
    assert bench.flops(_case(frames=2, dtype="bf16")) == one
    assert bench.flops(_case(frames=2, cross_attention_layers=(0,))) < one


def test_rows_have_the_documented_keys(tiny_settings):
    cases = [
        _case(model="perceiver-vl", frames=2),
        _case(model="joint", frames=2, dtype="bf16", batch=2),
    ]
    rows = run_benchmark(cases, settings=tiny_settings)
    assert len(rows) == 2
    for row, case in zip(rows, cases):
        assert set(ROW_KEYS) <= set(row) and set(EXTRA_KEYS) <= set(row)
        assert row["status"] == "ok"
        assert row["gmacs"] == pytest.approx(row["gflops"] / 2)
        assert row["latency_ms_p10"] <= row["latency_ms_median"] <= row["latency_ms_p90"]
        assert row["samples_per_s"] == pytest.approx(case.batch / row["latency_ms_median"] * 1e3)
        assert row["fraction_of_matmul_peak"] == pytest.approx(
            row["gflops_per_s"] / row["matmul_gflops_per_s"]
        )
        assert row["peak_mem_mb"] > 0 and row["repeats"] == 2
        assert row["threads"] == torch.get_num_threads()
    assert rows[0]["latents"] == 8 and rows[0]["cross_attention_layers"] == [0, 1, 2]
    assert rows[1]["latents"] is None and rows[1]["cross_attention_layers"] is None
    assert rows[1]["dtype"] == "bf16" and rows[1]["batch"] == 2


def test_peak_memory_grows_with_frames(tiny_settings):
    rows = run_benchmark([_case(frames=2), _case(frames=16)], settings=tiny_settings)
    assert rows[1]["peak_mem_mb"] > rows[0]["peak_mem_mb"]


def test_slow_cases_are_counted_but_not_timed(tiny_settings):
    tiny_settings.max_forward_s = 1e-12
    (row,) = run_benchmark([_case(model="joint", frames=2)], settings=tiny_settings)
    assert row["status"].startswith("not timed")
    assert row["gflops"] > 0
    assert row["latency_ms_median"] is None and row["samples_per_s"] is None


def test_stream_modes_score_n_by_n_pairs(tiny_settings):
    cases = [_case(mode=mode, batch=3, frames=2) for mode in ("multi", "mixed", "single")]
    rows = run_benchmark(cases, settings=tiny_settings)
    by_mode = {r["mode"]: r for r in rows}
    assert all(r["pairs"] == 9 for r in rows)
    assert by_mode["single"]["gflops"] > by_mode["mixed"]["gflops"] > by_mode["multi"]["gflops"]
    for r in rows:
        assert r["samples_per_s"] == pytest.approx(9 / r["latency_ms_median"] * 1e3)


def test_bf16_autocast_setting(tiny_settings):
    tiny_settings.bf16 = "autocast"
    (row,) = run_benchmark([_case(dtype="bf16", frames=2)], settings=tiny_settings)
    assert row["status"] == "ok" and math.isfinite(row["latency_ms_median"])


def test_case_and_sweep_validation():
    with pytest.raises(ValueError, match="model must be"):
        BenchCase(model="vilt")
    with pytest.raises(ValueError, match="frames must"):
        BenchCase(frames=65)
    with pytest.raises(ValueError, match="cross_attention_layers"):
        BenchCase(cross_attention_layers=(3,))
    with pytest.raises(ValueError, match="perceiver-vl only"):
        BenchCase(model="joint", mode="single")
    with pytest.raises(ValueError, match="unknown sweep"):
        sweep_cases("depth")
    with pytest.raises(ValueError, match="cases is empty"):
        run_benchmark([])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model(BenchCase(image_size=100))


def test_default_cases_and_sweeps():
    cases = default_cases((8, 32))
    assert len(cases) == 2 * 2 * 2 * 2  # models x dtypes x batches x frames
    assert {c.frames for c in cases} == {8, 32} and {c.batch for c in cases} == {1, 16}
    for name in SWEEPS:
        swept = sweep_cases(name, dtypes=("fp32",))
        assert swept and all(c.sweep == name for c in swept)
    assert {c.latents for c in sweep_cases("latents")} == {32, 64, 128, 256, 512}
    assert {c.mode for c in sweep_cases("streams")} == {"single", "multi", "mixed"}


def test_a_configuration_in_two_sweeps_is_measured_once(tiny_settings):
    calls = []
    bench = Benchmark(tiny_settings, progress=calls.append)
    rows = bench.run([_case(frames=2), _case(frames=2, sweep="frames")])
    assert [r["sweep"] for r in rows] == ["main", "frames"]
    assert rows[0]["latency_ms_median"] == rows[1]["latency_ms_median"]
    assert sum(message.startswith("[") for message in calls) == 1
