"""scripts/gpu_bench.py (issue 20's prepared GPU run), exercised on the CPU with the tiny preset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARGS = ["--device", "cpu", "--tiny", "--frames", "2,4", "--batches", "1,3", "--warmup", "1"]


def test_rows_cover_every_case_with_consistent_figures(gpu_bench, tmp_path):
    out = tmp_path / "gpu.json"
    table = tmp_path / "gpu.md"
    code = gpu_bench.main(
        [*ARGS, "--dtypes", "fp32", "--repeats", "3", "--json", str(out), "--markdown", str(table)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    cases = {(r["model"], r["dtype"], r["frames"], r["batch"]) for r in rows}
    assert cases == {
        (m, "fp32", f, b) for m in ("perceiver-vl", "joint") for f in (2, 4) for b in (1, 3)
    }
    for r in rows:
        assert r["status"] == "ok"
        assert r["repeats"] == 3
        assert r["latency_ms_p10"] <= r["latency_ms_median"] <= r["latency_ms_p90"]
        assert r["samples_per_s"] == pytest.approx(r["batch"] / (r["latency_ms_median"] / 1e3))
        assert r["peak_mem_mib"] is None  # measured on a GPU only
    by = {(r["model"], r["frames"], r["batch"]): r for r in rows}
    for model in ("perceiver-vl", "joint"):
        # FLOPs are per sample times the batch, and grow with the clip
        assert by[(model, 2, 3)]["gflops"] == pytest.approx(3 * by[(model, 2, 1)]["gflops"])
        assert by[(model, 4, 1)]["gflops"] > by[(model, 2, 1)]["gflops"] > 0
    assert result["environment"]["configuration"] == "tiny preset"
    text = table.read_text()
    assert "| perceiver-vl | fp32 | 4 | 3 |" in text and "| joint | fp32 | 2 | 1 |" in text


def test_half_precisions_run_and_overflow_is_reported(gpu_bench, monkeypatch, tmp_path):
    out = tmp_path / "gpu.json"
    argv = [*ARGS[:3], "--frames", "2", "--batches", "2", "--repeats", "1", "--json", str(out)]
    gpu_bench.main([*argv, "--dtypes", "fp16,bf16"])
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["dtype"]) for r in rows} == {
        (m, d) for m in ("perceiver-vl", "joint") for d in ("fp16", "bf16")
    }
    assert all(r["status"] == "ok" and r["finite"] for r in rows)

    real = gpu_bench.forward_call

    def overflowing(model, inputs):
        call = real(model, inputs)

        def wrapped():
            out = call()
            out.matching_logits.fill_(float("nan"))
            return out

        return wrapped

    monkeypatch.setattr(gpu_bench, "forward_call", overflowing)
    table = tmp_path / "gpu.md"
    gpu_bench.main([*argv, "--dtypes", "fp16", "--models", "joint", "--markdown", str(table)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["finite"] is False and row["status"] == "non-finite matching logits"
    assert row["latency_ms_median"] > 0  # still timed
    assert "joint (non-finite matching logits) | fp16" in table.read_text()


def test_flops_match_the_public_counter(gpu_bench, tmp_path):
    """The table's FLOPs are what ``perceiver_vl.flops.count_flops`` counts for that forward."""
    from perceiver_vl.bench.sweeps import build_model, make_inputs
    from perceiver_vl.flops import count_flops

    out = tmp_path / "gpu.json"
    gpu_bench.main([*ARGS, "--dtypes", "fp32", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    config = gpu_bench.base_config([2, 4], tiny=True)
    for r in rows:
        case = gpu_bench.bench_case(r["model"], config, r["frames"], 1)
        model = build_model(case, base_config=config)
        inputs = make_inputs(case, vocab_size=config.vocab_size)
        if r["model"] == "perceiver-vl":
            blocks = list(case.cross_attention_layers)
            expected = count_flops(model, **inputs, cross_attention_layers=blocks)
        else:
            expected = count_flops(model, **inputs)
        assert r["gflops"] == pytest.approx(r["batch"] * expected / 1e9)


def test_out_of_memory_is_recorded_and_the_run_goes_on(gpu_bench, monkeypatch, tmp_path):
    real = gpu_bench.forward_call

    def failing(model, inputs):
        if inputs["video"].shape[0] == 3:

            def call():
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

            return call
        return real(model, inputs)

    monkeypatch.setattr(gpu_bench, "forward_call", failing)
    out = tmp_path / "gpu.json"
    gpu_bench.main([*ARGS, "--dtypes", "fp32", "--models", "joint", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "out of memory", "ok", "out of memory"]

    def broken(model, inputs):
        def call():
            raise RuntimeError("shape mismatch")

        return call

    monkeypatch.setattr(gpu_bench, "forward_call", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not hidden
        gpu_bench.main([*ARGS, "--dtypes", "fp32", "--models", "joint"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_with_the_fix(gpu_bench, capsys):
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--device", "cuda"])
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dtypes", "fp8"], "fp32,bf16,fp16"),
        (["--models", "vilt"], "perceiver-vl,joint"),
        (["--frames", "0"], "positive integers"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bad_arguments_name_the_choices(gpu_bench, capsys, argv, needle):
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--device", "cpu", *argv])
    assert needle in capsys.readouterr().err
