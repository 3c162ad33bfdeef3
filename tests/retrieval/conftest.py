"""Fixtures for the retrieval tests (helpers live in retrieval_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from retrieval_support import (
    TINY,
    make_loader,
    train_tiny_model,
    write_collection,
)

from perceiver_vl import PerceiverVL, PerceiverVLConfig


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """A small benchmark-style folder: ``videos/*.mp4`` + ``test.jsonl`` (read-only in tests)."""
    root = tmp_path_factory.mktemp("collection")
    return root, write_collection(root)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PerceiverVL(PerceiverVLConfig(**TINY)).eval()
    directory = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def trained_model_dir(collection, tmp_path_factory) -> Path:
    root, records = collection
    loader = make_loader()
    clips = [loader(root / r["video"], 8, TINY["image_size"]) for r in records]
    videos = torch.stack([c[0] for c in clips])
    masks = torch.stack([c[1] for c in clips])
    model = train_tiny_model(videos, masks, [r["caption"] for r in records])
    directory = tmp_path_factory.mktemp("trained_model")
    model.save_pretrained(directory)
    return directory
