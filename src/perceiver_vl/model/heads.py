"""Task heads: vision-text matching, masked LM, multi-stream contrastive projection, QA."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import autocast_dtype
from .config import PerceiverVLConfig


def full_precision(module: nn.Module, x: Tensor) -> tuple[Any, Tensor]:
    """(an autocast-off context, ``x`` in ``module``'s parameter dtype).

    Scores are compared across thousands of candidates: a bf16 logit (8 significant bits) ties
    most of them, so the heads that produce scores run in the weights' own precision (fp32
    unless the whole model was cast) even inside a bf16 autocast region. They are cheap."""
    dtype = next(module.parameters()).dtype
    return no_autocast(x.device.type), x.to(dtype)


def no_autocast(device_type: str) -> Any:
    """A context that turns autocast off where it is on (a no-op elsewhere, e.g. on ``meta``)."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class MatchingHead(nn.Module):
    """[CLS] decoder state -> one matching logit: ``fc(tanh(dense(x)))`` (never under autocast,
    see :func:`full_precision`)."""

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.fc = nn.Linear(config.hidden_size, 1)

    def forward(self, cls_state: Tensor) -> Tensor:
        """cls_state: (B, D) -> logits (B,)."""
        context, x = full_precision(self, cls_state)
        with context:
            return self.fc(torch.tanh(self.dense(x))).squeeze(-1)


class MLMHead(nn.Module):
    """Masked-LM head: dense -> GELU -> LayerNorm (eps 1e-12) -> vocabulary projection + bias."""

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=config.text_layer_norm_eps)
        self.decoder = nn.Linear(d, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, states: Tensor) -> Tensor:
        """states: (B, L, D) -> logits (B, L, vocab)."""
        return self.decoder(self.norm(F.gelu(self.dense(states)))) + self.bias


class ContrastiveHead(nn.Module):
    """Multi-stream retrieval embedding: mean-pooled latents -> per-modality linear projection
    -> L2 normalisation, with a learnable temperature (CLIP-style ``logit_scale``)."""

    #: Parameters the optimiser does not weight-decay (the temperature).
    no_weight_decay_params = ("logit_scale",)

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        self.visual_proj = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.text_proj = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.contrastive_init_temperature))
        )

    def forward(self, latents: Tensor, modality: str) -> Tensor:
        """latents: (B, N, D); modality: "visual" or "text" -> unit vectors (B, E)."""
        if modality not in ("visual", "text"):
            raise ValueError(f"modality must be 'visual' or 'text', got {modality!r}")
        proj = self.visual_proj if modality == "visual" else self.text_proj
        context, pooled = full_precision(proj, latents.mean(dim=1))
        with context:
            return F.normalize(proj(pooled).float(), dim=-1)


class ClassificationHead(nn.Module):
    """QA head (released fine-tuning code): mean-pooled latents -> dense + tanh ->
    Linear(D, 2D) -> LayerNorm(eps 1e-5) -> GELU -> Linear(2D, num_answers)."""

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Sequential(
            nn.Linear(d, 2 * d),
            nn.LayerNorm(2 * d, eps=1e-5),
            nn.GELU(),
            nn.Linear(2 * d, config.num_answers),
        )

    def forward(self, latents: Tensor) -> Tensor:
        """latents: (B, N, D) -> answer logits (B, num_answers)."""
        return self.classifier(torch.tanh(self.pooler(latents.mean(dim=1))))
