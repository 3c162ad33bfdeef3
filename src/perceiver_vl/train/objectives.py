"""Training objectives that compose the model's outputs (Lightning-free, usable on their own).

* vision-text matching negatives: half of the pairs get another sample's visual input;
* symmetric InfoNCE over multi-stream embeddings, features gathered across ranks with gradient;
* retrieval candidates: 1 positive + k negatives per query, random or hardest under a similarity;
* in-batch mixed-stream cross-entropy over every pair of a batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def text_keys(texts: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """(B,) int64 key per caption, equal for equal (whitespace/case-normalised) captions.

    Used to avoid false negatives when a batch holds the same caption twice."""
    keys = [zlib.crc32(" ".join(t.lower().split()).encode("utf-8")) for t in texts]
    return torch.tensor(keys, dtype=torch.long, device=device)


def caption_similarity(texts: Sequence[str]) -> Tensor:
    """(B, B) Jaccard similarity of the captions' lower-cased word sets (1 on the diagonal).

    A model-free measure of how alike two captions read; used to draw matching negatives whose
    captions resemble the positive's (``matching_negatives: caption``)."""
    words = [set(t.lower().split()) for t in texts]
    size = len(words)
    sim = torch.ones(size, size)
    for i in range(size):
        for j in range(i + 1, size):
            union = len(words[i] | words[j])
            sim[i, j] = sim[j, i] = len(words[i] & words[j]) / union if union else 1.0
    return sim


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of every rank (different row counts allowed); the backward sums the
    gradient of the gathered tensor over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        dist = torch.distributed
        world = dist.get_world_size()
        size = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s) for s in sizes]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        rank = dist.get_rank()
        ctx.start = sum(counts[:rank])
        ctx.stop = ctx.start + counts[rank]
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return (grad[ctx.start : ctx.stop],)


def gather_with_grad(x: Tensor) -> Tensor:
    """Rows of ``x`` from every data-parallel rank, concatenated in rank order, differentiable.

    The identity when torch.distributed is not initialised. Works with gloo (no reduce-scatter)."""
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """Like :func:`gather_with_grad` without gradient (labels, keys, indices)."""
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
        return x
    with torch.no_grad():
        return _GatherWithGrad.apply(x.detach())


