"""Fixtures for the service tests: the retrieval tests' synthetic collection and test-time trained
tiny model (helpers from ``tests/retrieval/retrieval_support.py``), indexed once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))

from retrieval_support import (  # noqa: E402
    TINY,
    make_loader,
    train_tiny_model,
    write_collection,
)

from perceiver_vl.retrieval import RetrievalIndex  # noqa: E402


@pytest.fixture(scope="session")
def serve_collection(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """8 synthetic clips (4 colours x 2 directions) + ``test.jsonl`` (read-only in tests)."""
    root = tmp_path_factory.mktemp("serve_collection")
    return root, write_collection(root)


@pytest.fixture(scope="session")
def serve_model_dir(serve_collection, tmp_path_factory) -> Path:
    """A tiny model trained at test time (deterministic, a few seconds) to tell the clips apart."""
    root, records = serve_collection
    loader = make_loader()
    clips = [loader(root / r["video"], 8, TINY["image_size"]) for r in records]
    model = train_tiny_model(
        torch.stack([c[0] for c in clips]),
        torch.stack([c[1] for c in clips]),
        [r["caption"] for r in records],
    )
    directory = tmp_path_factory.mktemp("serve_model")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def serve_index_dir(serve_collection, serve_model_dir, tmp_path_factory) -> Path:
    root, _ = serve_collection
    path = tmp_path_factory.mktemp("serve_index") / "index"
    RetrievalIndex.build(path, serve_model_dir, root / "test.jsonl", progress=False)
    return path


@pytest.fixture(scope="session")
def benchmark_index_dir(synthetic_root, tmp_path_factory) -> Path:
    """An index of the built-in synthetic benchmark's test split (``synthetic_root``: 8 clips of
    32 px), searched by the tiny model trained at test time on those clips and captions."""
    import json

    annotations = synthetic_root / "test.jsonl"
    records = [json.loads(line) for line in annotations.read_text().splitlines() if line.strip()]
    loader = make_loader()
    clips = [loader(synthetic_root / r["video"], 8, TINY["image_size"]) for r in records]
    model = train_tiny_model(
        torch.stack([c[0] for c in clips]),
        torch.stack([c[1] for c in clips]),
        [r["caption"] for r in records],
    )
    model_dir = tmp_path_factory.mktemp("benchmark_model")
    model.save_pretrained(model_dir)
    path = tmp_path_factory.mktemp("benchmark_index") / "index"
    RetrievalIndex.build(path, model_dir, annotations, progress=False)
    return path
