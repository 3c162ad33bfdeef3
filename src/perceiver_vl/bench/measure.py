"""Timing and memory measurement of one callable (a forward, a retrieval scoring call).

Latency: ``warmup`` untimed calls, then timed calls with ``time.perf_counter`` until both
``min_repeats`` calls and ``budget_s`` seconds are spent (or ``max_repeats`` calls are done);
median, p10 and p90 of the per-call times (linear interpolation between order statistics, as
``numpy.percentile``). Slow configurations therefore get few repeats, fast ones many.

Peak memory: one call under ``torch.profiler`` with ``profile_memory=True``; every allocation
and free of torch's CPU allocator is an event with a signed size, and the peak of their running
sum is the most tensor memory that was live at once during the call, beyond what existed before
it (weights and inputs are not included). It counts tensors only, not the allocator's cache,
oneDNN scratch space or the Python heap, and it does not depend on timing: the same call gives
the same figure on any machine.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics in milliseconds over ``repeats`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence: time at least one call")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 30,
    budget_s: float = 3.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``min_repeats`` and at most
    ``max_repeats`` timed calls, stopping once ``budget_s`` seconds of timed calls are spent."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"need 1 <= min_repeats <= max_repeats, got min_repeats={min_repeats}, "
            f"max_repeats={max_repeats}"
        )
    if budget_s < 0:
        raise ValueError(f"budget_s must be >= 0, got {budget_s}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < min_repeats or spent < budget_s):
        start = clock()
        fn()
        elapsed = clock() - start
        times.append(elapsed)
        spent += elapsed
    ms = [t * 1e3 for t in times]
    return Timing(
        median_ms=percentile(ms, 50),
        p10_ms=percentile(ms, 10),
        p90_ms=percentile(ms, 90),
        repeats=len(ms),
        warmup=warmup,
    )


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak live tensor memory (MiB) allocated by torch during one ``fn()`` call.

    From ``torch.profiler`` memory events (see the module docstring); the call's own result is
    counted while it is alive. Runs ``fn`` once.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    ]
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


@contextlib.contextmanager
def inference_context(dtype: str = "fp32", *, autocast: bool = False) -> Iterator[None]:
    """``torch.inference_mode()``, plus CPU bf16 autocast when ``autocast`` and ``dtype="bf16"``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if autocast and dtype == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        yield


__all__ = [
    "DTYPES",
    "Timing",
    "inference_context",
    "peak_memory_mb",
    "percentile",
    "time_callable",
]


def median_call_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``max(1, repeats)`` timed calls of ``fn`` after one untimed call."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def pair_latency_ms(
    model: torch.nn.Module,
    data: Any,
    blocks: Sequence[int] | None,
    repeats: int,
    batch_size: int = 1,
    *,
    precision: str = "bf16",
) -> float:
    """Milliseconds per (video, caption) pair of a single-stream forward of the first
    ``batch_size`` pairs of ``data`` (``RetrievalInputs``-like: ``video``, ``video_mask``,
    ``text_ids``, ``text_mask``) running cross-attention ``blocks``, in ``precision``
    (``bf16``: CPU bf16 autocast; ``fp32``); median over ``repeats`` timed calls
    (:func:`median_call_ms`)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    video, vmask = data.video[:batch_size], data.video_mask[:batch_size]
    ids, mask = data.text_ids[:batch_size], data.text_mask[:batch_size]

    def call() -> None:
        with (
            torch.no_grad(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
        ):
            model(
                video=video,
                video_mask=vmask,
                text_ids=ids,
                text_mask=mask,
                cross_attention_layers=blocks,
            )

    return median_call_ms(call, repeats) / batch_size
