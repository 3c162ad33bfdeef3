from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_vl.bench import matmul_throughput, peak_memory_mb, percentile, time_callable
from perceiver_vl.bench.measure import median_call_ms, pair_latency_ms


class FakeClock:
    """Each call of the timed function advances time by the next duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]])
@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_errors():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must"):
        percentile([1.0], 120)


def test_time_callable_statistics_and_warmup():
    clock = FakeClock([0.010, 0.020, 0.030, 0.040, 0.050])
    timing = time_callable(
        clock.work, warmup=2, min_repeats=5, max_repeats=5, budget_s=0.0, clock=clock
    )
    # the two warm-up calls took 10 and 20 ms; the timed ones 30, 40, 50, 10, 20 ms
    assert clock.calls == 7
    assert timing.repeats == 5 and timing.warmup == 2
    assert timing.median_ms == pytest.approx(30.0)
    assert timing.p10_ms == pytest.approx(np.percentile([30, 40, 50, 10, 20], 10))
    assert timing.p90_ms == pytest.approx(np.percentile([30, 40, 50, 10, 20], 90))


def test_time_callable_repeats_follow_the_budget():
    slow = FakeClock([2.0])
    assert time_callable(slow.work, warmup=0, min_repeats=3, budget_s=1.0, clock=slow).repeats == 3
    fast = FakeClock([0.125])  # exact in binary: 8 calls spend the 1 s budget
    timing = time_callable(fast.work, warmup=0, min_repeats=3, budget_s=1.0, clock=fast)
    assert timing.repeats == 8
    capped = FakeClock([0.125])
    timing = time_callable(
        capped.work, warmup=0, min_repeats=3, max_repeats=4, budget_s=1.0, clock=capped
    )
    assert timing.repeats == 4


@pytest.mark.parametrize(
    "kwargs", [{"warmup": -1}, {"min_repeats": 0}, {"min_repeats": 5, "max_repeats": 2}]
)
def test_time_callable_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        time_callable(lambda: None, **kwargs)


def test_peak_memory_counts_live_tensors():
    def two_live_buffers():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB, both alive
        del a
        return b + 1  # a is freed before this one: the peak stays at 8 MiB

    assert peak_memory_mb(two_live_buffers) == pytest.approx(8.0, abs=0.01)
    assert peak_memory_mb(lambda: torch.ones(256, 1024)) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_matmul_throughput_reports_its_settings(dtype):
    result = matmul_throughput(dtype, size=64, min_repeats=2, budget_s=0.0)
    assert result.dtype == dtype and result.size == 64
    assert result.threads == torch.get_num_threads()
    assert result.gflops_per_s > 0 and result.p10_gflops_per_s >= result.gflops_per_s
    with pytest.raises(ValueError, match="dtype"):
        matmul_throughput("fp16")


def test_median_call_ms_warms_up_once_then_times_each_repeat():
    calls = []
    assert median_call_ms(lambda: calls.append(1), repeats=3) >= 0.0
    assert len(calls) == 1 + 3
    calls.clear()
    median_call_ms(lambda: calls.append(1), repeats=0)  # at least one timed call
    assert len(calls) == 2


def test_pair_latency_runs_the_first_pairs_with_the_chosen_blocks():
    from perceiver_vl.evaluation import RetrievalInputs

    seen = []

    class Model(torch.nn.Module):
        def forward(self, *, video, video_mask, text_ids, text_mask, cross_attention_layers):
            seen.append((video.shape[0], text_ids.shape[0], cross_attention_layers))

    data = RetrievalInputs(
        torch.ones(5, 4, dtype=torch.long),
        torch.ones(5, 4, dtype=torch.bool),
        torch.arange(5),
        video=torch.zeros(5, 2, 3, 8, 8),
        video_mask=torch.ones(5, 2, dtype=torch.bool),
    )
    assert pair_latency_ms(Model(), data, (0,), repeats=2, batch_size=3) >= 0.0
    assert seen == [(3, 3, (0,))] * 3
    head = data.head(2)
    assert head.num_visual == 2 and head.text_ids.shape == (2, 4)
    assert head.text_to_video.tolist() == [0, 1] and head.images is None


def test_pair_latency_runs_in_the_chosen_precision():
    from perceiver_vl.evaluation import RetrievalInputs

    dtypes = []

    class Model(torch.nn.Module):
        def forward(self, *, video, video_mask, text_ids, text_mask, cross_attention_layers):
            dtypes.append(torch.nn.functional.linear(video[:, 0, 0, 0], torch.ones(1, 8)).dtype)

    data = RetrievalInputs(
        torch.ones(2, 4, dtype=torch.long),
        torch.ones(2, 4, dtype=torch.bool),
        torch.arange(2),
        video=torch.zeros(2, 2, 3, 8, 8),
        video_mask=torch.ones(2, 2, dtype=torch.bool),
    )
    pair_latency_ms(Model(), data, None, repeats=1, batch_size=2, precision="fp32")
    pair_latency_ms(Model(), data, None, repeats=1, batch_size=2, precision="bf16")
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2
    with pytest.raises(ValueError, match="precision"):
        pair_latency_ms(Model(), data, None, repeats=1, precision="fp16")


def test_bf16_speedup_is_measured_and_chooses_the_precision(monkeypatch):
    from perceiver_vl.bench import matmul

    assert matmul.bf16_speedup(rows=64, features=32, repeats=1) > 0
    with pytest.raises(ValueError, match="rows"):
        matmul.bf16_speedup(rows=0)
    for speedup, expected in ((0.2, "fp32"), (1.0, "fp32"), (2.5, "bf16")):
        monkeypatch.setattr(matmul, "bf16_speedup", lambda speedup=speedup, **_: speedup)
        matmul.fastest_cpu_precision.cache_clear()
        assert matmul.fastest_cpu_precision() == expected
    matmul.fastest_cpu_precision.cache_clear()


def test_demo_precision_setting(monkeypatch):
    from perceiver_vl.bench import matmul
    from perceiver_vl.demo.recipe import DemoSettings

    with pytest.raises(ValueError, match="precision"):
        DemoSettings(precision="fp16")
    assert DemoSettings(precision="fp32").resolved_precision() == "fp32"
    monkeypatch.setattr(matmul, "fastest_cpu_precision", lambda: "bf16")
    assert DemoSettings().resolved_precision() == "bf16"
    monkeypatch.setattr(matmul, "fastest_cpu_precision", lambda: "fp32")
    assert DemoSettings().resolved_precision() == "fp32"
