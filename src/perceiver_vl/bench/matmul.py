"""The machine's matrix-multiply throughput, measured in the same run as the models.

A square ``size x size`` matmul (``torch.mm`` into a preallocated output, so allocation is not
timed) in the given dtype and thread count; ``2 * size**3`` FLOPs per call. The median call gives
the figure that forward throughputs are compared with ("fraction of matmul peak").
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from .measure import DTYPES, time_callable


@dataclass(frozen=True)
class MatmulThroughput:
    """Measured dense matmul throughput."""

    dtype: str
    size: int
    threads: int
    gflops_per_s: float  # from the median call
    p10_gflops_per_s: float  # from the p10 call time (the fast end)
    repeats: int


def matmul_throughput(
    dtype: str = "fp32",
    *,
    size: int = 4096,
    warmup: int = 2,
    min_repeats: int = 5,
    budget_s: float = 2.0,
    seed: int = 0,
) -> MatmulThroughput:
    """Time ``torch.mm`` of two ``size x size`` matrices of ``dtype`` ("fp32" or "bf16")."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    generator = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype]
    a = torch.randn(size, size, generator=generator).to(torch_dtype)
    b = torch.randn(size, size, generator=generator).to(torch_dtype)
    out = torch.empty(size, size, dtype=torch_dtype)
    timing = time_callable(
        lambda: torch.mm(a, b, out=out),
        warmup=warmup,
        min_repeats=min_repeats,
        max_repeats=max(min_repeats, 50),
        budget_s=budget_s,
    )
    flops = 2.0 * size**3
    return MatmulThroughput(
        dtype=dtype,
        size=size,
        threads=torch.get_num_threads(),
        gflops_per_s=flops / (timing.median_ms * 1e-3) / 1e9,
        p10_gflops_per_s=flops / (timing.p10_ms * 1e-3) / 1e9,
        repeats=timing.repeats,
    )


def bf16_speedup(*, rows: int = 1024, features: int = 512, repeats: int = 3) -> float:
    """How many times faster a ``(rows x features) @ (features x features)`` linear layer runs
    in bf16 than in fp32 on this CPU, measured now (best of ``repeats`` calls each, after a
    warm-up call). Above 1 where the CPU multiplies bf16 natively (AVX-512 BF16, AMX); well
    below 1 where bf16 is emulated (AVX2-only CPUs run it several times slower than fp32)."""
    if rows < 1 or features < 1 or repeats < 1:
        raise ValueError(
            f"rows, features and repeats must be positive, got {rows}, {features}, {repeats}"
        )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=generator)
    w = torch.randn(features, features, generator=generator)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                torch.nn.functional.linear(a, b)
                times.append(time.perf_counter() - start)
        best[dtype] = min(times[1:])
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


@functools.cache
def fastest_cpu_precision(threshold: float = 1.2) -> str:
    """``"bf16"`` when bf16 autocast pays on this CPU (:func:`bf16_speedup` at least
    ``threshold``), else ``"fp32"``. Measured once per process."""
    return "bf16" if bf16_speedup() >= threshold else "fp32"


__all__ = ["MatmulThroughput", "bf16_speedup", "fastest_cpu_precision", "matmul_throughput"]
