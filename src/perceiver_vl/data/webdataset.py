"""Streaming webdataset tar shards as video2dataset / img2dataset write them.

A shard is a tar file whose members are grouped into samples by key: ``KEY.mp4`` (or ``.webm``,
``.jpg``, ``.png``, ...), ``KEY.txt`` (the caption), ``KEY.json`` (metadata). Shards are
streamed (never extracted), split across data-parallel ranks and loader workers, shuffled with a
sample buffer in training, and can be resampled with replacement for pretraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from perceiver_vl.data.failures import FailureTracker, MediaError
from perceiver_vl.data.media import Size, load_media

MEDIA_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "jpg", "jpeg", "png", "webp")
_IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp"}
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand shard specs: ``"data/{00000..00009}.tar"`` (brace ranges, zero padding kept),
    several specs joined with ``::``, or a list; a directory means every ``*.tar`` in it."""
    if isinstance(urls, (str, os.PathLike)):
        specs = str(urls).split("::")
    else:
        specs = [str(u) for u in urls]
    out: list[str] = []
    for spec in specs:
        match = _BRACE.search(spec)
        if match:
            first, last = match.group(1), match.group(2)
            width = len(first)
            for number in range(int(first), int(last) + 1):
                out.extend(
                    expand_urls(spec[: match.start()] + f"{number:0{width}d}" + spec[match.end() :])
                )
        elif Path(spec).is_dir():
            out.extend(str(p) for p in sorted(Path(spec).glob("*.tar")))
        else:
            out.append(spec)
    return out


def _stable_seed(*parts: object) -> int:
    """A seed from ``parts`` that is the same in every process and run (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def _lacks_end_marker(path: str) -> bool:
    """A complete tar ends with zero blocks (the end-of-archive marker); a cut one does not."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size < 1024:
            return True
        handle.seek(size - 1024)
        return any(handle.read(1024))


