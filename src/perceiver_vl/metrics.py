"""Evaluation metrics with the field's conventions: text-video retrieval recall/rank, QA accuracy,
VQA score.

Retrieval conventions (``retrieval_metrics``):

* ``similarity`` is (num_texts, num_videos); higher = more similar.
* Ranks are 1-based. **Ties count against the query** (pessimistic): the rank of the correct item
  is ``1 + the number of wrong items scoring >= it``. A model that scores everything equally thus
  gets rank ``num_items`` rather than 1, so constant or collapsed scores never look good.
* text-to-video (t2v): each text is a query; its correct video is ``text_to_video[i]``.
* video-to-text (v2t): each video is a query; with several captions the **best-ranked** one
  counts (rank = 1 + number of *other videos'* captions scoring >= its best caption). Videos with
  no caption in ``similarity`` are not queries.
* ``*_r1/_r5/_r10`` are percentages of queries whose rank is <= 1/5/10; ``*_medr`` is the
  median rank (the mean of the two middle ranks for an even count, as ``numpy.median``);
  ``*_meanr`` is the mean rank.

The matrix is processed in row chunks, so the only O(texts x videos) tensor is the input itself;
the temporaries are O(chunk_size x num_videos). With ``distributed=True`` every rank passes its
own block of text rows (and their ``text_to_video``) and the result is identical on all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

RETRIEVAL_KEYS = (
    "t2v_r1",
    "t2v_r5",
    "t2v_r10",
    "t2v_medr",
    "t2v_meanr",
    "v2t_r1",
    "v2t_r5",
    "v2t_r10",
    "v2t_medr",
    "v2t_meanr",
)


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    if ranks.size == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("r1", "r5", "r10", "medr", "meanr")}
    return {
        f"{prefix}_r1": float((ranks <= 1).mean() * 100.0),
        f"{prefix}_r5": float((ranks <= 5).mean() * 100.0),
        f"{prefix}_r10": float((ranks <= 10).mean() * 100.0),
        f"{prefix}_medr": float(np.median(ranks)),
        f"{prefix}_meanr": float(ranks.mean()),
    }


def _check(similarity: Tensor, text_to_video: Tensor | Sequence[int] | None) -> Tensor:
    if not isinstance(similarity, Tensor) or similarity.dim() != 2:
        got = tuple(similarity.shape) if isinstance(similarity, Tensor) else type(similarity)
        raise ValueError(
            f"similarity must be a 2-D tensor (num_texts, num_videos), got {got}; "
            "build it with e.g. model.multi_stream_scores(visual_latents, text_latents)"
        )
    num_texts, num_videos = similarity.shape
    if text_to_video is None:
        if num_texts != num_videos:
            raise ValueError(
                f"similarity is {num_texts} x {num_videos} (not square) and text_to_video=None; "
                "pass text_to_video=[index of each text's video] for non-square matrices"
            )
        return torch.arange(num_texts)
    owners = torch.as_tensor(text_to_video, dtype=torch.long).reshape(-1).cpu()
    if owners.numel() != num_texts:
        raise ValueError(
            f"text_to_video has {owners.numel()} entries but similarity has {num_texts} rows "
            "(one entry per text is needed)"
        )
    if owners.numel() and (int(owners.min()) < 0 or int(owners.max()) >= num_videos):
        raise ValueError(
            f"text_to_video values must lie in [0, {num_videos}) (the similarity columns), got "
            f"[{int(owners.min())}, {int(owners.max())}]"
        )
    return owners


def retrieval_metrics(
    similarity: Tensor,
    text_to_video: Tensor | Sequence[int] | None = None,
    *,
    chunk_size: int = 1024,
    distributed: bool = False,
) -> dict[str, float]:
    """Recall@1/5/10, median and mean rank for text-to-video and video-to-text retrieval.

    Args:
        similarity: (num_texts, num_videos) scores, higher = better match. With
            ``distributed=True``: this rank's block of text rows (all video columns).
        text_to_video: for each text (row), the index of its video (column). Default: text i
            belongs to video i (square matrix).
        chunk_size: rows processed at once (memory ~ chunk_size x num_videos).
        distributed: combine the row blocks of all ranks of the default process group.

    Returns:
        ``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_meanr`` and the same with ``v2t_`` (recalls in
        percent, ranks 1-based, ties counted against the query; see the module docstring).
    """
    owners = _check(similarity, text_to_video)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if similarity.is_floating_point() and bool(torch.isnan(similarity).any()):
        raise ValueError("similarity contains NaN; check the model outputs (e.g. fp16 overflow)")
    use_dist = (
        distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    device = similarity.device
    num_texts, num_videos = similarity.shape
    owners_dev = owners.to(device)

    # Pass 1: t2v ranks per row, and each video's best score among its own captions.
    t2v_ranks = torch.empty(num_texts, dtype=torch.long, device=device)
    best = torch.full((num_videos,), float("-inf"), dtype=torch.float64, device=device)
    for start in range(0, num_texts, chunk_size):
        stop = min(num_texts, start + chunk_size)
        block = similarity[start:stop].to(torch.float64)
        own = owners_dev[start:stop]
        rows = torch.arange(stop - start, device=device)
        positive = block[rows, own]
        # >= counts the correct item itself once: rank = (# items >= positive) is 1-based.
        t2v_ranks[start:stop] = (block >= positive[:, None]).sum(dim=1)
        best.scatter_reduce_(0, own, positive, reduce="amax")
    has_caption = torch.zeros(num_videos, dtype=torch.bool, device=device)
    has_caption[owners_dev] = True
    if use_dist:
        torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX)
        flags = has_caption.to(torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        has_caption = flags.bool()

    # Pass 2: for each video, how many other videos' captions score >= its best caption.
    v2t_count = torch.zeros(num_videos, dtype=torch.long, device=device)
    for start in range(0, num_texts, chunk_size):
        stop = min(num_texts, start + chunk_size)
        block = similarity[start:stop].to(torch.float64)
        beats = block >= best[None, :]
        own = owners_dev[start:stop]
        beats[torch.arange(stop - start, device=device), own] = False
        v2t_count += beats.sum(dim=0)
    if use_dist:
        torch.distributed.all_reduce(v2t_count, op=torch.distributed.ReduceOp.SUM)
        t2v_ranks = _gather_variable(t2v_ranks)
    v2t_ranks = (v2t_count + 1)[has_caption]
    return {
        **_summary(t2v_ranks.cpu().numpy(), "t2v"),
        **_summary(v2t_ranks.cpu().numpy(), "v2t"),
    }


def _gather_variable(values: Tensor) -> Tensor:
    """All-gather 1-D tensors of different lengths from every rank (concatenated in rank order)."""
    dist = torch.distributed
    size = torch.tensor([values.numel()], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(s)] for part, s in zip(parts, sizes)])


def qa_accuracy(predictions: Tensor, targets: Tensor) -> float:
    """Percentage of questions whose predicted answer index equals the target index.

    Args:
        predictions: (B,) predicted indices, or (B, A) logits (argmax is taken).
        targets: (B,) answer indices; -100 or any index < 0 counts as wrong (an answer outside the
            vocabulary can never be predicted, and is still a question asked).
    """
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must "
            "both be (B,) (or predictions (B, A) logits)"
        )
    if targets.numel() == 0:
        return float("nan")
    return float((predictions.long() == targets.long()).float().mean().item() * 100.0)


def vqa_score(predictions: Tensor, soft_scores: Tensor) -> float:
    """VQA score in percent: the mean, over questions, of the soft score of the predicted answer.

    Args:
        predictions: (B,) predicted answer indices or (B, A) logits.
        soft_scores: (B, A) per-answer VQA scores in [0, 1] (``min(1, #annotators / 3)`` or the
            official 10-choose-9 average), as produced by the data set.
    """
    if soft_scores.dim() != 2:
        raise ValueError(f"soft_scores must be (B, A), got shape {tuple(soft_scores.shape)}")
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if predictions.shape[0] != soft_scores.shape[0]:
        raise ValueError(
            f"predictions has {predictions.shape[0]} rows but soft_scores {soft_scores.shape[0]}"
        )
    if soft_scores.shape[0] == 0:
        return float("nan")
    picked = soft_scores.gather(1, predictions.long().reshape(-1, 1)).squeeze(1)
    return float(picked.float().mean().item() * 100.0)


__all__ = ["RETRIEVAL_KEYS", "qa_accuracy", "retrieval_metrics", "vqa_score"]
