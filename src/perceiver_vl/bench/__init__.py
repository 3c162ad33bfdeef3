"""Efficiency measurement: FLOPs, latency, memory and scaling of Perceiver-VL against a
ViLT-style joint transformer, with the machine's matmul throughput measured alongside.

Function API (the command is ``perceiver-vl bench``)::

    from perceiver_vl.bench import efficiency_rows, plot_efficiency
    rows = efficiency_rows(frames=(8, 16, 32))      # Perceiver-VL and the baseline, fp32, batch 1
    plot_efficiency(rows, "efficiency.png")

Plotting needs matplotlib (the ``bench`` extra); it is imported only when a plot is drawn.

May import: :mod:`perceiver_vl.model`, :mod:`perceiver_vl.flops`, :mod:`perceiver_vl.fileio`;
never ``train`` or ``data`` (inputs are random tensors of the right shapes).
"""

from .baseline import JointTransformer, JointTransformerOutput
from .matmul import MatmulThroughput, matmul_throughput
from .measure import Timing, peak_memory_mb, percentile, time_callable
from .plots import plot_efficiency, plot_retrieval_time, plot_sweep, write_plots
from .sweeps import (
    EXTRA_KEYS,
    MODELS,
    MODES,
    ROW_KEYS,
    SWEEPS,
    BenchCase,
    Benchmark,
    BenchSettings,
    build_model,
    default_cases,
    efficiency_rows,
    make_inputs,
    run_benchmark,
    sweep_cases,
)

__all__ = [
    "EXTRA_KEYS",
    "MODELS",
    "MODES",
    "ROW_KEYS",
    "SWEEPS",
    "BenchCase",
    "BenchSettings",
    "Benchmark",
    "JointTransformer",
    "JointTransformerOutput",
    "MatmulThroughput",
    "Timing",
    "build_model",
    "default_cases",
    "efficiency_rows",
    "make_inputs",
    "matmul_throughput",
    "peak_memory_mb",
    "percentile",
    "plot_efficiency",
    "plot_retrieval_time",
    "plot_sweep",
    "run_benchmark",
    "sweep_cases",
    "time_callable",
    "write_plots",
]
