"""``perceiver-vl bench``: FLOPs, latency, memory and scaling of Perceiver-VL against a joint
(ViLT-style) baseline, with the machine's matmul throughput measured in the same run.

Examples::

    perceiver-vl bench                                  # paper config, both models, fp32+bf16
    perceiver-vl bench --frames 8,16,32 --dtypes fp32 --batch 1
    perceiver-vl bench --sweep all --json rows.json --plot docs/img
    perceiver-vl bench --quick                          # a short smoke run
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.fileio import atomic_write_json

from .sweeps import (
    MODELS,
    ROW_KEYS,
    SWEEPS,
    Benchmark,
    BenchSettings,
    default_cases,
    sweep_cases,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 8,32, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers such as 8,32, got {text!r}")
    return values


def _choice_list(choices: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(part.strip() for part in text.split(",") if part.strip())
        if "all" in values:
            return tuple(choices)
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)} (or all), got {text!r}"
            )
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` options."""
    parser.add_argument("--frames", type=_int_list, default=(8, 32), help="frame counts (8,32)")
    parser.add_argument(
        "--models", type=_choice_list(MODELS), default=MODELS, help="perceiver-vl,joint"
    )
    parser.add_argument(
        "--dtypes", type=_choice_list(("fp32", "bf16")), default=("fp32", "bf16"), help="fp32,bf16"
    )
    parser.add_argument(
        "--image-size", type=int, default=384, help="frame side of the main comparison (384)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a model config.json to benchmark instead of the paper configuration",
    )
    parser.add_argument(
        "--batch", type=_int_list, default=(1, 16), help="batch sizes for throughput (1,16)"
    )
    parser.add_argument(
        "--sweep",
        type=_choice_list(SWEEPS),
        default=(),
        help=f"extra sweeps: {','.join(SWEEPS)} or all (batch 1)",
    )
    parser.add_argument(
        "--sweep-frames", type=_int_list, default=(1, 2, 4, 8, 16, 32, 64), help="frames sweep"
    )
    parser.add_argument(
        "--image-sizes", type=_int_list, default=(224, 288, 384, 480, 576), help="frame sides"
    )
    parser.add_argument("--latents", type=_int_list, default=(32, 64, 128, 256, 512), help="N")
    parser.add_argument(
        "--stream-sizes", type=_int_list, default=(2, 4, 8), help="n for n x n retrieval pairs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch threads (default: torch's own, here {torch.get_num_threads()})",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case (1)")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed calls at least (3)")
    parser.add_argument("--max-repeats", type=int, default=30, help="timed calls at most (30)")
    parser.add_argument(
        "--budget-s", type=float, default=3.0, help="seconds of timed calls per case (3)"
    )
    parser.add_argument(
        "--max-forward-s",
        type=float,
        default=30.0,
        help="skip timing cases estimated slower than this per call (30)",
    )
    parser.add_argument(
        "--bf16",
        choices=("weights", "autocast"),
        default="weights",
        help="bf16 as a bf16 copy of the weights (default) or fp32 weights under autocast",
    )
    parser.add_argument("--matmul-size", type=int, default=4096, help="matmul side (4096)")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    parser.add_argument("--compile", action="store_true", help="wrap models in torch.compile")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: batch 1, 1 warm-up + 2 repeats, 1 s budgets, 2048 matmul, small sweeps",
    )
    parser.add_argument(
        "--index-videos",
        type=int,
        default=None,
        help="indexing throughput: build an index of this many generated clips (decode + "
        "encode, what `perceiver-vl index` does) at the first of --frames and --image-size; "
        "default 32, 0 with --quick; 0 skips it",
    )
    parser.add_argument(
        "--index-batch", type=int, default=8, help="videos per forward when indexing (8)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="write PNG figures to this folder")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The :class:`BenchSettings` the options describe (``--quick`` shortens everything)."""
    for name in ("warmup",):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.min_repeats < 1 or args.max_repeats < args.min_repeats:
        raise SystemExit(
            f"need 1 <= --min-repeats <= --max-repeats, got {args.min_repeats} and "
            f"{args.max_repeats}"
        )
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    if args.matmul_size < 16:
        raise SystemExit(f"--matmul-size must be at least 16, got {args.matmul_size}")
    base_config = None
    if args.config is not None:
        from perceiver_vl import PerceiverVLConfig

        if not args.config.is_file():
            raise SystemExit(f"--config {args.config}: no such file (give a model config.json)")
        base_config = PerceiverVLConfig.from_json_file(args.config)
    settings = BenchSettings(
        base_config=base_config,
        warmup=args.warmup,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        budget_s=args.budget_s,
        max_forward_s=args.max_forward_s,
        memory=not args.no_memory,
        compile=args.compile,
        bf16=args.bf16,
        matmul_size=args.matmul_size,
        threads=args.threads,
    )
    if args.quick:
        settings.warmup, settings.min_repeats, settings.max_repeats = 1, 2, 5
        settings.budget_s = 1.0
        settings.max_forward_s = min(settings.max_forward_s, 10.0)
        settings.matmul_size = min(settings.matmul_size, 2048)
    return settings


def cases_from_args(args: argparse.Namespace) -> list:
    """The cases the options select: the main comparison, then each requested sweep."""
    batches = (1,) if args.quick else args.batch
    cases = default_cases(
        args.frames,
        models=args.models,
        dtypes=args.dtypes,
        batches=batches,
        image_size=args.image_size,
    )
    for name in args.sweep:
        extra: dict[str, Any] = {
            "frames": args.sweep_frames,
            "image_sizes": args.image_sizes,
            "latents": args.latents,
            "block_frames": args.frames,
            "stream_sizes": args.stream_sizes,
        }
        if args.quick:
            extra.update(
                frames=tuple(t for t in args.sweep_frames if t <= 16),
                image_sizes=args.image_sizes[:3],
                latents=args.latents[:3],
                stream_sizes=args.stream_sizes[:2],
            )
        models = args.models if name in ("frames", "image-size") else ("perceiver-vl",)
        if "perceiver-vl" not in models:
            continue
        cases += sweep_cases(name, models=models, dtypes=args.dtypes, **extra)
    return cases


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.{digits}f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("model", "model", 0),
    ("mode", "mode", 0),
    ("frames", "T", 0),
    ("image_size", "px", 0),
    ("latents", "N", 0),
    ("cross_attention_layers", "blocks", 0),
    ("dtype", "dtype", 0),
    ("batch", "B", 0),
    ("gflops", "GFLOPs", 2),
    ("gmacs", "GMACs", 2),
    ("latency_ms_median", "ms p50", 1),
    ("latency_ms_p10", "ms p10", 1),
    ("latency_ms_p90", "ms p90", 1),
    ("gflops_per_s", "GFLOP/s", 0),
    ("fraction_of_matmul_peak", "%peak", 0),
    ("peak_mem_mb", "mem MB", 1),
    ("samples_per_s", "samples/s", 2),
    ("repeats", "n", 0),
)


