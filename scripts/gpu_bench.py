"""The GPU benchmark of issue 20 (item 5): one prepared run for a lent GPU.

    python scripts/gpu_bench.py [--device cuda] [--frames 8,32] [--batches 1,64]
        [--dtypes fp16,bf16,fp32] [--models perceiver-vl,joint] [--warmup 3] [--repeats 20]
        [--budget-s 20] [--tf32] [--json gpu.json] [--markdown gpu.md] [--tiny]

Every combination of model, precision, frame count and batch is one row:

- **Configuration**: the paper's (384x384 frames, 40 text tokens, N = 128 latents, all three
  cross-attention blocks; ``PerceiverVLConfig()`` with ``max_frames`` the largest frame count)
  for Perceiver-VL, and the joint ViLT-style baseline of ``perceiver_vl.bench`` on the same
  input. Randomly initialised, eval mode, ``torch.inference_mode``, the vision-text matching
  forward of aligned (video, caption) pairs; Perceiver-VL under ``model.trusted_inputs()`` (no
  host synchronisation on input checks). ``fp16`` / ``bf16``: weights and frames cast to that
  dtype (no autocast); ``fp32``: TF32 off (torch's default for matrix products) unless
  ``--tf32``.
- **Latency**: ``--warmup`` untimed calls, then timed calls (wall clock of each call up to the
  GPU's finishing it, ``torch.cuda.synchronize``; ``perceiver_vl.bench.measure.time_callable``)
  until ``--repeats`` calls or ``--budget-s`` seconds (at least 3); median, p10 and p90 in ms,
  and samples/s = batch / median.
- **Peak memory**: ``torch.cuda.max_memory_allocated`` during one call minus what was allocated
  before it (so weights and inputs are excluded), MiB; not measured on the CPU.
- **Check**: the matching logits of a first call must be finite (a precision that overflows
  is reported in ``status`` and still timed).
- **FLOPs**: counted as ``perceiver-vl bench`` counts them (``perceiver_vl.bench.Benchmark.flops``:
  fp32 on the CPU, math attention, at batch 1 times the batch); achieved TFLOP/s = FLOPs / median.

A case that runs out of GPU memory is recorded with that status and the run goes on. The
output is a markdown table (stdout, and ``--markdown``) and the rows with the environment
(GPU name, torch and CUDA versions) as JSON (``--json``). ``--tiny`` swaps in the unit tests'
``tiny`` model preset so the script itself can be exercised on a CPU in seconds
(``tests/bench/test_gpu_bench_script.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from perceiver_vl.bench.cli import _choice_list, _int_list  # noqa: E402
from perceiver_vl.bench.measure import time_callable  # noqa: E402
from perceiver_vl.bench.sweeps import (  # noqa: E402
    BenchCase,
    Benchmark,
    BenchSettings,
    build_model,
    make_inputs,
)
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig  # noqa: E402
from perceiver_vl.model.presets import preset  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODELS = ("perceiver-vl", "joint")
TEXT_LENGTH = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--frames", type=_int_list, default=[8, 32], help="frame counts (8,32)")
    parser.add_argument("--batches", type=_int_list, default=[1, 64], help="batch sizes (1,64)")
    parser.add_argument(
        "--dtypes",
        type=_choice_list(list(DTYPES)),
        default=["fp16", "bf16", "fp32"],
        help="precisions (fp16,bf16,fp32)",
    )
    parser.add_argument(
        "--models",
        type=_choice_list(MODELS),
        default=list(MODELS),
        help="perceiver-vl and/or joint (both)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case (3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls at most (20)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop timing a case after this many seconds of timed calls (20; at least 3 calls)",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matrix products")
    parser.add_argument("--json", type=Path, default=None, help="write rows + environment here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the tests' tiny model preset instead of the paper configuration (smoke runs)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or args.budget_s <= 0:
        parser.error("--warmup must be >= 0, --repeats >= 1 and --budget-s > 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: this machine has no CUDA GPU that torch can use "
            f"(torch {torch.__version__}); run it on a GPU machine, or pass --device cpu"
        )
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: use cuda, cuda:N or cpu")
    return args


def base_config(frames: Sequence[int], tiny: bool) -> PerceiverVLConfig:
    """The paper configuration (or the ``tiny`` preset) with room for the longest clip."""
    if tiny:
        return preset("tiny", max_frames=max(frames))
    return PerceiverVLConfig(max_frames=max(frames))


def bench_case(name: str, config: PerceiverVLConfig, frames: int, batch: int) -> BenchCase:
    """The ``perceiver_vl.bench`` case of one row: all cross-attention blocks, 40 tokens."""
    blocks = tuple(range(len(config.cross_attention_before_layers)))
    return BenchCase(
        model=name,
        frames=frames,
        image_size=config.image_size,
        latents=config.num_latents,
        cross_attention_layers=blocks,
        batch=batch,
        text_length=TEXT_LENGTH,
    )


def forward_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """The timed call: Perceiver-VL with every block and no value checks, or the baseline."""
    if isinstance(model, PerceiverVL):
        layers = list(range(len(model.config.cross_attention_before_layers)))

        def call() -> Any:
            with model.trusted_inputs():
                return model(**inputs, cross_attention_layers=layers)

        return call
    return lambda: model(**inputs)


def synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` that returns only once the GPU has finished its work (unchanged on the CPU)."""
    if device.type != "cuda":
        return fn

    def call() -> Any:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return call


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Most memory allocated during one call beyond what was allocated before it (GPU only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - before) / 2**20


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "out of memory" in str(err).lower()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    config = base_config(args.frames, args.tiny)
    counter = Benchmark(BenchSettings(base_config=config))  # the bench's FLOP count (CPU)
    rows: list[dict[str, Any]] = []
    for name in args.models:
        for dtype in args.dtypes:
            model = build_model(bench_case(name, config, 1, 1), base_config=config)
            model = model.to(device=device, dtype=DTYPES[dtype])
            for frames in args.frames:
                for batch in args.batches:
                    case = bench_case(name, config, frames, batch)
                    row: dict[str, Any] = {
                        "model": name,
                        "dtype": dtype,
                        "frames": frames,
                        "batch": batch,
                        "gflops": counter.flops(case) / 1e9,
                        "status": "ok",
                    }
                    try:
                        inputs = {
                            k: v.to(device=device, dtype=DTYPES[dtype])
                            if v.is_floating_point()
                            else v.to(device)
                            for k, v in make_inputs(case, vocab_size=config.vocab_size).items()
                        }
                        call = synchronised(forward_call(model, inputs), device)
                        with torch.inference_mode():
                            logits = call().matching_logits
                            row["finite"] = bool(torch.isfinite(logits).all())
                            if not row["finite"]:
                                row["status"] = "non-finite matching logits"
                            timing = time_callable(
                                call,
                                warmup=args.warmup,
                                min_repeats=min(3, args.repeats),
                                max_repeats=args.repeats,
                                budget_s=args.budget_s,
                            )
                            row["peak_mem_mib"] = peak_memory_mib(call, device)
                        row.update(
                            latency_ms_median=timing.median_ms,
                            latency_ms_p10=timing.p10_ms,
                            latency_ms_p90=timing.p90_ms,
                            repeats=timing.repeats,
                            samples_per_s=batch / (timing.median_ms / 1e3),
                            tflops_per_s=row["gflops"] / timing.median_ms,  # GFLOP/ms = TFLOP/s
                        )
                    except (RuntimeError, MemoryError) as err:
                        if not _is_oom(err):
                            raise
                        row["status"] = "out of memory"
                        inputs = call = None  # type: ignore[assignment]  # free before the next
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(_line(row), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"environment": environment(device, args), "rows": rows}


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "tf32": bool(args.tf32),
        "configuration": "tiny preset" if args.tiny else "paper (384x384, 40 tokens, N=128)",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return env


