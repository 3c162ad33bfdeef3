"""Decode once, train many epochs: a data set whose clips live in memory as uint8.

Small benchmarks (the built-in synthetic one, a few thousand 64x64 clips) cost more to decode
than to train on; ``CachedClips`` decodes every item of another data set once (in loader worker
processes, with a progress bar) and serves them from memory afterwards. Frames are stored as
uint8, which is exact for clips normalised from 8-bit pixels without resampling and within
half a grey level otherwise. The random choices of a training data set (frames, crops, caption)
are made once, at caching time. Items the source skips (bad media) stay skipped: they are
counted and reported by the source's ``FailureTracker`` and left out of the cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def _first(items: list[Any]) -> Any:
    return items[0]


def _to_uint8(video: torch.Tensor) -> torch.Tensor:
    return ((video.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


class CachedClips(Dataset):
    """An in-memory copy of ``dataset`` (map-style, items are dicts with ``"video"``).

    Args:
        dataset: the source data set (e.g. a :class:`~perceiver_vl.data.CaptionDataset`).
        num_workers: loader worker processes used for the one decoding pass.
        progress: show a progress bar.
        description: the progress bar's label.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_workers: int = 0,
        progress: bool = True,
        description: str | None = None,
    ) -> None:
        self.source = dataset
        self.name = f"{getattr(dataset, 'name', type(dataset).__name__)} (cached)"
        loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=_first)
        self.items: list[dict[str, Any]] = []
        self.skipped = 0
        bar = tqdm(
            loader,
            total=len(dataset),  # type: ignore[arg-type]
            desc=description or f"decoding {getattr(dataset, 'name', 'clips')}",
            disable=not progress,
            unit="clip",
            mininterval=1.0,
        )
        for item in bar:
            if item is None:
                self.skipped += 1
                continue
            item = dict(item)
            item["video"] = _to_uint8(item["video"])
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.items[index])
        item["video"] = item["video"].float().div_(127.5).sub_(1.0)
        return item

    @property
    def tracker(self) -> Any:
        """The source's failure tracker (what was skipped while caching)."""
        return getattr(self.source, "tracker", None)

    def nbytes(self) -> int:
        """Memory held by the cached clips."""
        return sum(item["video"].numel() for item in self.items)
