"""Retrieval in every stream mode (with wall times) and QA evaluation of a trained model.

Modes (paper §3.5):

* ``single``: every (text, video) pair is encoded jointly (exact, cost texts x videos encodings);
* ``multi``: videos and texts encoded once, dot products of their embeddings;
* ``mixed``: encoded once, every pair scored by the decoder over concat(z_V, z_T);
* ``rerank``: the multi-stream top ``rerank_k`` videos of each text re-scored by mixed stream.

Each mode's ``seconds`` is its full wall time, encodings included (multi, mixed and rerank share
one encoding pass, which is timed once and added to each).

Media reach the model batch by batch: :func:`stream_retrieval_inputs` (what ``perceiver-vl
evaluate`` uses) decodes one batch of clips at a time while it is encoded, so only latents are kept
and peak memory does not grow with the number of videos; :func:`load_retrieval_inputs` decodes a
small set into memory once (the demo re-evaluates the same clips many times).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from perceiver_vl.metrics import qa_accuracy, retrieval_metrics, vqa_score
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import (
    STREAM_MODES,
    StreamMode,
    single_stream_scores,
    stream_mode,
)

MODES = STREAM_MODES


@dataclass
class RetrievalInputs:
    """Everything retrieval needs, in memory.

    Attributes:
        video: (V, T, 3, H, W) clips (or None with ``images``); video_mask: (V, T) bool.
        images: (V, 3, H, W) still images.
        text_ids, text_mask: (N, L) tokenised captions.
        text_to_video: (N,) index of each caption's video.
    """

    text_ids: Tensor
    text_mask: Tensor
    text_to_video: Tensor
    video: Tensor | None = None
    video_mask: Tensor | None = None
    images: Tensor | None = None

    @property
    def num_visual(self) -> int:
        visual = self.video if self.video is not None else self.images
        assert visual is not None
        return int(visual.shape[0])

    def head(self, n: int) -> RetrievalInputs:
        """The first ``n`` captions and the first ``n`` videos/images: a smaller gallery of the
        same kind, for inputs with one caption per video in video order (caption ``i`` of
        video ``i``, as the demo's unique-caption splits are)."""
        return RetrievalInputs(
            self.text_ids[:n],
            self.text_mask[:n],
            self.text_to_video[:n],
            video=None if self.video is None else self.video[:n],
            video_mask=None if self.video_mask is None else self.video_mask[:n],
            images=None if self.images is None else self.images[:n],
        )

    def visual(self, index: slice | Tensor) -> dict[str, Tensor]:
        if self.video is not None:
            mask = None if self.video_mask is None else self.video_mask[index]
            return {"video": self.video[index], "video_mask": mask}
        assert self.images is not None
        return {"images": self.images[index]}

    def visual_batches(
        self, batch_size: int, desc: str = "media"
    ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """(positions (B,), model inputs) of consecutive batches of the media."""
        for start in range(0, self.num_visual, batch_size):
            stop = min(start + batch_size, self.num_visual)
            yield torch.arange(start, stop), self.visual(slice(start, stop))


def _collate_media(items: list[Any]) -> dict[str, Tensor]:
    """Model inputs of one batch of media items: ``images`` when every item is a still image,
    else ``video`` + ``video_mask``. A failed item stops evaluation, which needs every item."""
    from perceiver_vl.data import Collator

    if any(item is None for item in items):
        raise RuntimeError(
            "a media file failed to load during evaluation; evaluation needs every item "
            "(see the data set's failure log)"
        )
    is_image = all(bool(item.get("is_image", False)) for item in items)
    batch = Collator(None)(
        [{"video": i["video"], "video_mask": i["video_mask"], "is_image": is_image} for i in items]
    )
    if is_image and batch["video"].shape[1] == 1:
        return {"images": batch["video"][:, 0]}
    return {"video": batch["video"], "video_mask": batch["video_mask"]}


@dataclass
class StreamedRetrievalInputs:
    """Captions in memory; media decoded batch by batch each time they are passed over.

    A pass holds one batch of decoded clips (plus what the loader's workers decode ahead:
    ``prefetch_factor`` batches each), never the whole set, so memory does not grow with the
    number of videos. Each batch is ``images`` when all its items are still images, else clips.

    Attributes:
        media: a data set with one item per media (``video`` (T, 3, H, W), ``video_mask`` (T,),
            ``is_image``), e.g. ``MediaTextDataset.media_only()``.
        text_ids, text_mask: (N, L) tokenised captions; text_to_video: (N,) each caption's media.
        batch_size: media decoded per batch (a pass asking for smaller batches gets those).
        num_workers: loader processes decoding ahead of the model.
        progress: a progress bar with ETA (tqdm, on stderr) for each pass over the media.
    """

    media: Any
    text_ids: Tensor
    text_mask: Tensor
    text_to_video: Tensor
    batch_size: int = 32
    num_workers: int = 0
    progress: bool = False

    @property
    def num_visual(self) -> int:
        return len(self.media)

    def visual_batches(
        self, batch_size: int, desc: str = "media"
    ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """(positions (B,), model inputs) of consecutive batches, decoded as they are asked for."""
        from tqdm.auto import tqdm

        loader = DataLoader(
            self.media,
            batch_size=max(1, min(batch_size, self.batch_size)),
            num_workers=self.num_workers,
            collate_fn=_collate_media,
        )
        bar = tqdm(total=self.num_visual, desc=desc, unit="video", disable=not self.progress)
        start = 0
        try:
            for inputs in loader:
                size = next(iter(inputs.values())).shape[0]
                yield torch.arange(start, start + size), inputs
                start += size
                bar.update(size)
        finally:
            bar.close()


def load_retrieval_inputs(
    dataset: Any,
    tokenizer: Any,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    max_items: int | None = None,
) -> RetrievalInputs:
    """Decode a data set's media once, into memory, and tokenise all its captions (for small
    sets evaluated many times; :func:`stream_retrieval_inputs` keeps memory bounded).

    ``dataset`` is a :class:`perceiver_vl.data.MediaTextDataset` (``media_only()`` /
    ``caption_index()`` give one item per media and every caption with its media)."""
    from perceiver_vl.data import Collator

    media = dataset.media_only() if hasattr(dataset, "media_only") else dataset
    texts, owners = dataset.caption_index()
    if max_items is not None:
        keep = [i for i, o in enumerate(owners) if o < max_items]
        texts, owners = [texts[i] for i in keep], [owners[i] for i in keep]
        media = torch.utils.data.Subset(media, range(min(max_items, len(media))))
    loader = torch.utils.data.DataLoader(
        media,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=lambda items: items,
    )
    videos, masks, is_image = [], [], True
    for items in loader:
        for item in items:
            if item is None:
                raise RuntimeError(
                    "a media file failed to load during evaluation; evaluation needs every item "
                    "(see the data set's failure log)"
                )
            videos.append(item["video"])
            masks.append(item["video_mask"])
            is_image = is_image and bool(item.get("is_image", False))
    batch = Collator(None)(
        [{"video": v, "video_mask": m, "is_image": is_image} for v, m in zip(videos, masks)]
    )
    ids, mask = tokenizer(texts)
    owners_t = torch.tensor(owners, dtype=torch.long)
    if is_image and batch["video"].shape[1] == 1:
        return RetrievalInputs(ids, mask, owners_t, images=batch["video"][:, 0])
    return RetrievalInputs(
        ids, mask, owners_t, video=batch["video"], video_mask=batch["video_mask"]
    )


def stream_retrieval_inputs(
    dataset: Any,
    tokenizer: Any,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    max_items: int | None = None,
    progress: bool = False,
) -> StreamedRetrievalInputs:
    """A data set's captions tokenised and its media ready to be decoded batch by batch.

    ``dataset`` is a :class:`perceiver_vl.data.MediaTextDataset` (``media_only()`` /
    ``caption_index()`` give one item per media and every caption with its media); nothing is
    decoded here."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int, e.g. 32")
    media = dataset.media_only() if hasattr(dataset, "media_only") else dataset
    texts, owners = dataset.caption_index()
    if max_items is not None:
        keep = [i for i, o in enumerate(owners) if o < max_items]
        texts, owners = [texts[i] for i in keep], [owners[i] for i in keep]
        media = torch.utils.data.Subset(media, range(min(max_items, len(media))))
    ids, mask = tokenizer(texts)
    return StreamedRetrievalInputs(
        media,
        ids,
        mask,
        torch.tensor(owners, dtype=torch.long),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )


def _autocast(device: torch.device, precision: str):
    if precision in ("bf16", "bf16-mixed"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def encode_all(
    model: PerceiverVL,
    data: RetrievalInputs | StreamedRetrievalInputs,
    *,
    batch_size: int = 64,
    cross_attention_layers: Any = None,
    precision: str = "32",
) -> tuple[Tensor, Tensor, float, float]:
    """(visual latents (V, N, D), text latents (N_t, N, D), visual seconds, text seconds).

    ``data`` is :class:`RetrievalInputs` or :class:`StreamedRetrievalInputs`; media are encoded
    batch by batch as they come, and only the latents are kept."""
    device = next(model.parameters()).device
    with _autocast(device, precision):
        start = time.perf_counter()
        visual = []
        for _, inputs in data.visual_batches(batch_size, desc="encoding media"):
            kwargs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
            visual.append(
                model.encode(**kwargs, cross_attention_layers=cross_attention_layers).float()
            )
        visual_seconds = time.perf_counter() - start
        start = time.perf_counter()
        text = []
        for s in range(0, data.text_ids.shape[0], batch_size):
            text.append(
                model.encode(
                    text_ids=data.text_ids[s : s + batch_size].to(device),
                    text_mask=data.text_mask[s : s + batch_size].to(device),
                    cross_attention_layers=cross_attention_layers,
                ).float()
            )
        text_seconds = time.perf_counter() - start
    return torch.cat(visual), torch.cat(text), visual_seconds, text_seconds


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
        with _autocast(device, precision):
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
    with _autocast(device, precision):
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
        with torch.no_grad(), _autocast(device, precision):
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


@torch.no_grad()
def evaluate_qa(
    model: PerceiverVL,
    loader: Any,
    *,
    precision: str = "32",
    cross_attention_layers: Any = None,
) -> dict[str, float]:
    """QA accuracy (``answer_index`` batches) and VQA score (``answer_scores``) over a loader of
    collated batches; also the wall time in ``seconds``."""
    if model.qa_head is None:
        raise ValueError("the model has no QA head (config.num_answers=0); fine-tune it for QA")
    from .module import visual_inputs

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, indices, soft = [], [], []
    start = time.perf_counter()
    try:
        with _autocast(device, precision):
            for batch in loader:
                if batch is None:
                    continue
                vis = {
                    k: None if v is None else v.to(device) for k, v in visual_inputs(batch).items()
                }
                logits = model(
                    **vis,
                    text_ids=batch["text_ids"].to(device),
                    text_mask=batch["text_mask"].to(device),
                    cross_attention_layers=cross_attention_layers,
                ).answer_logits
                preds.append(logits.float().argmax(1).cpu())
                if "answer_index" in batch:
                    indices.append(batch["answer_index"])
                if "answer_scores" in batch:
                    soft.append(batch["answer_scores"])
    finally:
        model.train(was_training)
    out: dict[str, float] = {"num_questions": float(sum(len(p) for p in preds))}
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    if indices:
        out["qa_acc"] = qa_accuracy(pred, torch.cat(indices))
    if soft:
        out["vqa_score"] = vqa_score(pred, torch.cat(soft))
    out["seconds"] = time.perf_counter() - start
    return out


@torch.no_grad()
def evaluate_multiple_choice(
    model: PerceiverVL,
    loader: Any,
    *,
    precision: str = "32",
    cross_attention_layers: Any = None,
) -> dict[str, float]:
    """Multiple-choice accuracy (TGIF-QA action / transition) over a loader of collated batches
    with ``choices_ids`` (B, C, L): every candidate is encoded jointly with the video and scored
    by the matching head; the highest-scoring candidate is the answer."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    start = time.perf_counter()
    try:
        with _autocast(device, precision):
            for batch in loader:
                if batch is None:
                    continue
                ids, mask = batch["choices_ids"], batch["choices_mask"]
                size, num_choices = ids.shape[:2]
                owner = torch.arange(size).repeat_interleave(num_choices)
                from .module import visual_inputs

                vis = {
                    k: None if v is None else v.to(device)
                    for k, v in visual_inputs(batch, owner).items()
                }
                logits = model(
                    **vis,
                    text_ids=ids.flatten(0, 1).to(device),
                    text_mask=mask.flatten(0, 1).to(device),
                    cross_attention_layers=cross_attention_layers,
                ).matching_logits
                pred = logits.float().view(size, num_choices).argmax(1).cpu()
                correct += int((pred == batch["answer_index"]).sum())
                total += size
    finally:
        model.train(was_training)
    return {
        "num_questions": float(total),
        "mc_acc": 100.0 * correct / max(1, total),
        "seconds": time.perf_counter() - start,
    }


__all__ = [
    "MODES",
    "evaluate_multiple_choice",
    "RetrievalInputs",
    "StreamedRetrievalInputs",
    "encode_all",
    "evaluate_qa",
    "evaluate_retrieval",
    "load_retrieval_inputs",
    "single_stream_score_matrix",
    "stream_retrieval_inputs",
]