def contrastive_loss(
    visual: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    *,
    keys: Tensor | None = None,
    gather: bool = True,
    max_scale: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE between unit visual and text embeddings with a learnable temperature.

    Args:
        visual, text: (B, E) unit vectors of aligned pairs (row i of each belongs together).
        logit_scale: the learnable log(1 / temperature) (``model.contrastive_head.logit_scale``);
            its exponential is clamped to ``max_scale`` as in CLIP.
        keys: (B,) caption keys (:func:`text_keys`); pairs with equal keys are all positives
            (soft targets), so duplicate captions are not pushed apart.
        gather: use the features of all ranks as negatives (gradient flows back to each rank).

    Returns:
        (loss, logits) with logits (B_global, B_global) text x visual.
    """
    if visual.shape != text.shape or visual.dim() != 2:
        raise ValueError(
            f"visual {tuple(visual.shape)} and text {tuple(text.shape)} embeddings must both be "
            "(B, E) for aligned pairs"
        )
    if gather:
        visual, text = gather_with_grad(visual), gather_with_grad(text)
        if keys is not None:
            keys = gather_no_grad(keys)
    scale = logit_scale.float().exp().clamp(max=max_scale)
    logits = scale * text.float() @ visual.float().T  # (texts, visual)
    n = logits.shape[0]
    if keys is None:
        target = torch.arange(n, device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    else:
        same = (keys[:, None] == keys[None, :]).float()
        soft = same / same.sum(dim=1, keepdim=True)
        loss = (
            -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
            - (soft * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        ) / 2
    return loss, logits


def matching_pairs(
    batch_size: int,
    generator: torch.Generator,
    *,
    keys: Tensor | None = None,
    negative_fraction: float = 0.5,
    scores: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Visual index and label for every text of a batch (vision-text matching).

    ``round(negative_fraction * B)`` randomly chosen texts get another sample's visual input
    (label 0); the rest keep their own (label 1). The other sample is random, or, when
    ``scores`` (B, B) (text x visual, e.g. the multi-stream similarity as logits) is given,
    drawn with probability ``softmax(scores[text])`` among the items with another caption key
    (hard negatives, as ALBEF samples them). A negative whose partner has the same caption
    key is relabelled 1 (it does match).

    Returns:
        visual_index (B,) long, labels (B,) long.
    """
    if batch_size < 2:
        return torch.zeros(batch_size, dtype=torch.long), torch.ones(batch_size, dtype=torch.long)
    order = torch.randperm(batch_size, generator=generator)
    partner = torch.empty(batch_size, dtype=torch.long)
    partner[order] = order.roll(1)  # one cycle: no sample is its own partner
    num_negative = int(round(negative_fraction * batch_size))
    negative = torch.zeros(batch_size, dtype=torch.bool)
    negative[torch.randperm(batch_size, generator=generator)[:num_negative]] = True
    if scores is not None:
        valid = ~torch.eye(batch_size, dtype=torch.bool)
        if keys is not None:
            valid &= keys.cpu()[:, None] != keys.cpu()[None, :]
        valid[~valid.any(dim=1)] = ~torch.eye(batch_size, dtype=torch.bool)[~valid.any(dim=1)]
        weights = scores.detach().float().cpu().masked_fill(~valid, float("-inf")).softmax(dim=1)
        partner = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    index = torch.where(negative, partner, torch.arange(batch_size))
    labels = (~negative).long()
    if keys is not None:
        keys = keys.cpu()
        labels = torch.where(keys[index] == keys, torch.ones_like(labels), labels)
    return index, labels


def in_batch_mixed_loss(
    model: Any,
    visual_latents: Tensor,
    text_latents: Tensor,
    keys: Tensor | None = None,
    directions: Sequence[str] = ("t2v", "v2t"),
) -> tuple[Tensor, Tensor]:
    """Mixed-stream cross-entropy of every query over all B items of a batch of aligned pairs
    (item i's visual and text latents match) -> (loss, top-1 accuracy).

    The B x B logits come from the factorised all-pairs scorer (one decoder MLP per pair);
    another item with the query's caption ``keys`` is no negative. ``directions``: ``t2v``
    (queries are texts), ``v2t`` or both (averaged).
    """
    size = text_latents.shape[0]
    if size < 2:
        raise ValueError(
            f"retrieval fine-tuning needs at least 2 samples per batch for negatives, got "
            f"{size}; raise data.batch_size"
        )
    logits = model.mixed_stream_scores(visual_latents, text_latents).float()  # (text, visual)
    target = torch.arange(size, device=logits.device)
    if keys is not None:
        same = keys.to(logits.device)[:, None] == keys.to(logits.device)[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    total: Tensor | float = 0.0
    correct = 0.0
    for direction in directions:
        directed = logits if direction == "t2v" else logits.T
        total = total + F.cross_entropy(directed, target)
        correct += float((directed.detach().argmax(1) == target).float().mean())
    n = max(1, len(directions))
    return total / n, torch.tensor(correct / n)


def retrieval_candidates(
    batch_size: int,
    num_negatives: int,
    generator: torch.Generator,
    *,
    scores: Tensor | None = None,
    keys: Tensor | None = None,
    hard_fraction: float = 1.0,
) -> Tensor:
    """(B, 1 + k) candidate indices per query: column 0 is the positive (the query's own item),
    then k negatives drawn from the other items of the batch.

    Negatives are random, or, when ``scores`` (B, B) (query x item, e.g. the multi-stream
    similarity) is given, the ``round(hard_fraction * k)`` highest-scoring items followed by
    random other items (all k hardest by default). Items with the query's caption key are never
    negatives. With fewer valid items than k, negatives repeat (sampled with replacement).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    if batch_size < 2:
        raise ValueError(
            f"retrieval fine-tuning needs at least 2 samples per batch for negatives, got "
            f"{batch_size}; raise data.batch_size"
        )
    valid = ~torch.eye(batch_size, dtype=torch.bool)
    if keys is not None:
        keys = keys.cpu()
        valid &= keys[:, None] != keys[None, :]
    # rows with no valid negative fall back to "any other item"
    empty = ~valid.any(dim=1)
    valid[empty] = ~torch.eye(batch_size, dtype=torch.bool)[empty]
    num_hard = int(round(hard_fraction * num_negatives)) if scores is not None else 0
    if num_hard:
        ranked = scores.detach().float().cpu().masked_fill(~valid, float("-inf"))
        k = min(num_hard, batch_size - 1)
        top = ranked.topk(k, dim=1).indices
        # a -inf pick (fewer valid than k) is replaced by a random valid item
        picked_valid = valid.gather(1, top)
        if not bool(picked_valid.all()):
            random = torch.multinomial(valid.float(), k, replacement=True, generator=generator)
            top = torch.where(picked_valid, top, random)
        negatives = top
        if k < num_negatives:  # the rest at random, preferring items not already picked
            rest = valid.clone()
            rest.scatter_(1, top, False)
            rest[~rest.any(dim=1)] = valid[~rest.any(dim=1)]
            extra = torch.multinomial(
                rest.float(),
                num_negatives - k,
                replacement=bool((rest.sum(1) < num_negatives - k).any()),
                generator=generator,
            )
            negatives = torch.cat([negatives, extra], dim=1)
    else:
        counts = valid.sum(dim=1)
        replace = bool((counts < num_negatives).any())
        negatives = torch.multinomial(
            valid.float(), num_negatives, replacement=replace, generator=generator
        )
    positives = torch.arange(batch_size)[:, None]
    return torch.cat([positives, negatives], dim=1)


__all__ = [
    "contrastive_loss",
    "gather_no_grad",
    "gather_with_grad",
    "caption_similarity",
    "in_batch_mixed_loss",
    "matching_pairs",
    "retrieval_candidates",
    "text_keys",
]
