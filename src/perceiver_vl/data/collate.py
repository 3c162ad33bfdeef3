"""Batching: stack clips (padding T with masked frames), tokenise captions, optional masked LM."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from perceiver_vl.data.masking import mask_tokens
from perceiver_vl.data.tokenizer import Tokenizer

_HANDLED = {"video", "video_mask", "is_image", "text"}


def _stack_videos(items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = {tuple(item["video"].shape[1:]) for item in items}
    if len(shapes) != 1:
        raise ValueError(
            f"items have different frame sizes {sorted(shapes)}; load every item with the same "
            "size= (the data sets resize and crop for you)"
        )
    lengths = [item["video"].shape[0] for item in items]
    max_t = max(lengths)
    if min(lengths) == max_t:  # no padding: one stack (a zero-filled batch costs twice that)
        masks = [item.get("video_mask", torch.ones(max_t, dtype=torch.bool)) for item in items]
        return torch.stack([item["video"] for item in items]), torch.stack(masks).bool()
    channels, height, width = shapes.pop()
    video = torch.zeros(len(items), max_t, channels, height, width)
    mask = torch.zeros(len(items), max_t, dtype=torch.bool)
    for row, item in enumerate(items):
        t = item["video"].shape[0]
        video[row, :t] = item["video"]
        mask[row, :t] = item.get("video_mask", torch.ones(t, dtype=torch.bool))
    return video, mask


def _collate_extra(values: list[Any]) -> Any:
    if all(isinstance(v, torch.Tensor) for v in values):
        if len({tuple(v.shape) for v in values}) == 1:
            return torch.stack(values)
        return values
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if all(isinstance(v, float) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    return values


class Collator:
    """Turn a list of data-set items into a batch.

    Bad samples arrive as ``None`` (see `FailureTracker`) and are dropped; a batch made only of
    bad samples becomes ``None`` (skip it in the training loop).

    Output keys:
        ``video`` (B, T, 3, H, W), ``video_mask`` (B, T) bool (True = real frame; shorter clips
        and images are padded with masked frames); ``images`` (B, 3, H, W) when every item is an
        image; ``text_ids``, ``text_mask`` (B, L) when a tokenizer is given and items carry
        ``"text"``; ``mlm_ids``, ``mlm_labels`` (B, L) (-100 = not a target) when
        ``mlm_probability > 0``; ``choices_ids``, ``choices_mask`` (B, C, L) when items carry
        ``choices`` (multiple-choice candidate texts); ``texts`` (list of lists) when items carry several captions;
        any other key stacked when it holds same-shape tensors or numbers, else kept as a list.

    Args:
        tokenizer: tokenises ``"text"``; None leaves texts as strings under ``"text"``.
        mlm_probability: masked-LM target fraction (0 = no ``mlm_*`` keys).
        whole_word: whole-word masking.
        ensure_one: at least one masked-LM target per caption.
        seed: seeds masking. A batch's masking generator is keyed on ``(seed, epoch, the
            items' "index" values)`` (items without an index: the batch's token ids), so it is
            the same in every loader worker, every run and after resuming (see `set_epoch`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        mlm_probability: float = 0.0,
        whole_word: bool = False,
        ensure_one: bool = False,
        seed: int = 0,
    ) -> None:
        if mlm_probability and tokenizer is None:
            raise ValueError("mlm_probability > 0 needs tokenizer=Tokenizer.default() (or yours)")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.whole_word = whole_word
        self.ensure_one = ensure_one
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the masks of ``epoch`` (a sample gets new masks every epoch)."""
        self.epoch = int(epoch)

    def _generator(self, items: Sequence[dict[str, Any]], ids: torch.Tensor) -> torch.Generator:
        """The batch's masking generator: a function of the seed, the epoch and which samples
        (or, without ``index`` keys, which token ids) the batch holds; never of how many batches
        this process collated before, which differs between workers and after a restart."""
        key = hashlib.blake2b(repr((self.seed, self.epoch)).encode(), digest_size=8)
        indices = [item.get("index") for item in items]
        if all(isinstance(i, int) for i in indices):
            key.update(repr(indices).encode())
        else:
            key.update(ids.contiguous().numpy().tobytes())
        seed = int.from_bytes(key.digest(), "little") & (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        """items: list of data-set dicts (or None for skipped samples) -> batch dict or None."""
        good = [item for item in items if item is not None]
        if not good:
            return None
        batch: dict[str, Any] = {}
        batch["video"], batch["video_mask"] = _stack_videos(good)
        is_image = [bool(item.get("is_image", False)) for item in good]
        batch["is_image"] = torch.tensor(is_image, dtype=torch.bool)
        if all(is_image) and batch["video"].shape[1] == 1:
            batch["images"] = batch["video"][:, 0]
        if all("text" in item for item in good):
            texts = [item["text"] for item in good]
            if self.tokenizer is None:
                batch["text"] = texts
            else:
                batch["text"] = texts
                ids, mask = self.tokenizer(texts)
                batch["text_ids"], batch["text_mask"] = ids, mask
                if self.mlm_probability > 0:
                    batch["mlm_ids"], batch["mlm_labels"] = mask_tokens(
                        ids,
                        mask,
                        vocab_size=self.tokenizer.vocab_size,
                        mask_id=self.tokenizer.mask_id,
                        special_ids=self.tokenizer.special_ids,
                        probability=self.mlm_probability,
                        generator=self._generator(good, ids),
                        whole_word=self.whole_word,
                        tokenizer=self.tokenizer,
                        ensure_one=self.ensure_one,
                    )
        if self.tokenizer is not None and all("choices" in item for item in good):
            counts = {len(item["choices"]) for item in good}
            if len(counts) != 1:
                raise ValueError(
                    f"items have different numbers of choices {sorted(counts)}; multiple-choice "
                    "batches need the same count for every question"
                )
            flat = [text for item in good for text in item["choices"]]
            ids, mask = self.tokenizer(flat)
            batch["choices"] = [list(item["choices"]) for item in good]
            batch["choices_ids"] = ids.view(len(good), counts.pop(), -1)
            batch["choices_mask"] = mask.view(*batch["choices_ids"].shape)
        keys = [
            k
            for k in good[0]
            if k not in _HANDLED and k not in batch and all(k in item for item in good)
        ]
        for key in keys:
            batch[key] = _collate_extra([item[key] for item in good])
        return batch


def collate(
    items: Sequence[dict[str, Any] | None],
    tokenizer: Tokenizer | None = None,
    *,
    mlm_probability: float = 0.0,
    whole_word: bool = False,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Batch ``items`` once; see `Collator` (use a Collator as a DataLoader's ``collate_fn``)."""
    return Collator(tokenizer, mlm_probability=mlm_probability, whole_word=whole_word, seed=seed)(
        items
    )


def visual_inputs(batch: dict[str, Any], index: torch.Tensor | None = None) -> dict[str, Any]:
    """The model's visual keyword arguments from a collated batch (``images=`` when every item
    is a still image, else ``video=`` + ``video_mask=``), optionally re-indexed."""
    if "images" in batch:
        images = batch["images"]
        return {"images": images if index is None else images[index]}
    video, mask = batch["video"], batch.get("video_mask")
    if index is not None:
        video = video[index]
        mask = None if mask is None else mask[index]
    return {"video": video, "video_mask": mask}
