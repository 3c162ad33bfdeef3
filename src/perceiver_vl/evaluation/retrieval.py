"""Text-to-video and video-to-text retrieval of a trained model in every stream mode, with wall
times.

Modes (paper §3.5):

* ``single``: every (text, video) pair is encoded jointly (exact, cost texts x videos encodings);
* ``multi``: videos and texts encoded once, dot products of their embeddings;
* ``mixed``: encoded once, every pair scored by the decoder over concat(z_V, z_T);
* ``rerank``: the multi-stream top ``rerank_k`` videos of each text re-scored by mixed stream.

Each mode's ``seconds`` is its full wall time, encodings included (multi, mixed and rerank share
one encoding pass, which is timed once and added to each).

Media reach the model batch by batch from :mod:`perceiver_vl.evaluation.inputs` (streamed or in
memory); ``single`` with ``single_candidates`` and ``rerank`` are the shortlist + re-rank forms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from perceiver_vl.metrics import retrieval_metrics
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import (
    STREAM_MODES,
    StreamMode,
    single_stream_scores,
    stream_mode,
)

from .encoding import encode_all, precision_autocast
from .inputs import RetrievalInputs, StreamedRetrievalInputs, stream_retrieval_inputs

MODES = STREAM_MODES


@torch.no_grad()
def single_stream_score_matrix(
    model: PerceiverVL,
    data: RetrievalInputs | StreamedRetrievalInputs,
    *,
    batch_size: int = 64,
    candidates: Tensor | None = None,
    cross_attention_layers: Any = None,
    precision: str = "32",
) -> Tensor:
    """(N_t, V) single-stream logits; with ``candidates`` (N_t, k) only those pairs are scored
    and the rest get -inf. Media are taken batch by batch in one pass (``batch_size`` videos, or
    the streamed inputs' smaller decode batch), each batch with every text or with the pairs
    that name its videos."""
    device = next(model.parameters()).device
    num_texts = data.text_ids.shape[0]
    if candidates is None:
        # Every pair: the model's exact fast path (each item embedded and projected once).
        columns = []
        with precision_autocast(device, precision):
            for _, inputs in data.visual_batches(batch_size, desc="single stream"):
                visual = {k: None if v is None else v.to(device) for k, v in inputs.items()}
                columns.append(
                    single_stream_scores(
                        model,
                        **visual,
                        text_ids=data.text_ids.to(device),
                        text_mask=data.text_mask.to(device),
                        cross_attention_layers=cross_attention_layers,
                    )
                    .float()
                    .cpu()
                )
        return torch.cat(columns, dim=1)
    # the pairs ordered by video, so each batch of media finds its pairs in one slice
    rows = torch.arange(num_texts)[:, None].expand_as(candidates).reshape(-1)
    cols = candidates.reshape(-1).cpu()
    order = torch.sort(cols, stable=True).indices
    rows, cols = rows[order], cols[order]
    scores = torch.full((num_texts, data.num_visual), float("-inf"))
    with precision_autocast(device, precision):
        for index, inputs in data.visual_batches(batch_size, desc="single stream"):
            first = int(index[0])
            lo = int(torch.searchsorted(cols, first))
            hi = int(torch.searchsorted(cols, int(index[-1]), right=True))
            for s in range(lo, hi, batch_size):
                t_idx, v_idx = rows[s : min(s + batch_size, hi)], cols[s : min(s + batch_size, hi)]
                local = v_idx - first
                visual = {k: None if v is None else v[local].to(device) for k, v in inputs.items()}
                logits = model.single_stream_logits(
                    **visual,
                    text_ids=data.text_ids[t_idx].to(device),
                    text_mask=data.text_mask[t_idx].to(device),
                    cross_attention_layers=cross_attention_layers,
                )
                scores[t_idx, v_idx] = logits.float().cpu()
    return scores


def _shortlist_scores(coarse: Tensor, top: Tensor, fine: Tensor) -> Tensor:
    """Scores ranking each text's shortlist (``top`` (N_t, k), re-scored ``fine``) above every
    other video, which keeps its ``coarse`` order."""
    coarse = coarse.double()
    fine = fine.double()
    span = float(coarse.abs().max()) + float(fine.abs().max()) + 1.0
    final = coarse - 2 * span
    final.scatter_(1, top, fine + 2 * span)
    return final


def evaluate_retrieval(
    model: PerceiverVL,
    data: RetrievalInputs | Any,
    *,
    tokenizer: Any = None,
    modes: Sequence[str] = MODES,
    rerank_k: int = 16,
    batch_size: int = 64,
    single_batch_size: int = 256,
    single_candidates: int | None = None,
    cross_attention_layers: Any = None,
    precision: str = "32",
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Text-to-video and video-to-text retrieval in each stream mode, with wall times.

    Args:
        model: the model (evaluated in eval mode on its current device).
        data: :class:`RetrievalInputs` (in memory), :class:`StreamedRetrievalInputs` (decoded
            batch by batch), or a data set (streamed; then ``tokenizer`` is needed).
        modes: any of ``single``, ``multi``, ``mixed``, ``rerank``.
        rerank_k: shortlist length of ``rerank`` (multi-stream top k, re-scored by mixed stream).
        batch_size: encoding batch size; single_batch_size: pairs per single-stream forward.
        single_candidates: score only the multi-stream top k pairs per text in ``single`` mode
            (None = every pair, exact but texts x videos encodings).
        cross_attention_layers: cross-attention blocks that run (None = the config's default).
        precision: ``"32"`` or ``"bf16"`` (autocast).

    Returns:
        ``{mode: {t2v_r1, ..., v2t_meanr, "seconds": wall time, "pairs_scored": n}, ...,
        "info": {num_texts, num_videos, encode_visual_seconds, encode_text_seconds}}``.
    """
    if isinstance(modes, str) or not modes:
        raise ValueError(f"modes must be a non-empty list of {list(MODES)}, got {modes!r}")
    modes = [stream_mode(m, argument="modes") for m in modes]
    if rerank_k < 1:
        raise ValueError(f"rerank_k must be >= 1, got {rerank_k}")
    if not isinstance(data, (RetrievalInputs, StreamedRetrievalInputs)):
        if tokenizer is None:
            raise ValueError("evaluating a data set needs tokenizer= (perceiver_vl.data.Tokenizer)")
        data = stream_retrieval_inputs(data, tokenizer, batch_size=batch_size)
    was_training = model.training
    model.eval()
    owners = data.text_to_video
    num_texts, num_visual = int(data.text_ids.shape[0]), data.num_visual
    results: dict[str, Any] = {}
    try:
        single = StreamMode.SINGLE
        need_latents = any(m != single for m in modes) or (
            single in modes and single_candidates is not None
        )
        visual = text = None
        encode_seconds = 0.0
        info: dict[str, Any] = {"num_texts": num_texts, "num_videos": num_visual}
        if need_latents:
            visual, text, v_sec, t_sec = encode_all(
                model,
                data,
                batch_size=batch_size,
                cross_attention_layers=cross_attention_layers,
                precision=precision,
            )
            encode_seconds = v_sec + t_sec
            info.update(encode_visual_seconds=v_sec, encode_text_seconds=t_sec)
        multi_scores = None
        multi_seconds = 0.0
        device = next(model.parameters()).device
        with torch.no_grad(), precision_autocast(device, precision):
            if (
                visual is not None
                and any(m in modes for m in (StreamMode.MULTI, StreamMode.RERANK))
                or (single in modes and single_candidates is not None)
            ):
                start = time.perf_counter()
                multi_scores = model.multi_stream_scores(visual, text).float().cpu()
                multi_seconds = time.perf_counter() - start
            for mode in modes:
                start = time.perf_counter()
                if mode == StreamMode.MULTI:
                    scores, pairs, extra = multi_scores, num_texts * num_visual, multi_seconds
                elif mode == StreamMode.MIXED:
                    scores = model.mixed_stream_scores(visual, text, chunk_size=chunk_size)
                    scores, pairs, extra = scores.float().cpu(), num_texts * num_visual, 0.0
                elif mode == StreamMode.RERANK:
                    k = min(rerank_k, num_visual)
                    top = multi_scores.topk(k, dim=1).indices
                    rows = torch.arange(num_texts)[:, None].expand_as(top).reshape(-1)
                    fine = []
                    flat_top = top.reshape(-1)
                    for s in range(0, rows.shape[0], chunk_size):
                        fine.append(
                            model.mixed_stream_logits(
                                visual[flat_top[s : s + chunk_size]],
                                text[rows[s : s + chunk_size]],
                            )
                            .float()
                            .cpu()
                        )
                    fine_t = torch.cat(fine).view(num_texts, k)
                    scores = _shortlist_scores(multi_scores, top, fine_t)
                    pairs, extra = num_texts * k, multi_seconds
                else:  # single
                    candidates = None
                    extra = 0.0
                    if single_candidates is not None:
                        k = min(single_candidates, num_visual)
                        candidates = multi_scores.topk(k, dim=1).indices
                        extra = multi_seconds
                    fine_scores = single_stream_score_matrix(
                        model,
                        data,
                        batch_size=single_batch_size,
                        candidates=candidates,
                        cross_attention_layers=cross_attention_layers,
                        precision=precision,
                    )
                    if candidates is not None:
                        fine = fine_scores.gather(1, candidates)
                        scores = _shortlist_scores(multi_scores, candidates, fine)
                        pairs = num_texts * candidates.shape[1]
                    else:
                        scores, pairs = fine_scores, num_texts * num_visual
                elapsed = time.perf_counter() - start
                shared = encode_seconds if (mode != single or single_candidates) else 0.0
                metrics = retrieval_metrics(scores, owners, chunk_size=chunk_size)
                metrics["seconds"] = elapsed + extra + shared
                metrics["pairs_scored"] = int(pairs)
                results[mode] = metrics
        results["info"] = info
    finally:
        model.train(was_training)
    return results


__all__ = ["MODES", "evaluate_retrieval", "single_stream_score_matrix"]
