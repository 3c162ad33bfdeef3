"""Shared test helpers: tiny configs, seeded inputs, the location of ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model import preset

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**changes) -> PerceiverVLConfig:
    """The ``tiny`` preset (100-token vocabulary) with ``changes``."""
    return preset("tiny", **changes)


@pytest.fixture
def tiny_model() -> PerceiverVL:
    torch.manual_seed(0)
    return PerceiverVL(tiny_config()).eval()


def make_inputs(batch=2, frames=3, size=32, length=7, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, frames, 3, size, size, generator=g) * 2 - 1
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    return video, ids, mask


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic video benchmark (32 / 8 / 8 clips of 32 px), generated once a session."""
    from perceiver_vl.data.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("synthetic")
    generate_benchmark(
        root,
        num_train=32,
        num_val=8,
        num_test=8,
        frames=(2, 3),
        size=32,
        seed=0,
        workers=1,
        progress=False,
    )
    return root
