"""The index's mixed-stream re-rank: a per-video part stored at index time, a per-pair part at
query time, both the model's own (:meth:`PerceiverVL.mixed_stream_summary` and
:meth:`PerceiverVL.mixed_stream_scores_from_summaries`; the split is explained in
:mod:`perceiver_vl.model.split_attention`).

Each video contributes the log-sum-exp ``l`` (heads,) of the decoder [CLS] query's attention
scores over its latents and the softmax-weighted values ``a`` (heads, head_dim); a pair's
attention output is ``sigmoid(l_V - l_T) a_V + sigmoid(l_T - l_V) a_T``. With the summaries
stored beside the latents, a re-rank never projects the candidates' keys and values again: per
pair it costs the output projection, the decoder MLP and the matching head.
:func:`mixed_scores_from_summaries` equals ``model.mixed_stream_scores(latents_V, latents_T)``
up to float rounding (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.split_attention import AttentionSummary


@torch.no_grad()
def attention_summary(model: PerceiverVL, latents: Tensor) -> tuple[Tensor, Tensor]:
    """latents (n, N, D) -> (log-sum-exp (n, heads), weighted values (n, heads, head_dim)) in
    float32: the model's mixed-stream summary in the index's storage layout (one query)."""
    summary = model.mixed_stream_summary(latents.float())
    return summary.lse[..., 0].float(), summary.values[..., 0, :].float()


@torch.no_grad()
def mixed_scores_from_summaries(
    model: PerceiverVL,
    visual: tuple[Tensor, Tensor],
    text: tuple[Tensor, Tensor],
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """(num_texts, num_visual) mixed-stream logits from :func:`attention_summary` outputs."""

    def one_query(lse: Tensor, values: Tensor) -> AttentionSummary:
        return AttentionSummary(lse[..., None], values[..., None, :])

    scores = model.mixed_stream_scores_from_summaries(
        one_query(*visual), one_query(*text), chunk_size=chunk_size
    )
    return scores.float()
