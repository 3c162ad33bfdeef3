"""Attention of one shared query array over two key sets, split into one summary per set.

When the same queries read ``concat(A, B)``, softmax attention splits exactly. With each set's
log-sum-exp of the attention scores ``l_A``, ``l_B`` and its softmax-weighted values ``a_A``,
``a_B`` (each computed over that set's keys alone), the output over the concatenation is::

    sigmoid(l_A - l_B) * a_A + sigmoid(l_B - l_A) * a_B

so each item's summary is computed once and a pair costs one weighted sum. Two scorers rely on
it, both through this module:

- the mixed stream: the decoder's [CLS] query reads ``concat(z_V, z_T)``
  (:meth:`perceiver_vl.model.decoder.QueryDecoder.cls_summary`); the search index stores each
  video's summary;
- the all-pairs single stream: the encoder's first cross-attention block, whose latent queries
  are the same for every pair (:func:`perceiver_vl.model.streams.single_stream_scores`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .attention import CrossAttention


class AttentionSummary(NamedTuple):
    """One item's share of a shared query array's attention (``n`` items, ``Q`` queries).

    Attributes:
        lse: (n, heads, Q) log-sum-exp of the scaled scores over the item's real keys
            (-inf for an item without any).
        values: (n, heads, Q, head_dim) softmax-weighted values (zero without real keys).
    """

    lse: Tensor
    values: Tensor


def summarize(
    attn: CrossAttention,
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    key_mask: Tensor | None = None,
) -> AttentionSummary:
    """Summaries of the shared ``queries`` attending to each item's keys.

    Args:
        attn: the cross-attention whose query projection (``attn.q``) applies.
        queries: (Q, D) or (1, Q, D) query array, already normalised, the same for every item.
        keys, values: (n, heads, M, head_dim) from ``attn.project_kv``.
        key_mask: (n, M) bool, True = real key; None = all real.
    """
    q_len, d = queries.shape[-2:]
    heads = attn.num_heads
    q = attn.q(queries.reshape(1, q_len, d)).view(1, q_len, heads, d // heads).transpose(1, 2)
    scores = q @ keys.transpose(-1, -2) * keys.shape[-1] ** -0.5  # (n, heads, Q, M)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    # an item with no real key: softmax over nothing is NaN; its weighted values are zero
    weighted = torch.nan_to_num(scores.softmax(dim=-1)) @ values
    return AttentionSummary(scores.logsumexp(dim=-1), weighted)


def merge(attn: CrossAttention, first: AttentionSummary, second: AttentionSummary) -> Tensor:
    """The attention output (after ``attn.proj``) of the shared queries over
    ``concat(first item's keys, second item's keys)``.

    ``first`` and ``second`` broadcast against each other over their leading item dimensions,
    e.g. (1, n_v, ...) against (n_t, 1, ...) scores every pair. Returns (..., Q, D); zero for a
    pair with no real key at all, as :class:`~perceiver_vl.model.attention.CrossAttention` gives.
    """
    # sigmoid(-inf - -inf) is NaN: neither item has a key, and both values are zero anyway
    weight = torch.sigmoid(first.lse - second.lse).nan_to_num(0.0)[..., None]
    mixed = weight * first.values + (1 - weight) * second.values  # (..., heads, Q, head_dim)
    out = attn.proj(mixed.transpose(-3, -2).flatten(-2))  # (..., Q, D)
    has_key = torch.isfinite(first.lse[..., :1, :1]) | torch.isfinite(second.lse[..., :1, :1])
    if not bool(has_key.all()):
        out = out * has_key.to(out.dtype)
    return out


__all__ = ["AttentionSummary", "merge", "summarize"]
