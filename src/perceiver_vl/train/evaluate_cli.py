"""``perceiver-vl evaluate --model DIR --data CONFIG``: retrieval in every stream mode (or QA) on
a data config's test (or val) split; prints a table and writes JSON.

Retrieval decodes the media batch by batch (``--batch-size`` clips at a time, the data config's
``num_workers`` decoding ahead) and keeps only their latents, so memory does not grow with the
number of videos; a progress bar with an ETA follows each pass over the media.

``CONFIG`` is a fit config (its ``data:`` section is used) or a file holding only the data
module's arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from perceiver_vl.evaluation import (
    MODES,
    evaluate_multiple_choice,
    evaluate_qa,
    evaluate_retrieval,
    stream_retrieval_inputs,
)
from perceiver_vl.fileio import atomic_write_json
from perceiver_vl.model import PerceiverVL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder from save_pretrained / export")
    parser.add_argument("--data", required=True, help="YAML: a fit config or a data section")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rerank-k", type=int, default=16)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="clips decoded and encoded at a time, and pairs per single-stream forward "
        "(bounds the memory held by decoded media)",
    )
    parser.add_argument(
        "--single-candidates",
        type=int,
        default=None,
        help="single stream scores only the multi-stream top k per text (default: all pairs)",
    )
    parser.add_argument(
        "--cross-attention-layers",
        type=int,
        nargs="+",
        default=None,
        help="cross-attention blocks to run (default: the model config's)",
    )
    parser.add_argument("--precision", default="32", choices=("32", "bf16"))
    parser.add_argument("--task", default="auto", choices=("auto", "retrieval", "qa", "mc"))
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default: eval_<model folder name>_<split>.json in the current folder; "
        "the model folder is an input and is never written)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (by default each pass over the media shows one, with an ETA)",
    )


def _data_module(path: str) -> Any:
    from .api import load_config
    from .datamodule import PerceiverVLDataModule

    config = load_config(path)
    section = config.get("data", config)
    if isinstance(section, dict) and "init_args" in section:
        section = section["init_args"]
    if not isinstance(section, dict):
        raise ValueError(f"--data {path!r}: the 'data' section must be a mapping of data options")
    try:
        return PerceiverVLDataModule(**section)
    except TypeError as err:  # an option the data module does not have
        raise ValueError(f"--data {path!r}: {err}; see `perceiver-vl fit --help`") from err


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width table of retrieval results (one row per mode)."""
    cols = ["t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr"]
    lines = [f"{'mode':<8}" + "".join(f"{c:>10}" for c in cols) + f"{'seconds':>10}"]
    for mode, metrics in results.items():
        if mode == "info":
            continue
        row = "".join(f"{metrics[c]:>10.2f}" for c in cols)
        lines.append(f"{mode:<8}{row}{metrics['seconds']:>10.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    model = PerceiverVL.from_pretrained(args.model).to(args.device).eval()
    dm = _data_module(args.data)
    dataset = dm.dataset(args.split)
    task = args.task
    results: dict[str, Any]
    if task == "auto":
        if getattr(dataset, "num_choices", 0):
            task = "mc"
        else:
            task = "qa" if model.qa_head is not None else "retrieval"
    if task == "mc":
        loader = dm._loader(dataset, args.split)
        results = {"mc": evaluate_multiple_choice(model, loader, precision=args.precision)}
        print(json.dumps(results, indent=2))
    elif task == "qa":
        loader = dm._loader(dataset, args.split)
        results = {"qa": evaluate_qa(model, loader, precision=args.precision)}
        print(json.dumps(results, indent=2))
    else:
        # media are decoded batch by batch while they are encoded: memory stays bounded
        data = stream_retrieval_inputs(
            dataset,
            dm.tokenizer,
            batch_size=args.batch_size,
            num_workers=int(getattr(dm, "num_workers", 0) or 0),
            progress=not args.no_progress,
        )
        results = evaluate_retrieval(
            model,
            data,
            modes=args.modes,
            rerank_k=args.rerank_k,
            batch_size=args.batch_size,
            # pairs per single-stream forward: each pair holds a copy of its clip
            single_batch_size=args.batch_size,
            single_candidates=args.single_candidates,
            cross_attention_layers=args.cross_attention_layers,
            precision=args.precision,
        )
        info = results["info"]
        print(
            f"{args.split}: {info['num_texts']} texts, {info['num_videos']} videos "
            "(recall in %, ranks 1-based, ties count against the query)"
        )
        print(format_table(results))
    default_name = f"eval_{Path(args.model).resolve().name}_{args.split}.json"
    out = Path(args.output) if args.output else Path(default_name)
    atomic_write_json(out, results, indent=2)
    print(f"wrote {out}", file=sys.stderr)
    dm.report_skipped(out.parent)
    return 0


__all__ = ["add_arguments", "format_table", "run"]
