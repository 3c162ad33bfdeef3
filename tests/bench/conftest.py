"""Tiny configurations for the bench tests (no paper-sized model is ever built here)."""

from __future__ import annotations

import pytest

from perceiver_vl import PerceiverVLConfig
from perceiver_vl.bench import BenchSettings
from perceiver_vl.model import preset


def tiny_bench_config(**changes) -> PerceiverVLConfig:
    """The ``tiny`` preset with three cross-attention blocks and up to 64 frames."""
    return preset(
        "tiny", **{"cross_attention_before_layers": (0, 1, 2), "max_frames": 64, **changes}
    )


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
