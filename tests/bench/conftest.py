"""Tiny configurations for the bench tests (no paper-sized model is ever built here)."""

from __future__ import annotations

import pytest

from perceiver_vl import PerceiverVLConfig
from perceiver_vl.bench import BenchSettings


def tiny_bench_config(**changes) -> PerceiverVLConfig:
    base = dict(
        hidden_size=32,
        num_heads=2,
        num_self_attention_layers=4,
        cross_attention_before_layers=(0, 1, 2),
        num_latents=8,
        patch_size=8,
        image_size=32,
        max_frames=64,
        max_text_length=10,
        vocab_size=100,
        contrastive_dim=16,
    )
    base.update(changes)
    return PerceiverVLConfig(**base)


@pytest.fixture
def tiny_settings() -> BenchSettings:
    return BenchSettings(
        base_config=tiny_bench_config(),
        warmup=0,
        min_repeats=2,
        max_repeats=2,
        budget_s=0.0,
        matmul_size=64,
    )