def format_table(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """Rows as an aligned text table, or a Markdown table with ``markdown=True`` (``%peak`` in
    percent; untimed cases show ``-``)."""
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = []
    for row in rows:
        cells = []
        for key, _, digits in TABLE_COLUMNS:
            value = row.get(key)
            if key == "fraction_of_matmul_peak" and value is not None:
                value = 100.0 * value
            cells.append(_fmt(value, digits))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines)


def _find(rows, **match) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and row.get("latency_ms_median"):
            return row
    return None


def summarize_targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on ``rows`` where they hold the needed cases.

    - the paper configuration (8 frames, 384^2, N=128, three blocks, batch 1, fp32) at >= 70 %
      of the fp32 matmul throughput;
    - the same in bf16 at >= 50 % of the bf16 matmul throughput (issue #20, for CPUs without
      AMX);
    - bf16 at least 2.5x faster than fp32 (same configuration);
    - latency from 8 to 32 frames: Perceiver-VL x <= 2.2, the joint baseline x >= 8.
    """
    paper = dict(mode="forward", image_size=384, batch=1, text_length=40, frames=8)
    lines = []

    def pick(**changes):
        for sweep in ("main", "frames"):
            found = _find(rows, **{**paper, "sweep": sweep, **changes})
            if found is not None:
                return found
        return None

    pvl = dict(model="perceiver-vl", latents=128, cross_attention_layers=[0, 1, 2])
    fp32 = pick(**pvl, dtype="fp32")
    if fp32 is not None:
        fraction = fp32["fraction_of_matmul_peak"]
        lines.append(
            f"paper config fp32 at {100 * fraction:.0f} % of the fp32 matmul throughput "
            f"({fp32['gflops_per_s']:.0f} of {fp32['matmul_gflops_per_s']:.0f} GFLOP/s; "
            f"target >= 70 %): {'met' if fraction >= 0.7 else 'NOT met'}"
        )
    bf16 = pick(**pvl, dtype="bf16")
    if bf16 is not None and bf16["fraction_of_matmul_peak"] is not None:
        fraction = bf16["fraction_of_matmul_peak"]
        lines.append(
            f"paper config bf16 at {100 * fraction:.0f} % of the bf16 matmul throughput "
            f"({bf16['gflops_per_s']:.0f} of {bf16['matmul_gflops_per_s']:.0f} GFLOP/s; "
            f"target >= 50 % on a CPU without AMX): {'met' if fraction >= 0.5 else 'NOT met'}"
        )
    if fp32 is not None and bf16 is not None:
        speedup = fp32["latency_ms_median"] / bf16["latency_ms_median"]
        lines.append(
            f"bf16 {bf16['latency_ms_median']:.1f} ms vs fp32 {fp32['latency_ms_median']:.1f} "
            f"ms: {speedup:.2f}x (target >= 2.5x): {'met' if speedup >= 2.5 else 'NOT met'}"
        )
    for model, spec, target, sign in (
        ("perceiver-vl", pvl, 2.2, "<="),
        ("joint", dict(model="joint"), 8.0, ">="),
    ):
        for dtype in ("fp32", "bf16"):
            short, long = pick(**spec, dtype=dtype), pick(**spec, dtype=dtype, frames=32)
            if short is None or long is None:
                continue
            ratio = long["latency_ms_median"] / short["latency_ms_median"]
            met = ratio <= target if sign == "<=" else ratio >= target
            lines.append(
                f"{model} {dtype} latency 8 -> 32 frames: x{ratio:.2f} "
                f"(GFLOPs x{long['gflops'] / short['gflops']:.2f}; target {sign} {target}): "
                f"{'met' if met else 'NOT met'}"
            )
    return lines


def machine_summary(bench: Benchmark) -> list[str]:
    """Machine, torch, threads and the measured matmul throughputs."""
    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]
    for dtype, m in bench.matmul.items():
        lines.append(
            f"matmul {dtype} {m.size}x{m.size}: {m.gflops_per_s:.0f} GFLOP/s median "
            f"({m.p10_gflops_per_s:.0f} at p10 time, {m.repeats} calls)"
        )
    return lines


def _indexing_row(args: argparse.Namespace, settings: BenchSettings, videos: int) -> dict:
    """The indexing-throughput row: Perceiver-VL of the run's configuration, fp32."""
    from .indexing import indexing_row
    from .sweeps import BenchCase, bench_config

    base = settings.base_config
    frames = 8 if 8 in args.frames else args.frames[0]
    case = BenchCase(
        model="perceiver-vl",
        frames=frames,
        image_size=args.image_size,
        **({"latents": base.num_latents} if base is not None else {}),
    )
    print(f"indexing {videos} generated clips ({frames} x {args.image_size}²) ...", file=sys.stderr)
    row = indexing_row(
        bench_config(case, base),
        num_videos=videos,
        frames=frames,
        image_size=args.image_size,
        batch_size=args.index_batch,
    )
    print(
        f"indexing (decode + encode, `perceiver-vl index`): {row['samples_per_s']:.2f} videos/s "
        f"at batch {row['batch']} over {videos} clips of {frames} x {args.image_size}² "
        f"({row['decode_ms_per_video']:.0f} ms/video decoding), fp32, "
        f"{row['threads']} threads; {row['videos_per_cpu_s'] or float('nan'):.2f} videos per "
        "CPU-second"
    )
    return row


