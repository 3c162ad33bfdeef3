"""Mixed-stream scoring split into a per-item part (stored in the index) and a per-pair part.

The mixed stream scores a (text, video) pair by letting the decoder's [CLS] query read
``concat(z_V, z_T)``. The query is the same for every pair, so its attention splits exactly
(see :func:`perceiver_vl.model.streams.mixed_stream_scores`): each item contributes the
log-sum-exp of its attention scores ``l`` (heads,) and its softmax-weighted values ``a``
(heads, head_dim), and a pair's attention output is ``sigmoid(l_V - l_T) a_V + sigmoid(l_T - l_V) a_T``.

:func:`attention_summary` is computed once per video at index time and stored beside the latents,
so a re-rank never projects the candidates' keys and values again: per pair it costs the output
projection, the decoder MLP and the matching head. :func:`mixed_scores_from_summaries` equals
``model.mixed_stream_scores(latents_V, latents_T)`` up to float rounding (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import attention_summary as _model_attention_summary


@torch.no_grad()
def attention_summary(model: PerceiverVL, latents: Tensor) -> tuple[Tensor, Tensor]:
    """latents (n, N, D) -> (log-sum-exp (n, heads), weighted values (n, heads, head_dim)),
    the [CLS] decoder query's attention over each item's latents."""
    lse, values = _model_attention_summary(model, latents.float())
    return lse.float(), values.float()


@torch.no_grad()
def mixed_scores_from_summaries(
    model: PerceiverVL,
    visual: tuple[Tensor, Tensor],
    text: tuple[Tensor, Tensor],
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """(num_texts, num_visual) mixed-stream logits from :func:`attention_summary` outputs."""
    lse_v, val_v = visual
    lse_t, val_t = text
    block = model.decoder.block
    n_visual, n_text = lse_v.shape[0], lse_t.shape[0]
    d = val_v.shape[1] * val_v.shape[2]
    cls = model.decoder.cls_query.float().view(1, d)
    base = block.norm1(cls) if block.residual == "normalized" else cls
    rows = max(1, chunk_size // max(1, n_visual))
    out = []
    for start in range(0, n_text, rows):
        stop = min(n_text, start + rows)
        w = torch.sigmoid(lse_v[None] - lse_t[start:stop, None])[..., None]  # (t, v, heads, 1)
        mixed = w * val_v[None] + (1 - w) * val_t[start:stop, None]
        x = base + block.attn.proj(mixed.reshape(stop - start, n_visual, d))
        x = x + block.mlp(block.norm2(x))
        out.append(model.matching_head(model.decoder.norm(x)))
    return torch.cat(out, dim=0).float()
