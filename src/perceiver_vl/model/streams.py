"""The three retrieval architectures (paper §3.5, Fig. 2).

| mode   | encoding                                   | scoring a pair                                  |
|--------|--------------------------------------------|-------------------------------------------------|
| single | encoder on concat(visual, text)            | decoder [CLS] -> matching logit                 |
| multi  | encoder on visual alone and on text alone  | dot product of pooled, projected, unit latents  |
| mixed  | as multi                                   | decoder [CLS] over concat(z_V, z_T) -> logit    |

Multi and mixed take precomputed latents, so an n x m score matrix costs n + m encodings.
Score matrices are (num_texts, num_visual), the layout ``retrieval_metrics`` expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .heads import no_autocast

if TYPE_CHECKING:
    from .modeling import PerceiverVL


def _check_latents(model: PerceiverVL, latents: Tensor, name: str) -> None:
    d = model.config.hidden_size
    if not isinstance(latents, Tensor) or latents.dim() != 3 or latents.shape[-1] != d:
        got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"{name} must be latents (B, N, {d}) from model.encode(...), got {got}")


def single_stream_logits(model: PerceiverVL, **inputs: Any) -> Tensor:
    """Joint encoding of aligned (visual, text) pairs -> matching logits (B,)."""
    out = model(**inputs)
    if out.matching_logits is None:
        raise ValueError(
            "single-stream scoring needs a visual input (video=/images=) and text_ids="
        )
    return out.matching_logits


def multi_stream_scores(model: PerceiverVL, visual_latents: Tensor, text_latents: Tensor) -> Tensor:
    """(num_texts, num_visual) cosine similarities of the multi-stream embeddings."""
    _check_latents(model, visual_latents, "visual_latents")
    _check_latents(model, text_latents, "text_latents")
    text, visual = model.embed(text_latents, "text"), model.embed(visual_latents, "visual")
    with no_autocast(text.device.type):  # bf16 scores would tie (see heads.full_precision)
        return text @ visual.T


def mixed_stream_logits(model: PerceiverVL, visual_latents: Tensor, text_latents: Tensor) -> Tensor:
    """Aligned pairs: the decoder [CLS] query reads concat(z_V, z_T) (2N keys) -> logits (B,)."""
    _check_latents(model, visual_latents, "visual_latents")
    _check_latents(model, text_latents, "text_latents")
    if visual_latents.shape[0] != text_latents.shape[0]:
        raise ValueError(
            f"aligned pairs need equal batch sizes: visual_latents has {visual_latents.shape[0]}, "
            f"text_latents {text_latents.shape[0]} (use mixed_stream_scores for all pairs)"
        )
    memory = torch.cat([visual_latents, text_latents], dim=1)
    states = model.decoder(model.decoder.matching_queries(memory.shape[0]), memory)
    return model.matching_head(states[:, 0])


def attention_summary(model: PerceiverVL, latents: Tensor) -> tuple[Tensor, Tensor]:
    """Per item: the [CLS] query's attention over its N latents, summarised as the log-sum-exp of
    the scores (n, heads) and the softmax-weighted values (n, heads, head_dim)."""
    block = model.decoder.block
    attn = block.attn
    n, length, d = latents.shape
    heads = attn.num_heads
    head_dim = d // heads
    query = attn.q(block.norm1(model.decoder.cls_query.to(latents.dtype))).view(heads, head_dim)
    keys, values = attn.kv(latents).view(n, length, 2, heads, head_dim).unbind(2)
    scores = torch.einsum("nkhd,hd->nhk", keys, query) * head_dim**-0.5
    weighted = torch.einsum("nhk,nkhd->nhd", scores.softmax(dim=-1), values)
    return scores.logsumexp(dim=-1), weighted


def mixed_stream_scores(
    model: PerceiverVL, visual_latents: Tensor, text_latents: Tensor, *, chunk_size: int = 1024
) -> Tensor:
    """(num_texts, num_visual) mixed-stream matching logits for every (text, visual) pair.

    The [CLS] query is the same for every pair, so attention over concat(z_V, z_T) splits
    exactly into a per-visual and a per-text part: with log-sum-exps l_V, l_T and weighted values
    a_V, a_T, the pair's attention output is ``sigmoid(l_V - l_T) a_V + sigmoid(l_T - l_V) a_T``.
    Keys and values are projected once per item; each pair costs one output projection, one MLP
    and the head. This equals :func:`mixed_stream_logits` on every pair (up to rounding).
    ``chunk_size`` bounds the pairs processed at once (memory ~ chunk_size x D).
    """
    _check_latents(model, visual_latents, "visual_latents")
    _check_latents(model, text_latents, "text_latents")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    block = model.decoder.block
    n_visual, n_text = visual_latents.shape[0], text_latents.shape[0]
    d = visual_latents.shape[-1]
    lse_v, val_v = attention_summary(model, visual_latents)
    lse_t, val_t = attention_summary(model, text_latents)
    cls = model.decoder.cls_query.to(visual_latents.dtype).view(1, d)
    cls_normed = block.norm1(cls)
    rows_per_chunk = max(1, chunk_size // max(1, n_visual))
    out = []
    for start in range(0, n_text, rows_per_chunk):
        stop = min(n_text, start + rows_per_chunk)
        w = torch.sigmoid(lse_v[None, :, :] - lse_t[start:stop, None, :])  # (t, v, heads)
        mixed = w[..., None] * val_v[None] + (1 - w[..., None]) * val_t[start:stop, None]
        x = block.finish(cls, cls_normed, block.attn.proj(mixed.reshape(stop - start, n_visual, d)))
        out.append(model.matching_head(model.decoder.norm(x)))
    return torch.cat(out, dim=0)


def pairwise_single_stream_scores(
    model: PerceiverVL,
    *,
    text_ids: Tensor,
    text_mask: Tensor | None,
    video: Tensor | None = None,
    video_mask: Tensor | None = None,
    images: Tensor | None = None,
    batch_size: int = 64,
    cross_attention_layers: Any = None,
) -> Tensor:
    """(num_texts, num_visual) single-stream logits: every pair goes through the encoder."""
    visual = video if video is not None else images
    if visual is None:
        raise ValueError("pass video= or images=")
    n_visual, n_text = visual.shape[0], text_ids.shape[0]
    pairs = torch.cartesian_prod(torch.arange(n_text), torch.arange(n_visual))
    scores = torch.empty(n_text * n_visual, device=text_ids.device)
    for start in range(0, pairs.shape[0], batch_size):
        t_idx, v_idx = pairs[start : start + batch_size].unbind(1)
        kwargs: dict[str, Any] = {
            "text_ids": text_ids[t_idx],
            "text_mask": None if text_mask is None else text_mask[t_idx],
            "cross_attention_layers": cross_attention_layers,
        }
        if video is not None:
            kwargs["video"] = video[v_idx]
            kwargs["video_mask"] = None if video_mask is None else video_mask[v_idx]
        else:
            kwargs["images"] = images[v_idx]
        scores[start : start + t_idx.shape[0]] = single_stream_logits(model, **kwargs).float()
    return scores.view(n_text, n_visual)


def _masked_summary(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None):
    """One shared query array (1, H, N, hd) over each item's keys/values (n, H, M, hd):
    log-sum-exp of the scores (n, H, N) and the softmax-weighted values (n, H, N, hd).
    An item with no real key gets lse = -inf and zero values."""
    scores = query @ keys.transpose(-1, -2) * keys.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    lse = scores.logsumexp(dim=-1)
    weighted = torch.nan_to_num(scores.softmax(dim=-1)) @ values
    return lse, weighted


def single_stream_scores(
    model: PerceiverVL,
    *,
    text_ids: Tensor,
    text_mask: Tensor | None = None,
    video: Tensor | None = None,
    video_mask: Tensor | None = None,
    images: Tensor | None = None,
    cross_attention_layers: Any = None,
    chunk_size: int = 256,
) -> Tensor:
    """(num_texts, num_visual) single-stream logits for every pair, computed without re-embedding.

    Exact reformulation of one joint forward per pair (eval mode, joint aggregation):
    - each video and each text is embedded, normalised and projected to keys/values once per
      cross-attention block (the input array of a pair is just the two concatenated);
    - the latents entering the first cross-attention block are the same for every pair, so
      that block's attention over concat(visual, text) splits into a per-video and a per-text
      part (as in :func:`mixed_stream_scores`);
    - from there on each pair runs the latent stack, the later cross-attention blocks over its
      cached keys/values, the decoder and the matching head.
    Other configurations (training mode, separate aggregation) fall back to
    :func:`pairwise_single_stream_scores`.
    """
    encoder = model.encoder
    if model.training or encoder.aggregation != "joint":
        return pairwise_single_stream_scores(
            model,
            text_ids=text_ids,
            text_mask=text_mask,
            video=video,
            video_mask=video_mask,
            images=images,
            cross_attention_layers=cross_attention_layers,
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    visual_inputs = model._check_inputs(video, video_mask, images, None, None)
    text_inputs = model._check_inputs(None, None, None, text_ids, text_mask)
    (ctx_v, mask_v), _ = model._contexts(visual_inputs)
    _, (ctx_t, mask_t) = model._contexts(text_inputs)
    n_visual, n_text = ctx_v.shape[0], ctx_t.shape[0]
    if mask_v is None:
        mask_v = torch.ones(ctx_v.shape[:2], dtype=torch.bool, device=ctx_v.device)
    if mask_t is None:
        mask_t = torch.ones(ctx_t.shape[:2], dtype=torch.bool, device=ctx_t.device)
    blocks = model.select_cross_attention_blocks(cross_attention_layers)
    kv_v = {j: encoder.cross_attention_blocks[j].attn.project_kv(ctx_v) for j in blocks}
    kv_t = {j: encoder.cross_attention_blocks[j].attn.project_kv(ctx_t) for j in blocks}

    # The shared prefix: z0 through the self-attention layers before the first block that runs.
    first = blocks[0]
    first_layer = encoder.schedule[first]
    x0 = encoder.initial_latents(1).to(ctx_v.dtype)
    for i in range(first_layer):
        x0 = encoder.self_attention_blocks[i](x0)
    block0 = encoder.cross_attention_blocks[first]
    h0 = block0.norm1(x0)
    n_lat, d = h0.shape[1:]
    heads = block0.attn.num_heads
    q0 = block0.attn.q(h0).view(1, n_lat, heads, d // heads).transpose(1, 2)
    lse_v, val_v = _masked_summary(q0, *kv_v[first], mask_v)
    lse_t, val_t = _masked_summary(q0, *kv_t[first], mask_t)

    scores = torch.empty(n_text, n_visual, device=ctx_v.device)
    pairs = torch.cartesian_prod(torch.arange(n_text), torch.arange(n_visual))
    for start in range(0, pairs.shape[0], chunk_size):
        t_idx, v_idx = pairs[start : start + chunk_size].to(ctx_v.device).unbind(1)
        p = t_idx.shape[0]
        lv, lt = lse_v[v_idx], lse_t[t_idx]
        top = torch.maximum(lv, lt)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        ev, et = (lv - top).exp(), (lt - top).exp()
        total = (ev + et).clamp_min(torch.finfo(ev.dtype).tiny)
        mixed = (ev / total)[..., None] * val_v[v_idx] + (et / total)[..., None] * val_t[t_idx]
        attended = block0.attn.proj(mixed.transpose(1, 2).reshape(p, n_lat, d))
        has_key = (mask_v[v_idx].any(-1) | mask_t[t_idx].any(-1))[:, None, None]
        attended = attended * has_key.to(attended.dtype)
        x = block0.finish(x0.expand(p, -1, -1), h0.expand(p, -1, -1), attended)
        pair_mask = torch.cat([mask_v[v_idx], mask_t[t_idx]], dim=1)
        for i in range(first_layer, len(encoder.self_attention_blocks)):
            for j, _ in encoder.plan.get(i, ()):
                if j == first or j not in blocks:
                    continue
                k = torch.cat([kv_v[j][0][v_idx], kv_t[j][0][t_idx]], dim=2)
                v = torch.cat([kv_v[j][1][v_idx], kv_t[j][1][t_idx]], dim=2)
                x = encoder.cross_attention_blocks[j].forward_projected(x, k, v, pair_mask)
            x = encoder.self_attention_blocks[i](x)
        latents = encoder.norm(x)
        states = model.decoder(model.decoder.matching_queries(p), latents)
        scores[t_idx, v_idx] = model.matching_head(states[:, 0]).float()
    return scores


__all__ = [
    "attention_summary",
    "mixed_stream_logits",
    "mixed_stream_scores",
    "multi_stream_scores",
    "pairwise_single_stream_scores",
    "single_stream_logits",
    "single_stream_scores",
]
