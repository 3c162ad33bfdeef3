"""``perceiver-vl index`` and ``perceiver-vl search``.

perceiver-vl index --model MODEL_DIR --videos VIDEOS_DIR_OR_ANNOTATIONS --out INDEX
perceiver-vl search --index INDEX "a red circle moves left" [-k 10] [--mode rerank] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from perceiver_vl.model.streams import StreamMode

from .index import DEFAULT_SHORTLIST, SEARCH_MODES, RetrievalIndex


def add_arguments_for(command: str, parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``command`` ("index" or "search") to ``parser``."""
    if command == "index":
        parser.add_argument(
            "--model", required=True, help="model directory (config.json + model.safetensors)"
        )
        parser.add_argument(
            "--videos",
            required=True,
            help="a directory of videos (searched recursively) or an annotations file "
            "(.jsonl/.json/.csv records with a 'video' field relative to the file)",
        )
        parser.add_argument(
            "--out", required=True, help="the index directory (created or extended)"
        )
        parser.add_argument(
            "--frames",
            type=int,
            default=None,
            help="frames per video (new index; default min(8, max_frames))",
        )
        parser.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
        parser.add_argument(
            "--shard-size",
            type=int,
            default=1024,
            help="videos per shard file (each shard is committed)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument(
            "--no-verify", action="store_true", help="skip shard checksums when reopening"
        )
    elif command == "search":
        parser.add_argument("query", nargs="+", help="one or more text queries (quote each)")
        parser.add_argument("--index", required=True, help="the index directory")
        parser.add_argument("-k", type=int, default=10, help="results per query (default 10)")
        parser.add_argument(
            "--mode",
            choices=SEARCH_MODES,
            default=StreamMode.RERANK,
            help="multi: embedding dot product; mixed: mixed-stream logit of every video (slow); "
            "rerank: multi-stream shortlist re-ranked by mixed stream (default)",
        )
        parser.add_argument(
            "--shortlist",
            type=int,
            default=DEFAULT_SHORTLIST,
            help=f"candidates re-ranked in rerank mode (default {DEFAULT_SHORTLIST})",
        )
        parser.add_argument(
            "--model", default=None, help="model directory (default: the one recorded in the index)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument(
            "--no-verify",
            action="store_true",
            help="skip shard checksums (faster open of big indexes)",
        )
    else:
        raise ValueError(f"unknown retrieval command {command!r}; expected 'index' or 'search'")


def _error(command: str, err: BaseException) -> int:
    print(f"perceiver-vl {command}: error: {err}", file=sys.stderr)
    return 2


def run_for(command: str, args: argparse.Namespace) -> int:
    """Run ``command`` ("index" or "search"); returns the exit status."""
    try:
        if command == "index":
            return _run_index(args)
        if command == "search":
            return _run_search(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        return _error(command, err)
    raise ValueError(f"unknown retrieval command {command!r}; expected 'index' or 'search'")


def _run_index(args: argparse.Namespace) -> int:
    from pathlib import Path

    existed = (Path(args.out) / "manifest.json").exists()
    index = RetrievalIndex.build(
        args.out,
        args.model,
        args.videos,
        num_frames=args.frames,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        progress=not args.no_progress,
        verify=not args.no_verify,
    )
    report = index.last_report
    verb = "updated" if existed else "built"
    print(f"{verb} index {args.out}: {len(index)} videos ({report.summary() if report else ''})")
    return 0


def _run_search(args: argparse.Namespace) -> int:
    index = RetrievalIndex.open(args.index, args.model, verify=not args.no_verify)
    results = index.search(list(args.query), k=args.k, mode=args.mode, shortlist=args.shortlist)
    if args.json:
        payload = [
            {
                "query": query,
                "mode": args.mode,
                "results": [hit.to_dict() for hit in hits],
            }
            for query, hits in zip(args.query, results)
        ]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=1))
        return 0
    score_name = "cosine" if args.mode == StreamMode.MULTI else "logit"
    for number, (query, hits) in enumerate(zip(args.query, results)):
        if number:
            print()
        print(f"query: {query!r} (mode {args.mode}, {len(index)} videos)")
        if not hits:
            print("  (the index is empty)")
        print(f"{'rank':>4}  {score_name:>8}  video")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.path}")
    return 0