def _line(row: dict[str, Any]) -> str:
    if "latency_ms_median" not in row:
        return (
            f"{row['model']} {row['dtype']} {row['frames']}f batch {row['batch']}: {row['status']}"
        )
    mem = "" if row["peak_mem_mib"] is None else f", peak {row['peak_mem_mib']:.0f} MiB"
    note = "" if row["status"] == "ok" else f" ({row['status']})"
    return (
        f"{row['model']}{note} {row['dtype']} {row['frames']}f batch {row['batch']}: "
        f"{row['latency_ms_median']:.2f} ms, {row['samples_per_s']:.1f} samples/s, "
        f"{row['tflops_per_s']:.3g} TFLOP/s{mem}"
    )


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    head = (
        f"{env.get('gpu', env['device'])}, torch {env['torch']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f", {env['configuration']}, TF32 {'on' if env['tf32'] else 'off'}\n\n"
    )
    lines = [
        "| model | dtype | frames | batch | median ms (p10-p90) | samples/s | TFLOP/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "latency_ms_median" not in r:
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r['frames']} | {r['batch']} | {r['status']} "
                "| | | |"
            )
            continue
        mem = "–" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:,.0f}"
        name = r["model"] if r["status"] == "ok" else f"{r['model']} ({r['status']})"
        lines.append(
            f"| {name} | {r['dtype']} | {r['frames']} | {r['batch']} | "
            f"{r['latency_ms_median']:.2f} ({r['latency_ms_p10']:.2f}-{r['latency_ms_p90']:.2f}) | "
            f"{r['samples_per_s']:,.1f} | {r['tflops_per_s']:.3g} | {mem} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
