"""The ``perceiver-vl`` command line.

Each subcommand lives with the part of the package it belongs to; this file only dispatches.
A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int | None``.
The training subcommands (``fit``, ``validate``, ``test``) hand their arguments to LightningCLI.
Every command runs inside :func:`perceiver_vl.errors.user_errors`: a user error prints one message
and exits 1; ``--debug`` (anywhere on the line) or ``PERCEIVER_VL_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from perceiver_vl.allocator import COMMANDS, keep_freed_memory
from perceiver_vl.errors import debug_requested, user_errors

# name -> (module, one-line help). Modules are imported only when their subcommand runs, so
# ``perceiver-vl --help`` works without the training or plotting extras.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("perceiver_vl.model.cli", "print a model's summary, parameter count and FLOPs"),
    "convert-official": (
        "perceiver_vl.model.cli",
        "convert the authors' released checkpoint to safetensors + config.json",
    ),
    "generate-synthetic": (
        "perceiver_vl.data.cli",
        "write the built-in synthetic video-text benchmark (mp4 + captions)",
    ),
    "evaluate": ("perceiver_vl.train.evaluate_cli", "evaluate a saved model on a data config"),
    "export": ("perceiver_vl.train.export_cli", "export a Lightning checkpoint to safetensors"),
    "demo": ("perceiver_vl.demo", "the main job: generate, pretrain, fine-tune, evaluate, report"),
    "bench": ("perceiver_vl.bench.cli", "FLOPs, latency, memory and scaling against a baseline"),
    "index": ("perceiver_vl.retrieval.cli", "encode a video collection into a search index"),
    "search": ("perceiver_vl.retrieval.cli", "search an index by text"),
    "serve": ("perceiver_vl.serve.cli", "serve an index over HTTP: a JSON API and a search page"),
    "serve-bench": (
        "perceiver_vl.serve.cli",
        "load-test the search service with concurrent clients (p50 / p99 latency)",
    ),
    "analyze": ("perceiver_vl.analysis.cli", "the paper's analyses (latent size, input size, ...)"),
}
LIGHTNING_SUBCOMMANDS = {
    "fit": "train a model (LightningCLI; --config configs/....yaml)",
    "validate": "run validation (LightningCLI)",
    "test": "run the test loop (LightningCLI)",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perceiver-vl",
        description="Perceiver-VL: vision-and-language modelling with iterative latent attention.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in LIGHTNING_SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser()
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    with user_errors(argv[0], debug):
        return _dispatch(parser, argv[0], argv[1:])


def _dispatch(parser: argparse.ArgumentParser, command: str, rest: list[str]) -> int:
    if command in LIGHTNING_SUBCOMMANDS:
        from perceiver_vl.train.cli import lightning_main

        _prepare_process(command)
        return lightning_main([command, *rest]) or 0
    if command not in SUBCOMMANDS:
        parser.error(f"unknown command {command!r}; run `perceiver-vl --help` for the list")
    module_name, help_text = SUBCOMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("perceiver_vl"):
            parser.error(f"command {command!r} is not available in this build ({err.name} missing)")
        raise SystemExit(
            f"perceiver-vl {command}: missing dependency {err.name!r}; "
            "install the extras with `pip install 'perceiver-vl[all]'`"
        ) from err
    sub = argparse.ArgumentParser(prog=f"perceiver-vl {command}", description=help_text)
    if hasattr(module, "add_arguments_for"):
        module.add_arguments_for(command, sub)
    else:
        module.add_arguments(sub)
    args = sub.parse_args(rest)
    _prepare_process(command)
    runner = getattr(module, "run_for", None)
    result = runner(command, args) if runner else module.run(args)
    return int(result or 0)


def _prepare_process(command: str) -> None:
    """Process-wide settings a command runs with: the training and batch-encoding commands keep
    freed memory in the C allocator (:mod:`perceiver_vl.allocator`)."""
    if command in COMMANDS:
        keep_freed_memory()


if __name__ == "__main__":
    sys.exit(main())
