"""What retrieval evaluation reads: captions, their media and which caption belongs to which.

:class:`RetrievalInputs` holds decoded media in memory (:func:`load_retrieval_inputs`: small sets
evaluated many times, as the demo's); :class:`StreamedRetrievalInputs` decodes one batch of clips
at a time while it is encoded (:func:`stream_retrieval_inputs`: what ``perceiver-vl evaluate``
uses), so peak memory does not grow with the number of videos. Both give the model's inputs
through ``visual_batches``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader


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


__all__ = [
    "RetrievalInputs",
    "StreamedRetrievalInputs",
    "load_retrieval_inputs",
    "stream_retrieval_inputs",
]
