"""Stage 3 on cached latents: the query decoder and matching head learn mixed-stream scoring
while the encoder stays frozen.

With the encoder frozen, its latents never change, so they are computed once
(:func:`~perceiver_vl.evaluation.encode_all`) and every step costs only the decoder: the
in-batch mixed-stream cross-entropy (:func:`~perceiver_vl.train.objectives.in_batch_mixed_loss`)
over all B x B pairs of a batch. A step is then a few tens of milliseconds instead of a
fraction of a second (no video encoding), so the decoder gets several times more steps in the
same time. The Lightning route (``trainable: decoder_and_heads`` with
``retrieval_negatives: all``) computes the same loss but encodes every batch again; use it
when the training set does not fit in memory as latents (N x D floats per item and modality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from perceiver_vl.model import PerceiverVL

from .objectives import in_batch_mixed_loss

DECODER_PREFIXES = ("decoder.", "matching_head.")


def fit_decoder_on_latents(
    model: PerceiverVL,
    visual_latents: Tensor,
    text_latents: Tensor,
    keys: Tensor | None = None,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: float = 0.05,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.98),
    gradient_clip: float | None = 1.0,
    precision: str = "bf16",
    directions: Sequence[str] = ("t2v", "v2t"),
    seed: int = 0,
    progress: bool = True,
    log_every: int = 10,
) -> list[dict[str, float]]:
    """Train ``model.decoder`` and ``model.matching_head`` in place on fixed latents.

    Args:
        visual_latents / text_latents: (P, N, D) latents of P aligned pairs (row i of each
            belongs to pair i), e.g. from ``encode_all`` on the training set.
        keys: (P,) caption keys (:func:`~perceiver_vl.train.objectives.text_keys`); pairs with
            the query's caption are never its negatives. None = every caption is distinct.
        steps: optimiser steps; each takes a batch of ``batch_size`` pairs, in a seeded random
            order, epoch after epoch (the last incomplete batch of an epoch is dropped).
        lr / warmup / weight_decay / betas: AdamW with linear warm-up (a fraction of ``steps``
            (< 1) or a step count) and linear decay to zero; weight decay as in the training
            module (:func:`~perceiver_vl.train.optim.decays`).
        precision: ``bf16`` (autocast for the decoder; the head runs in fp32) or ``32``.
        directions: ``t2v``, ``v2t`` or both.

    Returns the loss curve: ``{"step", "loss", "accuracy"}`` every ``log_every`` steps and at the
    last step. Every other parameter is left untouched; the model is returned in eval mode.
    """
    num_pairs = visual_latents.shape[0]
    if text_latents.shape[0] != num_pairs:
        raise ValueError(
            f"visual_latents ({visual_latents.shape[0]} rows) and text_latents "
            f"({text_latents.shape[0]} rows) must hold the same aligned pairs"
        )
    if visual_latents.shape[1:] != text_latents.shape[1:] or visual_latents.dim() != 3:
        raise ValueError(
            f"latents must be (pairs, N, D) of one shape, got {tuple(visual_latents.shape)} "
            f"and {tuple(text_latents.shape)}"
        )
    if keys is not None and keys.shape[0] != num_pairs:
        raise ValueError(f"keys has {keys.shape[0]} entries for {num_pairs} pairs")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 2 <= batch_size <= num_pairs:
        raise ValueError(
            f"batch_size={batch_size} must be between 2 (one negative) and the number of "
            f"pairs ({num_pairs})"
        )
    if precision not in ("bf16", "bf16-mixed", "32"):
        raise ValueError(f"precision must be 'bf16' or '32', got {precision!r}")
    if set(directions) - {"t2v", "v2t"} or not directions:
        raise ValueError(f"directions={list(directions)} must be a non-empty subset of t2v, v2t")

    from tqdm.auto import tqdm

    from .optim import lr_lambda, weight_decay_split

    device = next(model.parameters()).device
    visual_latents = visual_latents.detach().to(device)
    text_latents = text_latents.detach().to(device)
    keys = None if keys is None else keys.to(device)
    trainable = {n for n, _ in model.named_parameters() if n.startswith(DECODER_PREFIXES)}
    previous = {n: p.requires_grad for n, p in model.named_parameters()}
    exempt = set(weight_decay_split(model)[1])
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
        if name in trainable:
            (no_decay if name in exempt else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )
    warmup_steps = int(warmup * steps) if warmup < 1 else int(warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(warmup_steps, steps, "linear", 0.0)
    )
    generator = torch.Generator().manual_seed(seed)
    per_epoch = num_pairs // batch_size
    order: Tensor = torch.empty(0, dtype=torch.long)
    curve: list[dict[str, float]] = []
    params = decay + no_decay
    model.train()
    bar = tqdm(range(steps), desc="decoder on cached latents", disable=not progress, leave=False)
    try:
        for step in bar:
            position = step % per_epoch
            if position == 0:
                order = torch.randperm(num_pairs, generator=generator)
            index = order[position * batch_size : (position + 1) * batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "32"):
                loss, accuracy = in_batch_mixed_loss(
                    model,
                    visual_latents[index],
                    text_latents[index],
                    None if keys is None else keys[index],
                    directions,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if gradient_clip:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip)
            optimizer.step()
            scheduler.step()
            if step % log_every == 0 or step == steps - 1:
                row = {"step": step, "loss": float(loss.detach()), "accuracy": float(accuracy)}
                curve.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(previous[name])
        model.eval()
    return curve


def fit_decoder_on_dataset(model: PerceiverVL, data: Any, texts: Sequence[str], **options: Any):
    """Encode the aligned pairs of ``data`` (:class:`~perceiver_vl.evaluation.
    RetrievalInputs`, text i describes visual item i) once in eval mode and run
    :func:`fit_decoder_on_latents` on them. ``options`` go to that function (``precision`` is
    also used for encoding)."""
    from perceiver_vl.evaluation import encode_all

    from .objectives import text_keys

    aligned = torch.equal(data.text_to_video.cpu(), torch.arange(data.num_visual))
    if not aligned or len(texts) != data.num_visual:
        raise ValueError(
            f"fit_decoder_on_dataset needs aligned pairs (text i describes visual item i): got "
            f"{data.text_ids.shape[0]} texts, {len(texts)} captions, {data.num_visual} visual items"
        )
    model.eval()
    visual, text, _, _ = encode_all(
        model, data, batch_size=128, precision=options.get("precision", "bf16")
    )
    return fit_decoder_on_latents(model, visual, text, text_keys(texts), **options)


__all__ = ["fit_decoder_on_dataset", "fit_decoder_on_latents"]
