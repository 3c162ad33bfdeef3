"""The retrieval stream modes (paper §3.5, Fig. 2) and the all-pairs single stream.

| mode   | encoding                                   | scoring a pair                                  |
|--------|--------------------------------------------|-------------------------------------------------|
| single | encoder on concat(visual, text)            | decoder [CLS] -> matching logit                 |
| multi  | encoder on visual alone and on text alone  | dot product of pooled, projected, unit latents  |
| mixed  | as multi                                   | decoder [CLS] over concat(z_V, z_T) -> logit    |
| rerank | as multi                                   | multi-stream shortlist, re-scored by mixed      |

Each rule is implemented once:

- single: ``PerceiverVL.forward`` / ``single_stream_logits`` (aligned pairs),
  ``PerceiverVL.single_stream_pair_logits`` (pairs of distinct items), and here
  :func:`single_stream_scores` (every pair, factorised; the evaluator's exact mode);
- multi: ``PerceiverVL.multi_stream_scores``;
- mixed: ``PerceiverVL.mixed_stream_logits`` (aligned pairs), ``mixed_stream_scores`` (every
  pair, factorised: ``mixed_stream_summary`` per item, ``mixed_stream_scores_from_summaries``
  per pair; the search index stores the per-item summaries);
- rerank: a composition of the two (the evaluator and the search index).

Multi and mixed take precomputed latents, so an n x m score matrix costs n + m encodings.
Score matrices are (num_texts, num_visual), the layout ``retrieval_metrics`` expects.
:class:`StreamMode` is the one name for these modes everywhere (evaluation, search, CLI).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .config import PerceiverVLConfig
from .encoder import Context, CrossAttend, LatentEncoder, gather_pair_keys
from .modeling import PerceiverVL
from .split_attention import AttentionSummary, merge, summarize


class StreamMode(enum.StrEnum):
    """How a (text, visual) pair is scored; members compare equal to their names (``"mixed"``)."""

    SINGLE = "single"  # joint encoding of the pair, decoder [CLS] -> matching logit
    MULTI = "multi"  # separate encodings, dot product of the contrastive embeddings
    MIXED = "mixed"  # separate encodings, decoder [CLS] over concat(z_V, z_T)
    RERANK = "rerank"  # multi-stream shortlist re-scored by the mixed stream


STREAM_MODES: tuple[StreamMode, ...] = tuple(StreamMode)
# the modes that score from separately encoded latents (what a search index can serve)
LATENT_MODES: tuple[StreamMode, ...] = (StreamMode.MULTI, StreamMode.MIXED, StreamMode.RERANK)


def stream_mode(
    value: Any, *, allowed: Iterable[StreamMode] = STREAM_MODES, argument: str = "mode"
) -> StreamMode:
    """``value`` (a :class:`StreamMode` or its name) as a :class:`StreamMode`; anything outside
    ``allowed`` is a ``ValueError`` naming ``argument`` and the choices."""
    choices = tuple(allowed)
    if isinstance(value, str) and value in choices:
        return StreamMode(value)
    raise ValueError(f"{argument} must be one of {', '.join(choices)}; got {value!r}")


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
        scores[start : start + t_idx.shape[0]] = model.single_stream_logits(**kwargs).float()
    return scores.view(n_text, n_visual)


def single_stream_scores(
    model: PerceiverVL,
    *,
    text_ids: Tensor,
    text_mask: Tensor | None = None,
    video: Tensor | None = None,
    video_mask: Tensor | None = None,
    images: Tensor | None = None,
    cross_attention_layers: Any = None,
    chunk_size: int | None = None,
) -> Tensor:
    """(num_texts, num_visual) single-stream logits for every pair, computed without re-embedding.

    Exact reformulation of one joint forward per pair (eval mode, joint aggregation):
    - each video and each text is embedded, normalised and projected to keys/values once per
      cross-attention block (the input array of a pair is just the two concatenated);
    - the latents entering the first cross-attention block are the same for every pair, so
      that block's attention over concat(visual, text) splits into a per-video and a per-text
      summary (:mod:`.split_attention`, as in the mixed stream);
    - from there on each pair runs the encoder loop (:meth:`LatentEncoder.run`) with the later
      cross-attention blocks reading its cached keys/values, then the decoder and the matching
      head.
    Other configurations (training mode, separate aggregation) fall back to
    :func:`pairwise_single_stream_scores`.

    ``chunk_size``: pairs run through the encoder at once; ``None`` (the default) picks
    :func:`pair_chunk_size` for this model and the dtype it computes in (the autocast dtype
    under autocast). The scores do not depend on it.
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
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    visual, _ = model.embed_inputs(video=video, video_mask=video_mask, images=images)
    _, text = model.embed_inputs(text_ids=text_ids, text_mask=text_mask)
    if visual is None:
        raise ValueError("pass video= or images=")
    assert text is not None
    ctx_v, mask_v = _with_mask(visual)
    ctx_t, mask_t = _with_mask(text)
    n_visual, n_text = ctx_v.shape[0], ctx_t.shape[0]
    blocks = model.select_cross_attention_blocks(cross_attention_layers)
    kv_v = {j: encoder.cross_attention_blocks[j].attn.project_kv(ctx_v) for j in blocks}
    kv_t = {j: encoder.cross_attention_blocks[j].attn.project_kv(ctx_t) for j in blocks}

    # The shared prefix: z0 through the self-attention layers before the first block that runs,
    # then that block's attention summarised per item.
    first = blocks[0]
    first_layer = encoder.schedule[first]
    block0 = encoder.cross_attention_blocks[first]
    x0 = encoder.run(
        encoder.initial_latents(1).to(ctx_v.dtype), (), _no_cross_attention, stop_layer=first_layer
    )
    h0 = block0.norm1(x0)
    summary_v = summarize(block0.attn, h0, *kv_v[first], mask_v)
    summary_t = summarize(block0.attn, h0, *kv_t[first], mask_t)

    if chunk_size is None:  # the input arrays' dtype: the autocast dtype under autocast
        chunk_size = pair_chunk_size(model.config, ctx_v.dtype)
    scores = torch.empty(n_text, n_visual, device=ctx_v.device)
    pairs = torch.cartesian_prod(torch.arange(n_text), torch.arange(n_visual))
    for start in range(0, pairs.shape[0], chunk_size):
        t_idx, v_idx = pairs[start : start + chunk_size].to(ctx_v.device).unbind(1)
        p = t_idx.shape[0]
        attended = merge(
            block0.attn,
            AttentionSummary(summary_v.lse[v_idx], summary_v.values[v_idx]),
            AttentionSummary(summary_t.lse[t_idx], summary_t.values[t_idx]),
        )
        x = block0.finish(x0.expand(p, -1, -1), h0.expand(p, -1, -1), attended)
        cross_attend = _paired_cross_attend(encoder, (kv_v, mask_v, v_idx), (kv_t, mask_t, t_idx))
        latents = encoder.run(x, blocks[1:], cross_attend, start_layer=first_layer)
        states = model.decoder(model.decoder.matching_queries(p), latents)
        scores[t_idx, v_idx] = model.matching_head(states[:, 0]).float()
    return scores


