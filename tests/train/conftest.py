"""Shared fixtures of the training tests: a tiny fit config (the tiny synthetic benchmark,
`synthetic_root`, is in tests/conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from perceiver_vl.model import preset_fields

#: The ``tiny`` preset on 16 px patches with the real vocabulary, as YAML takes it.
TINY_MODEL = preset_fields(
    "tiny",
    cross_attention_before_layers=[0, 2],
    patch_size=16,
    max_frames=4,
    max_text_length=16,
    vocab_size=30522,
    dropout=0.0,
    layerdrop=0.5,
)


def tiny_config(root: Path, run_dir: Path, **trainer: Any) -> dict[str, Any]:
    config = {
        "seed_everything": 0,
        "model": {
            "model": copy.deepcopy(TINY_MODEL),
            "objectives": ["matching", "mlm", "contrastive"],
            "lr": 2e-3,
            "warmup": 2,
            "schedule": "constant",
        },
        "data": {
            "train": {"kind": "synthetic", "root": str(root), "split": "train"},
            "val": {"kind": "synthetic", "root": str(root), "split": "val"},
            "test": {"kind": "synthetic", "root": str(root), "split": "test"},
            "batch_size": 8,
            "num_workers": 0,
            "num_frames": 3,
            "image_size": 32,
            "max_text_length": 16,
            "mlm_probability": 0.15,
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            **trainer,
        },
        "checkpoint": {"every_n_train_steps": 2},
    }
    return config


@pytest.fixture()
def make_config(synthetic_root: Path, tmp_path: Path):
    def make(**trainer: Any) -> dict[str, Any]:
        return tiny_config(synthetic_root, tmp_path / "run", **trainer)

    return make
