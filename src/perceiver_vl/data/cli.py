"""``perceiver-vl generate-synthetic``: write the built-in synthetic benchmark."""

from __future__ import annotations

import argparse
import json
import time

from perceiver_vl.data.synthetic import generate_benchmark, generate_image_benchmark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``generate-synthetic`` options on ``parser``."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=2000, help="training clips (2000)")
    parser.add_argument("--num-val", type=int, default=200, help="validation clips (200)")
    parser.add_argument(
        "--num-test", type=int, default=500, help="test clips, unique captions (500)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels, even (64)")
    parser.add_argument(
        "--frames",
        type=int,
        nargs=2,
        default=(8, 16),
        metavar=("MIN", "MAX"),
        help="frames per clip, inclusive range (8 16)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (all cores)")
    parser.add_argument(
        "--image", action="store_true", help="write the still-image variant instead"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the benchmark described by ``args``; prints where it went."""
    start = time.perf_counter()
    common = dict(
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.image:
        out = generate_image_benchmark(args.out, **common)
    else:
        out = generate_benchmark(args.out, frames=tuple(args.frames), **common)
    meta = json.loads((out / "meta.json").read_text())
    print(
        f"wrote {meta['name']} to {out} "
        f"(train/val/test = {args.num_train}/{args.num_val}/{args.num_test}, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return 0