PAIR_CHUNK_BYTES = 8 << 20


def pair_chunk_size(config: PerceiverVLConfig, dtype: torch.dtype = torch.float32) -> int:
    """How many pairs :func:`single_stream_scores` runs through the encoder at once: as many as
    keep the widest activation of the latent stack, the MLP's hidden array (pairs x N x
    MLP width), within :data:`PAIR_CHUNK_BYTES` (8 MiB), so that it is still in the CPU's
    cache when the next product reads it; at least one.

    Measured on a 2-core AVX2 EPYC, fp32, 2 threads: the paper's model (N = 128, MLP width
    3,072; 5 pairs here) scored 16 x 16 pairs in 52.5 s at 1.85 GB peak RSS against 62.9 s
    and 4.89 GB at 256 pairs; for the demo model (N = 32, width 512; 128 pairs here) from
    no gain to 17 % less time, by the layout of the pairs (docs/performance.md).
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    per_pair = config.num_latents * config.mlp_hidden_size * itemsize
    return max(1, PAIR_CHUNK_BYTES // per_pair)


def _paired_cross_attend(
    encoder: LatentEncoder,
    visual: tuple[dict[int, tuple[Tensor, Tensor]], Tensor, Tensor],
    text: tuple[dict[int, tuple[Tensor, Tensor]], Tensor, Tensor],
) -> CrossAttend:
    """A ``cross_attend`` for :meth:`LatentEncoder.run`: block j reads each pair's cached
    keys/values (per item, by block: ``kv[j]``; key masks per item), gathered by the pair's
    item indices (:func:`~perceiver_vl.model.encoder.gather_pair_keys`)."""
    (kv_v, mask_v, v_idx), (kv_t, mask_t, t_idx) = visual, text

    def cross_attend(j: int, source: str, x: Tensor) -> Tensor:
        keys, values, mask = gather_pair_keys(kv_v[j], mask_v, kv_t[j], mask_t, v_idx, t_idx)
        return encoder.cross_attention_blocks[j].forward_projected(x, keys, values, mask)

    return cross_attend


def _with_mask(context: Context) -> tuple[Tensor, Tensor]:
    tokens, mask = context
    if mask is None:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return tokens, mask


def _no_cross_attention(j: int, source: str, x: Tensor) -> Tensor:
    raise AssertionError("no cross-attention block runs in the shared prefix")


__all__ = [
    "LATENT_MODES",
    "STREAM_MODES",
    "StreamMode",
    "pair_chunk_size",
    "pairwise_single_stream_scores",
    "single_stream_scores",
    "stream_mode",
]