def _write_json(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_json(path, list(rows), indent=1)


def run(args: argparse.Namespace) -> int:
    """Run ``perceiver-vl bench`` -> exit status."""
    index_videos = args.index_videos
    if index_videos is None:
        index_videos = 0 if args.quick else 32
    if index_videos < 0 or args.index_batch < 1:
        raise SystemExit(
            f"--index-videos must be >= 0 and --index-batch >= 1, got {index_videos} and "
            f"{args.index_batch}"
        )
    settings = settings_from_args(args)
    cases = cases_from_args(args)
    bench = Benchmark(settings, progress=lambda m: print(m, file=sys.stderr, flush=True))
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        import os

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if load is not None and load > torch.get_num_threads() + 0.5:
            print(
                f"warning: the 1-minute load average is {load:.1f} for {torch.get_num_threads()} "
                "threads; other processes compete for the CPU and latencies will be inflated",
                file=sys.stderr,
            )
        bench.measure_matmul(dict.fromkeys(c.dtype for c in cases))
        for line in machine_summary(bench):
            print(line)
        partial: list[dict[str, Any]] = []

        def save(row: dict[str, Any]) -> None:
            # rewrite the JSON after every case, so an interrupted run keeps what it measured
            partial.append(row)
            if args.json is not None:
                _write_json(args.json, partial)

        rows = bench.run(cases, on_row=save)
        if index_videos:
            row = _indexing_row(args, settings, index_videos)
            rows.append(row)
            save(row)
    finally:
        torch.set_num_threads(previous)
    print(format_table(rows))
    skipped = [r for r in rows if r["status"] != "ok"]
    for r in skipped:
        print(f"note: {r['model']} T={r['frames']} B={r['batch']} {r['dtype']}: {r['status']}")
    for line in summarize_targets(rows):
        print("target: " + line)
    if args.json is not None:
        _write_json(args.json, rows)
        print(f"wrote {len(rows)} rows to {args.json}")
    if args.plot is not None:
        from .plots import write_plots

        for path in write_plots(rows, args.plot):
            print(f"wrote {path}")
    return 0


__all__ = [
    "ROW_KEYS",
    "add_arguments",
    "cases_from_args",
    "format_table",
    "machine_summary",
    "run",
    "settings_from_args",
    "summarize_targets",
]
