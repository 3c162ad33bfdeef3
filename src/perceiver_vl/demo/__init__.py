"""``perceiver-vl demo``: the main job on the built-in synthetic benchmark, on the CPU.

Generates the benchmark, pretrains a small Perceiver-VL (matching + masked LM, LayerDrop 0.5),
fine-tunes it for retrieval, evaluates single / multi / mixed stream and multi shortlist + mixed
re-rank on held-out unique captions, measures the LayerDrop trade-off and the efficiency against
a joint transformer, builds a search index, and writes ``report.md``, ``metrics.json`` and plots.

``recipe`` holds the settings and the training stages (shared with :mod:`perceiver_vl.analysis`),
``pipeline`` the job, ``report`` the Markdown and plots. May import every package below the CLI
(model, data, train, retrieval, bench, fileio).
"""

from __future__ import annotations

import argparse
import logging

from .pipeline import run_demo
from .recipe import DemoSettings

__all__ = ["DemoSettings", "add_arguments", "run", "run_demo"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of data, model and training (default 0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small smoke run (about two minutes) instead of the full job",
    )
    parser.add_argument(
        "--eval-split",
        choices=("test", "val"),
        default="test",
        help="the held-out split to evaluate: test (default; the finished recipe, read once) or "
        "val (for choosing a recipe without reading the test split)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-index", action="store_true", help="skip building the search index")


def run(args: argparse.Namespace) -> int:
    from .report import summary_table

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    settings.eval_split = args.eval_split
    metrics = run_demo(
        args.out,
        seed=args.seed,
        quick=args.quick,
        settings=settings,
        progress=not args.no_progress,
        build_index=not args.no_index,
    )
    mixed = metrics["retrieval"]["mixed"]["t2v_r1"]
    print()
    print(summary_table(metrics))
    print()
    print(
        f"mixed-stream text->video R@1 = {mixed:.1f} % (chance {metrics['chance_r1']:.2f} %) "
        f"on {metrics['num_test_pairs']} unique {metrics['eval_split']} captions; total {metrics['total_seconds']:.0f} s"
    )
    print(
        f"report: {args.out}/report.md   metrics: {args.out}/metrics.json   model: {metrics['model_dir']}"
    )
    print("query the model:")
    if metrics.get("search_example"):
        print(
            f'  perceiver-vl search --index {args.out}/index "a small red circle moves left then up"'
        )
    print(
        f"  python -c \"from perceiver_vl import PerceiverVL; m = PerceiverVL.from_pretrained('{metrics['model_dir']}')\""
    )
    if metrics.get("search_example"):
        print("search it in a browser (http://127.0.0.1:8000/):")
        print(f"  perceiver-vl serve --index {args.out}/index")
    return 0
