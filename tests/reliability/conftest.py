"""Fixtures of the reliability battery: a tiny model, saved once per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model import preset_fields
from tests.train.conftest import tiny_config

#: The ``tiny`` preset at two layers, four latents and the real vocabulary.
SMALL = preset_fields(
    "tiny",
    num_self_attention_layers=2,
    cross_attention_before_layers=(0, 1),
    num_latents=4,
    patch_size=16,
    max_frames=4,
    max_text_length=16,
    vocab_size=30522,
    contrastive_dim=8,
)


@pytest.fixture
def small_model() -> PerceiverVL:
    torch.manual_seed(0)
    return PerceiverVL(PerceiverVLConfig(**SMALL)).eval()


@pytest.fixture
def saved_model(small_model: PerceiverVL, tmp_path: Path) -> Path:
    """A model folder written by save_pretrained (config.json + model.safetensors)."""
    return small_model.save_pretrained(tmp_path / "model")


def inputs(batch: int = 2, frames: int = 3, length: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, frames, 3, 32, 32, generator=generator) * 2 - 1
    ids = torch.randint(5, 1000, (batch, length), generator=generator)
    return video, ids


@pytest.fixture()
def make_config(synthetic_root: Path, tmp_path: Path):
    """A tiny fit config on the session's synthetic benchmark (as in tests/train)."""

    def make(**trainer):
        return tiny_config(synthetic_root, tmp_path / "run", **trainer)

    return make
