"""Fixtures for the service tests: indexes built once per session, each searched by a tiny model
trained at test time (helpers from ``tests/retrieval/retrieval_support.py``).

- ``serve_index_dir``: 8 hand-made clips (4 colours x 2 directions) that the API tests know by
  caption;
- ``demo_index_dir``: the synthetic benchmark's test split at the demo's size (``make demo``'s
  500 clips of 64 px, 8-16 frames, seed 0), indexed the way the demo indexes it.
"""

from __future__ import annotations

import json
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

#: Clips of the demo-sized index the tiny model is trained on (the first ones of the test split).
#: Training on all 500 takes minutes on 2 cores; the index still holds all 500.
DEMO_INDEX_TRAINED_CLIPS = 64


def _train_and_save(
    root: Path, records: list[dict], directory: Path, pair_batch: int | None = None
) -> Path:
    """Train the tiny model on ``records`` (clips under ``root``) and save it to ``directory``."""
    loader = make_loader()
    clips = [loader(root / r["video"], 8, TINY["image_size"]) for r in records]
    model = train_tiny_model(
        torch.stack([c[0] for c in clips]),
        torch.stack([c[1] for c in clips]),
        [r["caption"] for r in records],
        pair_batch=pair_batch,
    )
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def serve_collection(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """8 synthetic clips (4 colours x 2 directions) + ``test.jsonl`` (read-only in tests)."""
    root = tmp_path_factory.mktemp("serve_collection")
    return root, write_collection(root)


@pytest.fixture(scope="session")
def serve_model_dir(serve_collection, tmp_path_factory) -> Path:
    """A tiny model trained at test time (deterministic, a few seconds) to tell the clips apart."""
    root, records = serve_collection
    return _train_and_save(root, records, tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="session")
def serve_index_dir(serve_collection, serve_model_dir, tmp_path_factory) -> Path:
    root, _ = serve_collection
    path = tmp_path_factory.mktemp("serve_index") / "index"
    RetrievalIndex.build(path, serve_model_dir, root / "test.jsonl", progress=False)
    return path


@pytest.fixture(scope="session")
def demo_benchmark(tmp_path_factory) -> Path:
    """The synthetic benchmark's test split with the demo's settings (500 clips, seed 0)."""
    from perceiver_vl.data.synthetic import generate_benchmark
    from perceiver_vl.demo import DemoSettings

    demo = DemoSettings.full()
    return generate_benchmark(
        tmp_path_factory.mktemp("demo_benchmark"),
        num_train=0,
        num_val=0,
        num_test=demo.num_test,
        frames=demo.frames,
        size=demo.size,
        seed=0,
        workers=1,
        progress=False,
    )


@pytest.fixture(scope="session")
def demo_trained_records(demo_benchmark) -> list[dict]:
    """The test-split records the demo index's tiny model is trained on (the first
    ``DEMO_INDEX_TRAINED_CLIPS``)."""
    lines = (demo_benchmark / "test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()][:DEMO_INDEX_TRAINED_CLIPS]


@pytest.fixture(scope="session")
def demo_index_dir(demo_benchmark, demo_trained_records, tmp_path_factory) -> Path:
    """The demo's index at the demo's size: every clip of ``demo_benchmark`` indexed by
    ``build_demo_index`` (what ``make demo`` runs), searched by the tiny model trained at test
    time on ``demo_trained_records`` (the demo's own model trains for minutes)."""
    from perceiver_vl.demo.pipeline import build_demo_index

    model_dir = _train_and_save(
        demo_benchmark, demo_trained_records, tmp_path_factory.mktemp("demo_model"), pair_batch=32
    )
    path = tmp_path_factory.mktemp("demo_index") / "index"
    build_demo_index(path, model_dir, demo_benchmark / "test.jsonl", progress=False)
    return path