def iter_tar_samples(
    shard: str, tracker: FailureTracker | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {extension: bytes})`` samples of one tar shard, in file order.

    A missing or corrupt shard is recorded in ``tracker`` (samples read before the damage are
    still yielded); without a tracker the error is raised.
    """
    if not Path(shard).is_file():
        error = MediaError(shard, "shard file does not exist", "missing")
        if tracker is None:
            raise error
        tracker.handle(error)
        return
    current_key: str | None = None
    parts: dict[str, bytes] = {}
    truncated = _lacks_end_marker(shard)
    try:
        with tarfile.open(shard, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if key.startswith("__") or not ext:
                    continue
                if key != current_key:
                    if current_key is not None and parts:
                        yield current_key, parts
                    current_key, parts = key, {}
                handle = archive.extractfile(member)
                parts[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        error = MediaError(shard, f"corrupt or truncated tar shard ({err})", "undecodable")
        if tracker is None:
            raise error from err
        tracker.handle(error)
        return  # the partial last sample of a damaged shard is not yielded
    if truncated:
        # The last sample may be incomplete: drop it and report the shard.
        error = MediaError(
            shard,
            f"truncated tar shard (no end-of-archive marker); last sample {current_key!r} dropped",
            "undecodable",
        )
        if tracker is None:
            raise error
        tracker.handle(error)
        return
    if current_key is not None and parts:
        yield current_key, parts


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank or 0, world_size or 1


class WebDatasetShards(IterableDataset):
    """Video/image-text samples streamed from webdataset tar shards.

    Args:
        urls: shard specs (see `expand_urls`).
        num_frames: T frames per video (images are 1-frame clips).
        size: frame size.
        train: random frames/crops, shard order shuffled per epoch, sample shuffle buffer.
        resample: draw shards with replacement, forever or for ``samples_per_epoch``.
        samples_per_epoch: samples per epoch over all ranks (required for a finite resampled
            epoch; gives the data set a length).
        shuffle_buffer: samples held for shuffling (default 256 when training, else 0).
        seed: seeds every random choice, together with the epoch (see `set_epoch`).
        rank, world_size: data-parallel position (default: torch.distributed when initialised).
        media_extensions: member extensions tried for the media, in order.
        strict, max_failure_fraction, failure_log, tracker: bad-sample handling, as in
            `FailureTracker`.

    Every rank and loader worker reads a disjoint subset of the shards when there are at least
    as many shards as consumers, otherwise every consumer reads all shards and keeps every
    N-th sample. Ranks can get unequal sample counts without resampling; for data-parallel
    pretraining use ``resample=True`` with ``samples_per_epoch``.

    Items: ``video`` (T, 3, H, W), ``video_mask`` (T,), ``is_image``, ``text``, ``texts``,
    ``video_id`` (the sample key), ``index`` (running count in this consumer), ``shard``,
    ``meta`` (the ``.json`` member, or {}).
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        num_frames: int = 8,
        size: Size = 224,
        train: bool = False,
        resample: bool = False,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        media_extensions: Sequence[str] = MEDIA_EXTENSIONS,
        strict: bool = False,
        max_failure_fraction: float = 0.1,
        failure_log: str | os.PathLike | None = None,
        tracker: FailureTracker | None = None,
        name: str = "webdataset",
    ) -> None:
        super().__init__()
        self.shards = expand_urls(urls)
        if not self.shards:
            raise ValueError(f"urls={urls!r} names no shard; pass e.g. 'data/{{00000..00009}}.tar'")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch={samples_per_epoch!r} must be >= 1 or None")
        self.num_frames = num_frames
        self.size = size
        self.train = train
        self.resample = resample
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = (256 if train else 0) if shuffle_buffer is None else shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.media_extensions = tuple(e.lower().lstrip(".") for e in media_extensions)
        self.epoch = 0
        self.name = name
        self.tracker = tracker or FailureTracker(
            strict=strict,
            max_failure_fraction=max_failure_fraction,
            log_file=failure_log,
            name=name,
        )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shards and samples for a new epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.samples_per_epoch is None:
            raise TypeError(f"{self.name} has no length; pass samples_per_epoch= to give it one")
        _, world = _distributed(self.rank, self.world_size)
        return self.samples_per_epoch // world

    # ----------------------------------------------------------------- iteration
    def _consumer(self) -> tuple[int, int, int, int]:
        rank, world = _distributed(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return rank, world, worker, workers

    def _raw_samples(self) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        rank, world, worker, workers = self._consumer()
        consumer, consumers = rank * workers + worker, world * workers
        if self.resample:
            rng = random.Random(_stable_seed(self.seed, self.epoch, rank, worker))
            empty_draws = 0
            while True:
                shard = rng.choice(self.shards)
                got = False
                for key, parts in iter_tar_samples(shard, self.tracker):
                    got = True
                    yield shard, key, parts
                empty_draws = 0 if got else empty_draws + 1
                if empty_draws > 2 * len(self.shards) + 10:
                    raise MediaError(
                        str(self.shards[0]),
                        f"{empty_draws} shard draws in a row gave no sample; check urls=",
                        "missing",
                    )
        shards = list(self.shards)
        if self.train:
            random.Random(_stable_seed(self.seed, self.epoch)).shuffle(shards)
        if len(shards) >= consumers:
            for shard in shards[consumer::consumers]:
                for key, parts in iter_tar_samples(shard, self.tracker):
                    yield shard, key, parts
        else:
            count = 0
            for shard in shards:
                for key, parts in iter_tar_samples(shard, self.tracker):
                    if count % consumers == consumer:
                        yield shard, key, parts
                    count += 1

    def _shuffled(self, samples: Iterator[Any]) -> Iterator[Any]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rank, _, worker, _ = self._consumer()
        rng = random.Random(_stable_seed(self.seed, self.epoch, rank, worker, "buffer"))
        buffer: list[Any] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            position = rng.randrange(len(buffer))
            yield buffer[position]
            buffer[position] = sample
        rng.shuffle(buffer)
        yield from buffer

    def _quota(self) -> int | None:
        if self.samples_per_epoch is None:
            return None
        _, world, worker, workers = self._consumer()
        per_rank = self.samples_per_epoch // world
        return per_rank // workers + (1 if worker < per_rank % workers else 0)

    def _decode(self, shard: str, key: str, parts: dict[str, bytes], index: int):
        ext = next((e for e in self.media_extensions if e in parts), None)
        if ext is None:
            raise MediaError(
                f"{shard}:{key}", f"no media member among {sorted(parts)}", "bad_annotation"
            )
        meta: dict[str, Any] = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        caption = parts.get("txt", b"").decode("utf-8", errors="replace").strip()
        if not caption and isinstance(meta.get("caption"), str):
            caption = meta["caption"].strip()
        name = f"{shard}:{key}.{ext}"
        if not caption:
            raise MediaError(name, "empty caption", "empty_caption")
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(
                _stable_seed(self.seed, self.epoch, shard, key)
            )
        video, mask, is_image = load_media(
            parts[ext],
            self.num_frames,
            self.size,
            self.train,
            generator,
            is_image=ext in _IMAGE_EXTENSIONS,
            name=name,
        )
        caption = " ".join(caption.split())
        return {
            "video": video,
            "video_mask": mask,
            "is_image": is_image,
            "text": caption,
            "texts": [caption],
            "index": index,
            "video_id": key,
            "shard": shard,
            "meta": meta,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        quota = self._quota()
        produced = 0
        for shard, key, parts in self._shuffled(self._raw_samples()):
            if quota is not None and produced >= quota:
                return
            try:
                item = self._decode(shard, key, parts, produced)
            except MediaError as err:
                self.tracker.handle(err)
                continue
            self.tracker.ok()
            produced += 1
            yield item
