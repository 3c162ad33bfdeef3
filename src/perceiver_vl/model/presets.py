"""Named model sizes: one place for the configurations the demo, the analyses, the benchmarks and
the tests build.

    from perceiver_vl.model import preset
    config = preset("demo")                     # a PerceiverVLConfig
    config = preset("tiny", max_frames=8)       # with fields changed

A preset lists only the fields that differ from :class:`PerceiverVLConfig`'s defaults (which are
the paper's model). ``perceiver-vl info --preset NAME`` prints one with its parameters and FLOPs.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import PerceiverVLConfig

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model (ViT-B/32 latent stack): D=768, N=128 latents, 12 self-attention layers,
    # cross-attention before layers 0, 4 and 8, 384 px frames; the config's defaults.
    "paper": {},
    # The index benchmarks' model (`python -m perceiver_vl.retrieval.bench`, `ann_bench`):
    # D=256, N=64 on the paper's 32 px patches at 224 px.
    "small": dict(
        hidden_size=256,
        num_heads=4,
        num_self_attention_layers=4,
        cross_attention_before_layers=(0, 2),
        num_latents=64,
        patch_size=32,
        image_size=224,
        max_frames=8,
        max_text_length=40,
        contrastive_dim=256,
    ),
    # The model `perceiver-vl demo` trains on a 2-core CPU, on 64 px synthetic clips of up to 16
    # frames with captions of at most 16 tokens. Training-time fields are part of it: no dropout,
    # LayerDrop 0.5, the standard pre-LN cross-attention residual, and two input options of ours
    # (docs/analyses.md has the probes behind them): each patch's change from the previous frame
    # added to its token, and position embeddings initialised with std 0.2 so that "where" and
    # "when" are visible to a model trained from scratch.
    "demo": dict(
        hidden_size=128,
        num_heads=4,
        num_self_attention_layers=4,
        cross_attention_before_layers=(0, 2),
        num_latents=32,
        patch_size=16,
        image_size=64,
        max_frames=16,
        max_text_length=16,
        contrastive_dim=128,
        dropout=0.0,
        layerdrop=0.5,
        cross_attention_residual="standard",
        frame_difference=True,
        visual_position_init_std=0.2,
    ),
    # The unit tests' model: 32 px frames of 8 px patches, a 100-token vocabulary; every forward
    # takes milliseconds. Tests that tokenise real text set vocab_size=30522.
    "tiny": dict(
        hidden_size=32,
        num_heads=2,
        num_self_attention_layers=4,
        cross_attention_before_layers=(0, 2),
        num_latents=8,
        patch_size=8,
        image_size=32,
        max_frames=6,
        max_text_length=10,
        vocab_size=100,
        contrastive_dim=16,
    ),
}
# `perceiver-vl demo --quick` (the test suite's demo): the demo model at half width.
PRESETS["demo-quick"] = {
    **PRESETS["demo"],
    "hidden_size": 64,
    "num_heads": 2,
    "num_latents": 16,
    "contrastive_dim": 64,
}


def preset_names() -> tuple[str, ...]:
    """The names :func:`preset` accepts."""
    return tuple(PRESETS)


def preset_fields(name: str, **overrides: Any) -> dict[str, Any]:
    """The fields of preset ``name`` (those that differ from the config's defaults) with
    ``overrides`` applied, as a new dict: what YAML configs and ``PerceiverVLModule(model=...)``
    take."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not a model preset; choose one of {preset_names()}")
    known = PerceiverVLConfig.__dataclass_fields__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"preset({name!r}) got unknown PerceiverVLConfig fields {unknown}; "
            f"known fields: {sorted(known)}"
        )
    return {**copy.deepcopy(PRESETS[name]), **overrides}


def preset(name: str, **overrides: Any) -> PerceiverVLConfig:
    """The :class:`PerceiverVLConfig` of preset ``name`` (``paper``, ``small``, ``demo``,
    ``demo-quick``, ``tiny``) with ``overrides`` applied."""
    return PerceiverVLConfig(**preset_fields(name, **overrides))


__all__ = ["PRESETS", "preset", "preset_fields", "preset_names"]
