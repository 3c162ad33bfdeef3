"""The model a training run starts from (Lightning-free): a fresh
:class:`~perceiver_vl.PerceiverVL` from config fields, optionally initialised from a ViT
checkpoint, or a ``save_pretrained`` folder adapted to the run (dropout, LayerDrop, QA head,
frame count)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig


def build_model(
    fields: dict[str, Any] | None,
    pretrained: str | None = None,
    vit_weights: str | None = None,
    info: Callable[[str], Any] = print,
) -> tuple[PerceiverVL, dict[str, Any] | None]:
    """(model in train mode, ViT load report or None) for the module's ``model``,
    ``pretrained`` and ``vit_weights`` arguments; ``info`` receives the ViT load summary."""
    fields = dict(fields or {})
    if pretrained:
        model = PerceiverVL.from_pretrained(pretrained)
        overrides = {
            k: fields[k]
            for k in ("dropout", "attention_dropout", "layerdrop", "layerdrop_seed", "qa_loss")
            if k in fields
        }
        if overrides:
            model.config = model.config.replace(**overrides)
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout) and "dropout" in overrides:
                    module.p = overrides["dropout"]
        frames = fields.get("max_frames")
        if frames is not None and frames != model.config.max_frames:
            # more (or fewer) frames than pretraining, e.g. 16 for ActivityNet after 8: the
            # temporal table is resampled linearly over the frame index (ours; the paper
            # does not say how it extended it)
            state = model.state_dict()
            key = "visual_embed.temporal_embed"
            state[key] = F.interpolate(
                state[key].transpose(1, 2), size=frames, mode="linear", align_corners=True
            ).transpose(1, 2)
            model = PerceiverVL(model.config.replace(max_frames=frames))
            model.load_state_dict(state)
        answers = fields.get("num_answers")
        if answers is not None and answers != model.config.num_answers:
            fresh = PerceiverVL(model.config.replace(num_answers=answers))
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("qa_head")}
            fresh.load_state_dict(state, strict=False)
            model = fresh
        # from_pretrained returns an inference model (eval mode), and Lightning keeps each
        # submodule's mode when fitting: without this, training from a checkpoint would run
        # with LayerDrop and dropout off
        return model.train(), None
    config = PerceiverVLConfig.from_dict(fields)
    model = PerceiverVL(config)
    report = load_vit_strict(model, vit_weights, info) if vit_weights else None
    return model, report


def load_vit_strict(
    model: PerceiverVL, vit_weights: str, info: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Initialise ``model`` from a ViT checkpoint; refuse a missing file or an empty load, warn
    about a partial one, and return the load report (its summary goes to ``info``)."""
    from perceiver_vl.model.weights import load_vit_weights

    if not Path(vit_weights).is_file():
        raise FileNotFoundError(
            f"model.vit_weights={vit_weights!r} does not exist. The paper's pretraining starts "
            "from a ViT-B/32 (384) checkpoint: download timm's vit_base_patch32_384 weights "
            "(.safetensors, .pth or the original .npz) and set model.vit_weights to the file, or "
            "set model.vit_weights: null to start from random weights on purpose"
        )
    report = load_vit_weights(model, vit_weights)
    if not report.loaded:
        raise ValueError(
            f"model.vit_weights={vit_weights!r}: no tensor matched the model (source keys: "
            f"{len(report.ignored)} ignored, e.g. {report.ignored[:3]}); pass a timm-layout ViT "
            "whose hidden size, patch size and depth match model.model"
        )
    info(f"ViT initialisation from {vit_weights}: {report.summary()}")
    if report.not_loaded:
        warnings.warn(
            f"model.vit_weights={vit_weights!r} loaded only partly: {len(report.not_loaded)} "
            f"tensors stay random ({', '.join(report.not_loaded[:6])}, ...); check the patch "
            "size and width of the checkpoint against model.model",
            stacklevel=2,
        )
    return {
        "source": str(vit_weights),
        "loaded": report.loaded,
        "not_loaded": report.not_loaded,
        "ignored": report.ignored,
    }


def check_data_fits(config: PerceiverVLConfig, data: Any) -> None:
    """Refuse a data module (``tokenizer``, ``max_text_length``, ``num_frames``) whose inputs the
    model cannot take, naming both settings."""
    vocab = data.tokenizer.vocab_size
    if vocab > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab} tokens but model.model.vocab_size="
            f"{config.vocab_size}; set model.model.vocab_size: {vocab}"
        )
    if data.max_text_length > config.max_text_length:
        raise ValueError(
            f"data.max_text_length={data.max_text_length} exceeds model.model."
            f"max_text_length={config.max_text_length}; lower one of them"
        )
    if data.num_frames > config.max_frames:
        raise ValueError(
            f"data.num_frames={data.num_frames} exceeds model.model.max_frames={config.max_frames}"
        )


__all__ = ["build_model", "check_data_fits", "load_vit_strict"]
