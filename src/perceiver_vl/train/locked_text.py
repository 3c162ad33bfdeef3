"""Fixed text targets for the locked-text phase of contrastive training (``locked_text_steps``).

When both sides of Perceiver-VL's shared encoder learn from scratch together, the text side
settles on what the visual side already separates (colour, size) and the visual side never gets
a target for the rest. In the locked phase the visual embeddings are trained against fixed text
features instead, which keep every caption distinct. Two kinds:

* ``ngram`` (:class:`RandomNGramText`): a random bag of unigrams *and ordered bigrams*. Each
  WordPiece id has two fixed Gaussian vectors ``u[id]`` and ``w[id]``; a caption's feature is
  ``sum_i u[t_i] + sum_i u[t_i] * w[t_{i+1}]`` (elementwise product), so swapping two words
  changes the bigram terms: "left then up" and "up then left" get different targets.
* ``model``: the text embedding of a frozen, freshly initialised copy of the model. At its
  initialisation attention is almost uniform, so these features are nearly a bag of words and do
  not tell word order apart (cosine 1.000 between the two captions above, 0.997 after
  centring, for the demo's model at initialisation; measured).

Either way the features of a batch are centred on their batch mean and L2-normalised: random
features share a large common component (a fresh copy's caption embeddings have pairwise cosine
about 0.99), and against targets that close together the contrastive loss cannot separate the
captions (docs/analyses.md, section 5, has the measurements).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("ngram", "model")


def centre_and_normalise(features: Tensor) -> Tensor:
    """(B, D) features minus their batch mean, L2-normalised per row (float32).

    With one row (B = 1) the result is a zero vector: there is nothing to contrast with.
    """
    features = features.float()
    return F.normalize(features - features.mean(0, keepdim=True), dim=-1)


class RandomNGramText:
    """Fixed random unigram + ordered-bigram features of token ids, identical on every rank.

    Args:
        vocab_size: token ids must lie in ``[0, vocab_size)``.
        dim: feature size (the model's ``contrastive_dim``, so it compares with the visual
            embeddings).
        seed: seeds the two Gaussian tables (``2 * vocab_size * dim`` floats, built on first use
            on the ids' device).
    """

    def __init__(self, vocab_size: int, dim: int, *, seed: int = 0) -> None:
        if vocab_size < 1 or dim < 1:
            raise ValueError(f"vocab_size ({vocab_size}) and dim ({dim}) must be positive")
        self.vocab_size, self.dim, self.seed = vocab_size, dim, seed
        self._tables: tuple[Tensor, Tensor] | None = None

    def tables(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        if self._tables is None:
            generator = torch.Generator().manual_seed(self.seed)
            unigram = torch.randn(self.vocab_size, self.dim, generator=generator)
            second = torch.randn(self.vocab_size, self.dim, generator=generator)
            self._tables = (unigram, second)
        if self._tables[0].device != torch.device(device):
            self._tables = (self._tables[0].to(device), self._tables[1].to(device))
        return self._tables

    def raw(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L) ids (and a (B, L) keep-mask) -> (B, dim) L2-normalised, uncentred features."""
        if ids.dim() != 2:
            raise ValueError(f"text_ids must be (batch, length), got shape {tuple(ids.shape)}")
        if not bool(((ids >= 0) & (ids < self.vocab_size)).all()):
            raise ValueError(
                f"text_ids hold ids outside [0, {self.vocab_size}); the tokenizer does not match "
                f"the model's vocab_size ({self.vocab_size})"
            )
        unigram, second = self.tables(ids.device)
        keep = (torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()).float()
        first = unigram[ids]  # (B, L, D)
        features = (first * keep[..., None]).sum(1)
        pair_keep = (keep[:, :-1] * keep[:, 1:])[..., None]
        features = features + (first[:, :-1] * second[ids[:, 1:]] * pair_keep).sum(1)
        return F.normalize(features, dim=-1)

    def __call__(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, dim) batch-centred, L2-normalised features (see :func:`centre_and_normalise`)."""
        return centre_and_normalise(self.raw(ids, mask))


class ModelCopyText:
    """The text embeddings of a frozen, freshly initialised copy of a model with ``config``
    (initialised from ``seed``, without dropout or LayerDrop), batch-centred and normalised.
    A plain object, not a module: what holds it neither optimises nor saves the copy."""

    def __init__(self, config: Any, *, seed: int = 0) -> None:
        from perceiver_vl.model import PerceiverVL

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PerceiverVL(config.replace(layerdrop=0.0, dropout=0.0))
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        if next(self.model.parameters()).device != ids.device:
            self.model.to(ids.device)
        latents = self.model.encode(text_ids=ids, text_mask=mask)
        return centre_and_normalise(self.model.embed(latents, "text"))


def build_locked_text(kind: str, config: Any, *, seed: int = 0) -> Any:
    """The fixed text targets of ``kind`` (``ngram`` or ``model``) for a model with ``config``
    (a :class:`~perceiver_vl.PerceiverVLConfig`): a callable ``(ids, mask) -> (B,
    contrastive_dim)`` of batch-centred unit rows."""
    if kind == "ngram":
        return RandomNGramText(config.vocab_size, config.contrastive_dim, seed=seed)
    if kind == "model":
        return ModelCopyText(config, seed=seed)
    raise ValueError(f"locked_text_features={kind!r} must be one of {list(KINDS)}")


__all__ = ["KINDS", "ModelCopyText", "RandomNGramText", "build_locked_text", "centre_and_normalise"]
