"""``perceiver-vl serve`` and ``perceiver-vl serve-bench``.

perceiver-vl serve --index INDEX [--host 127.0.0.1] [--port 8000] [--model DIR]
perceiver-vl serve-bench --index INDEX [--clients 16] [--queries 2000] [--url URL]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perceiver_vl.model.streams import StreamMode
from perceiver_vl.retrieval.index import SEARCH_MODES

from .service import ServeSettings

_DEFAULTS = ServeSettings()


def _add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="the index directory (opened read-only)")
    parser.add_argument(
        "--model", default=None, help="model directory (default: the one recorded in the index)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip shard checksums at start (big indexes)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=_DEFAULTS.max_batch,
        help=f"most queued queries encoded together (default {_DEFAULTS.max_batch}; 1 = no batching)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "exact", "faiss", "ann"),
        default="auto",
        help="shortlist search (see docs/retrieval.md; default auto)",
    )


def add_arguments_for(command: str, parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``command`` ("serve" or "serve-bench") to ``parser``."""
    _add_index_arguments(parser)
    if command == "serve":
        parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        parser.add_argument(
            "--cache-dir",
            default=None,
            help="thumbnail cache (default ~/.cache/perceiver-vl/thumbnails)",
        )
        parser.add_argument(
            "--refresh-interval",
            type=float,
            default=_DEFAULTS.refresh_interval_s,
            help="seconds between checks for videos added by another process "
            f"(default {_DEFAULTS.refresh_interval_s}; 0 = never)",
        )
        parser.add_argument(
            "--max-k", type=int, default=_DEFAULTS.max_k, help="most results per page"
        )
        parser.add_argument(
            "--max-query-chars",
            type=int,
            default=_DEFAULTS.max_query_chars,
            help="longest query accepted (characters)",
        )
        parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    elif command == "serve-bench":
        parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
        parser.add_argument("--queries", type=int, default=2000, help="queries in all (2000)")
        parser.add_argument("-k", type=int, default=10, help="results per query (10)")
        parser.add_argument(
            "--mode",
            choices=[str(m) for m in SEARCH_MODES],
            default=str(StreamMode.RERANK),
            help="search mode",
        )
        parser.add_argument(
            "--url",
            default=None,
            help="benchmark a running server instead of starting one in this process",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    else:
        raise ValueError(f"unknown serve command {command!r}; expected 'serve' or 'serve-bench'")


def _missing_extra(err: ModuleNotFoundError) -> int:
    print(
        f"perceiver-vl serve: missing dependency {err.name!r}; install the service extra with "
        "`pip install 'perceiver-vl[serve]'`",
        file=sys.stderr,
    )
    return 2


def run_for(command: str, args: argparse.Namespace) -> int:
    """Run ``command`` ("serve" or "serve-bench"); returns the exit status."""
    try:
        if command == "serve":
            return _run_serve(args)
        if command == "serve-bench":
            from .loadbench import run_from_args

            return run_from_args(args)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("fastapi", "uvicorn", "httpx", "starlette"):
            return _missing_extra(err)
        raise
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        print(f"perceiver-vl {command}: error: {err}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown serve command {command!r}; expected 'serve' or 'serve-bench'")


def open_service(args: argparse.Namespace, **settings: object):
    """The :class:`SearchService` the arguments describe (shared by serve and serve-bench)."""
    import torch

    from .service import SearchService

    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = ServeSettings(max_batch=args.max_batch, verify=not args.no_verify, **settings)
    return SearchService.open(args.index, args.model, config, backend=args.backend)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    service = open_service(
        args,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        refresh_interval_s=args.refresh_interval,
        max_k=args.max_k,
        max_query_chars=args.max_query_chars,
    )
    print(
        f"serving {len(service.index)} videos from {args.index} on http://{args.host}:{args.port}/ "
        "(read-only; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0
