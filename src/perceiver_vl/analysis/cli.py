"""``perceiver-vl analyze STUDY``: each study writes STUDY.json, STUDY.md and STUDY.png."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .studies import RUNNERS, STUDIES

DESCRIPTIONS = {
    "latent-size": "GFLOPs and R@1 for N in {32, 64, 128, 256} (paper Fig. 5)",
    "input-size": "GFLOPs and latency against frames and frame size, vs the joint transformer (Fig. 4)",
    "cross-attention": "R@1 and latency with 1..k cross-attention blocks, trained with/without LayerDrop (Table 3)",
    "streams": "R@1 and retrieval time against the number of pairs, single/multi/mixed stream (Fig. 6)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study", choices=STUDIES, help="; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    )
    parser.add_argument("--out", default=None, help="output folder (default: runs/analysis/STUDY)")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny smoke version (the test suite runs it)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        default=None,
        help="a folder with train.jsonl / test.jsonl (generic caption format) instead "
        "of the built-in synthetic benchmark",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out or f"runs/analysis/{args.study}")
    kwargs = {"quick": args.quick, "seed": args.seed, "progress": not args.no_progress}
    if args.data is not None:
        data = Path(args.data)
        if not (data / "train.jsonl").is_file() or not (data / "test.jsonl").is_file():
            raise SystemExit(f"--data {data}: expected train.jsonl and test.jsonl in that folder")
        kwargs["data_root"] = data
    rows = RUNNERS[args.study](out, **kwargs)
    name = args.study.replace("-", "_")
    print((out / f"{name}.md").read_text())
    print(
        f"{len(rows)} rows -> {out / (name + '.json')}, {out / (name + '.md')}, {out / (name + '.png')}"
    )
    return 0
