"""Map-style data sets over annotation files + a media folder; every one yields the same dicts.

Item contract (see `MediaTextDataset.__getitem__`): ``video`` (T, 3, H, W) float in [-1, 1],
``video_mask`` (T,) bool, ``is_image`` bool (images are 1-frame clips), ``text`` str,
``texts`` list[str] (all captions of the media), ``index`` int, ``video_id`` str, plus task keys
(``question``, ``answer``, ``answer_index``, ``answer_scores`` for QA). A bad sample makes
``__getitem__`` return ``None`` after `FailureTracker` recorded it; `Collator` drops it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from perceiver_vl.data.annotation_index import (
    BuiltIndex,
    EntryTable,
    Img2datasetKeys,
    _jsonl_slices,
    cached_index,
    read_caption_jsonl,
    read_img2dataset_tsv,
)
from perceiver_vl.data.failures import FailureTracker, MediaError
from perceiver_vl.data.media import Size, load_media
from perceiver_vl.fileio import atomic_write_json

logger = logging.getLogger("perceiver_vl.data")

MEDIA_KEYS = ("video", "image", "media", "path", "file", "filename", "video_path", "image_path")
CAPTION_KEYS = ("caption", "captions", "text", "sentence", "sentences", "title", "name")
ID_KEYS = ("id", "video_id", "image_id", "key", "videoid")


@dataclass(slots=True)
class Entry:
    """One media file and its captions. ``media`` is relative to the data set's media root."""

    media: str
    captions: list[str]
    id: str
    extra: dict[str, Any] = field(default_factory=dict)


def _need_file(path: Path, argument: str, hint: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={str(path)!r} does not exist; {hint}")
    return path


def _need_dir(path: Path, argument: str, hint: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{argument}={str(path)!r} is not a directory; {hint}")
    return path


def _load_json(path: Path, argument: str) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{argument}={str(path)!r} is not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{argument}={str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "save it as UTF-8"
        ) from None


def _clean_captions(value: Any) -> list[str]:
    """The non-blank captions of an annotation cell: a string, a number or a list of them
    (whitespace collapsed; ``None``, objects and nested lists hold no caption)."""
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [
        " ".join(str(v).split())
        for v in value
        if v is not None and not isinstance(v, (dict, list, tuple)) and str(v).strip()
    ]


class MediaTextDataset(Dataset):
    """Base class: a list of `Entry` objects, media loading, and bad-sample handling.

    Args:
        entries: the media/caption list (sub-classes build it from their annotation format).
        media_root: folder the entries' media paths are relative to.
        num_frames: T frames per video clip (images are 1-frame clips).
        size: frame size (int or (H, W)).
        train: random frames, random crops and a random caption; else deterministic.
        pairs: one item per (media, caption) pair instead of one per media.
        seed: seeds the per-item randomness (with the epoch, see `set_epoch`).
        tracker: a shared `FailureTracker`; by default one is made from ``strict``,
            ``max_failure_fraction`` and ``failure_log``.
        name: shown in logs.
        media_extension: the media files' extension when they were converted after the
            annotations were written (e.g. ``".mp4"`` for DiDeMo's ``.mov``/``.avi`` names):
            every media path gets it. Explicit only: a missing file is never looked up under
            another extension.
    """

    name = "media-text"

    def __init__(
        self,
        entries: Sequence[Entry],
        media_root: str | os.PathLike,
        *,
        num_frames: int = 8,
        size: Size = 224,
        train: bool = False,
        pairs: bool = False,
        seed: int = 0,
        strict: bool = False,
        max_failure_fraction: float = 0.1,
        failure_log: str | os.PathLike | None = None,
        tracker: FailureTracker | None = None,
        name: str | None = None,
        media_extension: str | None = None,
    ) -> None:
        if media_extension is not None and not (
            isinstance(media_extension, str) and media_extension.startswith(".")
        ):
            raise ValueError(
                f"media_extension={media_extension!r} must be an extension with its dot, "
                "e.g. '.mp4'"
            )
        self.media_extension = media_extension
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} must be a positive int, e.g. 8")
        self.name = name or self.name
        self.media_root = Path(media_root)
        self.num_frames = num_frames
        self.size = size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.tracker = tracker or FailureTracker(
            strict=strict,
            max_failure_fraction=max_failure_fraction,
            log_file=failure_log,
            name=self.name,
        )
        self.pairs = pairs
        self.entries = list(entries)

    @property
    def entries(self) -> list[Entry]:
        """The media of this data set, each with its captions."""
        return self._entries

    @entries.setter
    def entries(self, value: Sequence[Entry]) -> None:
        # an EntryTable (a large annotation file's compact index) is kept as it is
        self._entries = value if isinstance(value, EntryTable) else list(value)
        if not self.pairs:
            self._pairs = None
        elif isinstance(value, EntryTable):
            counts = value.caption_counts()
            owners = np.repeat(np.arange(len(counts)), counts)
            firsts = np.repeat(np.cumsum(counts) - counts, counts)
            self._pairs = list(zip(owners.tolist(), (np.arange(len(owners)) - firsts).tolist()))
        else:
            self._pairs = [
                (e, c) for e, entry in enumerate(self._entries) for c in range(len(entry.captions))
            ]

    def _use_index(self, built: BuiltIndex) -> None:
        """Take a built (or cached) index: record what it skipped, as reading the file would."""
        for where, reason, kind in built.skipped:
            self.tracker.fail(where, reason, kind, check=False)
        for failed, total, what in built.checks:
            self.tracker.check_fraction(failed, total, what)
        self.entries = built.table

    # ----------------------------------------------------------------- annotation checks
    def _filter_captionless(self, entries: Iterable[Entry], source: str) -> list[Entry]:
        """Drop entries without a caption, recording each as an ``empty_caption`` skip."""
        kept, dropped = [], 0
        for entry in entries:
            if entry.captions:
                kept.append(entry)
            else:
                dropped += 1
                self.tracker.fail(
                    f"{source} [{entry.id}: {entry.media}]",
                    "empty caption",
                    "empty_caption",
                    check=False,
                )
        self.tracker.check_fraction(dropped, dropped + len(kept), f"{source} (annotations)")
        return kept

    # ----------------------------------------------------------------- dataset protocol
    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Change the training randomness (frames, crops, caption choice) for a new epoch."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        """The generator of item ``index`` in the current epoch (independent of workers)."""
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % (2**63))

    def resolve(self, media: str) -> Path:
        """The file of ``media`` (relative to the media root). A missing file stays missing: it
        is counted and reported when loaded, never replaced by a file of another extension."""
        path = Path(media)
        if self.media_extension is not None:
            path = path.with_suffix(self.media_extension)
        return path if path.is_absolute() else self.media_root / path

    def load(self, entry: Entry, generator: torch.Generator | None):
        """Load ``entry``'s media: (video (T, 3, H, W), video_mask (T,), is_image)."""
        return load_media(
            self.resolve(entry.media), self.num_frames, self.size, self.train, generator
        )

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index={index} out of range for {self.name} of length {len(self)}")
        if self._pairs is not None:
            entry_index, caption_index = self._pairs[index]
        else:
            entry_index, caption_index = index, None
        entry = self.entries[entry_index]
        generator = self.generator(index) if self.train else None
        try:
            video, mask, is_image = self.load(entry, generator)
        except MediaError as err:
            self.tracker.handle(err)
            return None
        self.tracker.ok()
        if caption_index is None:
            if self.train and len(entry.captions) > 1:
                caption_index = int(torch.randint(len(entry.captions), (1,), generator=generator))
            else:
                caption_index = 0
        item: dict[str, Any] = {
            "video": video,
            "video_mask": mask,
            "is_image": is_image,
            "text": entry.captions[caption_index],
            "texts": list(entry.captions),
            "index": index,
            "video_id": entry.id,
        }
        item.update(self.extra_fields(entry))
        return item

    def extra_fields(self, entry: Entry) -> dict[str, Any]:
        """Task-specific keys of an item (QA answers, ...); none by default."""
        return dict(entry.extra)

    # ----------------------------------------------------------------- retrieval helpers
    def retrieval_items(self) -> list[tuple[str, Path, list[str]]]:
        """(video_id, media path, captions) per media, so evaluation encodes each video once."""
        return [(e.id, self.resolve(e.media), list(e.captions)) for e in self.entries]

    def caption_index(self) -> tuple[list[str], list[int]]:
        """All captions and, for each, the position of its media in `retrieval_items`."""
        texts, owners = [], []
        for position, entry in enumerate(self.entries):
            texts.extend(entry.captions)
            owners.extend([position] * len(entry.captions))
        return texts, owners

    def media_only(self) -> MediaTextDataset:
        """A view with one item per media (no caption expansion) for encoding videos once."""
        view = MediaTextDataset(
            self.entries,
            self.media_root,
            num_frames=self.num_frames,
            size=self.size,
            train=False,
            seed=self.seed,
            tracker=self.tracker,
            name=f"{self.name} (media)",
            media_extension=self.media_extension,
        )
        view.resolve = self.resolve  # type: ignore[method-assign]
        return view

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, items={len(self)}, "
            f"media={len(self.entries)}, num_frames={self.num_frames}, size={self.size}, "
            f"train={self.train})"
        )


# ===================================================================== generic annotations
def read_annotations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (with header), JSON-lines or JSON (list of objects) annotation file.

    UTF-8 text (a byte-order mark is accepted); another encoding, an empty file or rows that are
    not objects are a ``ValueError`` naming the file."""
    path = _need_file(Path(path), "annotations", "pass a .csv, .tsv, .jsonl or .json file")
    try:
        rows = _read_annotation_rows(path)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"annotations={str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "save it as UTF-8"
        ) from None
    if not rows:
        raise ValueError(
            f"annotations={str(path)!r} holds no rows; an empty data set would train or "
            "evaluate on nothing. Check the file (or the split it was written for)"
        )
    bad = [i for i, row in enumerate(rows) if not isinstance(row, dict)]
    if bad:
        raise ValueError(
            f"annotations={str(path)!r} row {bad[0] + 1} is {type(rows[bad[0]]).__name__}, not "
            'an object like {"video": ..., "caption": ...}'
        )
    return rows


def _read_annotation_rows(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".jsonl":
        return [row for rows in _jsonl_slices(path) for row in rows]
    if suffix == ".json":
        data = _load_json(path, "annotations")
        if isinstance(data, dict):
            for key in ("annotations", "data", "items"):
                if isinstance(data.get(key), list):
                    return data[key]
        if isinstance(data, list):
            return data
        raise ValueError(f"annotations={str(path)!r} must hold a list of objects")
    raise ValueError(
        f"annotations={str(path)!r} has an unknown extension {suffix!r}; use .csv, .tsv, .jsonl "
        "or .json"
    )


def _pick_key(row: dict[str, Any], wanted: str | None, candidates: Sequence[str], what: str):
    if wanted is not None:
        if wanted not in row:
            raise ValueError(
                f"{what}_key={wanted!r} is not a column of the annotations (columns: {list(row)})"
            )
        return wanted
    for key in candidates:
        if key in row:
            return key
    raise ValueError(
        f"no {what} column found among {list(row)}; name it one of {list(candidates)} or pass "
        f"{what}_key="
    )


class CaptionDataset(MediaTextDataset):
    """Generic (media path, caption) annotations in CSV, TSV, JSON-lines or JSON.

    The media column is auto-detected among ``video, image, media, path, file, filename`` and
    the caption column among ``caption, captions, text, sentence, title, name``; a caption cell
    may hold a list (several captions per media). Rows with the same media are merged.
    A JSON-lines file is indexed into arrays (:class:`~perceiver_vl.data.annotation_index.
    EntryTable`: no Python object per row, millions of rows in seconds) and, with
    ``index_cache``, the index is kept there for the next process that reads the same file.

    Args:
        annotations: the annotation file.
        media_root: folder media paths are relative to (default: the annotation file's folder).
        media_key, caption_key, id_key: column names, when auto-detection does not fit.
        index_cache: a folder for the JSON-lines index (None = build it in every process);
            the data module passes ``<run>/index_cache``.
        **kwargs: see `MediaTextDataset` (num_frames, size, train, pairs, strict, ...).
    """

    name = "captions"

    def __init__(
        self,
        annotations: str | os.PathLike,
        media_root: str | os.PathLike | None = None,
        *,
        media_key: str | None = None,
        caption_key: str | None = None,
        id_key: str | None = None,
        index_cache: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        annotations = Path(annotations)
        root = Path(media_root) if media_root is not None else annotations.parent
        kwargs.setdefault("name", f"{self.name}:{annotations.name}")
        if annotations.suffix.lower() == ".jsonl":
            _need_file(annotations, "annotations", "pass a .csv, .tsv, .jsonl or .json file")
            super().__init__([], root, **kwargs)
            keys = {"media_key": media_key, "caption_key": caption_key, "id_key": id_key}
            built, _ = cached_index(
                annotations,
                "captions-jsonl",
                keys,
                lambda: read_caption_jsonl(
                    annotations,
                    media_keys=MEDIA_KEYS,
                    caption_keys=CAPTION_KEYS,
                    id_keys=ID_KEYS,
                    **keys,
                ),
                index_cache,
            )
            self._use_index(built)
            return
        rows = read_annotations(annotations)
        super().__init__([], root, **kwargs)
        merged: OrderedDict[str, Entry] = OrderedDict()
        bad_rows = 0
        if rows:
            m_key = _pick_key(rows[0], media_key, MEDIA_KEYS, "media")
            c_key = _pick_key(rows[0], caption_key, CAPTION_KEYS, "caption")
            i_key = id_key or next((k for k in ID_KEYS if k in rows[0]), None)
            for number, row in enumerate(rows):
                media = row.get(m_key)
                if not isinstance(media, str) or not media.strip():
                    bad_rows += 1
                    self.tracker.fail(
                        f"{annotations} row {number}",
                        "no media path",
                        "bad_annotation",
                        check=False,
                    )
                    continue
                captions = _clean_captions(row.get(c_key))
                entry = merged.get(media)
                if entry is None:
                    entry_id = str(row[i_key]) if i_key and row.get(i_key) is not None else None
                    entry = Entry(media, [], entry_id or Path(media).stem)
                    merged[media] = entry
                entry.captions.extend(captions)
        self.tracker.check_fraction(bad_rows, max(1, len(rows)), f"{annotations} (rows)")
        self.entries = self._filter_captionless(merged.values(), str(annotations))


# ===================================================================== WebVid, CC3M
class WebVid(MediaTextDataset):
    """WebVid: CSV ``videoid,name,page_dir,duration,contentUrl``; videos at
    ``video_root/page_dir/videoid.mp4``; ``name`` is the caption."""

    name = "webvid"

    def __init__(
        self, csv_path: str | os.PathLike, video_root: str | os.PathLike, **kwargs: Any
    ) -> None:
        csv_path = _need_file(
            Path(csv_path), "csv_path", "pass WebVid's results CSV (videoid,name,page_dir,...)"
        )
        _need_dir(Path(video_root), "video_root", "pass the folder holding page_dir/videoid.mp4")
        super().__init__([], video_root, **kwargs)
        entries = []
        with open(csv_path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"videoid", "name", "page_dir"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(
                    f"csv_path={str(csv_path)!r} lacks columns {sorted(missing)}; WebVid's CSV "
                    "has videoid,name,page_dir,duration,contentUrl"
                )
            for row in reader:
                media = f"{row['page_dir']}/{row['videoid']}.mp4"
                entries.append(Entry(media, _clean_captions(row["name"]), row["videoid"]))
        self.entries = self._filter_captionless(entries, str(csv_path))


class CC3M(MediaTextDataset):
    """Conceptual Captions 3M images downloaded by img2dataset, indexed from one annotation file.

    The index comes from ``annotations`` alone: no folder is listed and no image, caption or
    metadata file is opened while the data set is built, so start-up does not grow with the
    number of files. The rows are held as arrays (:class:`~perceiver_vl.data.annotation_index.
    EntryTable`), parsed with numpy (docs/data.md gives the time for 3 million rows), and with
    ``index_cache`` kept on disk for the other processes. An image that is absent (a
    failed download, a wrong ``image_root``) is a skipped, counted ``missing`` sample when it is
    loaded, as in every reader.

    Args:
        annotations: either

            * the ``caption<TAB>url`` TSV given to img2dataset (CC3M's
              ``Train_GCC-training.tsv``; a first line ``caption<TAB>url`` (or ``url<TAB>caption``)
              is read as the header img2dataset needs, otherwise the caption is column 1). The
              image of data row ``i`` (0-based, header excluded) is where img2dataset
              ``--output_format files`` writes it: shard ``s = i // samples_per_shard``, key
              ``f"{s:0{shard_digits}d}{i % samples_per_shard:0{d}d}"`` with ``d`` the digits of
              ``samples_per_shard - 1``, file ``image_root/<shard>/<key><image_extension>``
              (``00000/000000000.jpg`` for the first row with img2dataset's defaults);
            * or a JSON-lines manifest, one ``{"image": "00000/000000000.jpg", "caption": ...}``
              per line (paths relative to ``image_root``), e.g. only the images that downloaded.

        image_root: img2dataset's ``--output_folder``.
        samples_per_shard: img2dataset's ``--number_sample_per_shard`` (default 10000).
        shard_digits: digits of the shard folder names (img2dataset writes 5: ``00000``).
        image_extension: extension of the written images (``.jpg`` unless re-encoded).
        index_cache: a folder where the index is kept for the next process reading the same
            annotation file (None = build it in every process); the data module passes
            ``<run>/index_cache``.
        **kwargs: see `MediaTextDataset`.
    """

    name = "cc3m"

    def __init__(
        self,
        annotations: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        samples_per_shard: int = 10000,
        shard_digits: int = 5,
        image_extension: str = ".jpg",
        index_cache: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        for argument, value in (
            ("samples_per_shard", samples_per_shard),
            ("shard_digits", shard_digits),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument}={value!r} must be a positive int (img2dataset's)")
        if not (isinstance(image_extension, str) and image_extension.startswith(".")):
            raise ValueError(
                f"image_extension={image_extension!r} must be an extension with its dot, "
                "e.g. '.jpg'"
            )
        path = _need_file(
            Path(annotations),
            "annotations",
            "pass the caption<TAB>url TSV given to img2dataset or a .jsonl manifest",
        )
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            super().__init__([], image_root, **kwargs)
            manifest = CaptionDataset(
                path, image_root, tracker=self.tracker, name=self.name, index_cache=index_cache
            )
            self.entries = manifest.entries
        elif suffix == ".tsv":
            super().__init__([], image_root, **kwargs)
            keys = Img2datasetKeys(samples_per_shard, shard_digits, image_extension)
            built, _ = cached_index(
                path,
                "img2dataset-tsv",
                {"samples_per_shard": samples_per_shard, "shard_digits": shard_digits},
                lambda: read_img2dataset_tsv(path, keys),
                index_cache,
                key_format=keys,
            )
            self._use_index(built)
        else:
            raise ValueError(
                f"annotations={str(path)!r} has extension {suffix!r}; pass the caption<TAB>url "
                ".tsv given to img2dataset or a .jsonl manifest"
            )


# ===================================================================== MSR-VTT, DiDeMo
class MSRVTTRetrieval(MediaTextDataset):
    """MSR-VTT text-video retrieval with the standard splits.

    Layout under ``root``: ``annotations/MSRVTT_data.json`` (the official annotations, 20
    captions per video), ``annotations/MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv`` (column
    ``video_id``), ``annotations/MSRVTT_JSFUSION_test.csv`` (the 1k-A test: ``video_id``,
    ``sentence``), and ``videos/videoN.mp4``.

    Args:
        root: the MSR-VTT folder.
        split: "train", "val" or "test".
        variant: "9k" (default; test = 1k-A, one caption per video), "7k" (test = 1k-A) or
            "full" (official 6,513 / 497 / 2,990 split, 20 captions per video). 9k / 7k have no
            validation split: the customary "val" is the 1k-A test set, which would make model
            selection read the reported test split, so ``split="val"`` is refused for them;
            carve a validation split from training (``holdout:`` in a data spec).
        video_root: video folder (default ``root/videos``).
        pairs: one item per (video, caption) pair. Default: on for a training split read for
            training (``train=True``), so every epoch sees every caption of every video, not
            one random caption per video; off otherwise (one item per video).
    """

    name = "msrvtt"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        variant: str = "9k",
        video_root: str | os.PathLike | None = None,
        pairs: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} must be 'train', 'val' or 'test'")
        if variant not in ("9k", "7k", "full"):
            raise ValueError(f"variant={variant!r} must be '9k', '7k' or 'full'")
        if split == "val" and variant != "full":
            raise ValueError(
                f"split='val' with variant={variant!r}: MSR-VTT {variant} has no validation "
                "split (the customary one is the 1k-A test set, a reported split); validate on "
                "videos held out of training (a data spec with split: train and holdout: "
                "{size: 500}, see docs/reproducing.md) or use variant='full' (official val)"
            )
        kwargs["pairs"] = (
            (split == "train" and bool(kwargs.get("train"))) if pairs is None else pairs
        )
        root = Path(root)
        ann = root / "annotations"
        kwargs.setdefault("name", f"msrvtt-{variant}-{split}")
        super().__init__([], Path(video_root) if video_root else root / "videos", **kwargs)
        data_path = _need_file(
            ann / "MSRVTT_data.json", "root", "put MSRVTT_data.json under root/annotations/"
        )
        data = _load_json(data_path, "root")
        captions: dict[str, list[str]] = {}
        for sentence in data.get("sentences", []):
            captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
        if variant == "full":
            wanted = {"train": "train", "val": "validate", "test": "test"}[split]
            ids = [v["video_id"] for v in data.get("videos", []) if v.get("split") == wanted]
            entries = [Entry(f"{i}.mp4", _clean_captions(captions.get(i)), i) for i in ids]
        elif split == "train":
            csv_path = _need_file(
                ann / f"MSRVTT_train.{variant}.csv",
                "root",
                f"put MSRVTT_train.{variant}.csv (column video_id) under root/annotations/",
            )
            with open(csv_path, encoding="utf-8", newline="") as handle:
                ids = [row["video_id"] for row in csv.DictReader(handle)]
            entries = [Entry(f"{i}.mp4", _clean_captions(captions.get(i)), i) for i in ids]
        else:
            csv_path = _need_file(
                ann / "MSRVTT_JSFUSION_test.csv",
                "root",
                "put MSRVTT_JSFUSION_test.csv (1k-A test: video_id, sentence) under "
                "root/annotations/",
            )
            with open(csv_path, encoding="utf-8", newline="") as handle:
                entries = [
                    Entry(
                        f"{row['video_id']}.mp4", _clean_captions(row["sentence"]), row["video_id"]
                    )
                    for row in csv.DictReader(handle)
                ]
        self.entries = self._filter_captionless(entries, str(data_path))


def _didemo_time(times: Any) -> tuple[float, float]:
    """Sort key of a DiDeMo moment: the annotators' mean (start, end) segment; a moment without
    readable times sorts after the timed ones (then by file position)."""
    try:
        pairs = [(float(t[0]), float(t[1])) for t in times]
    except (TypeError, ValueError, IndexError):
        return (float("inf"), float("inf"))
    if not pairs:
        return (float("inf"), float("inf"))
    return (sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs))


class DiDeMo(MediaTextDataset):
    """DiDeMo paragraph-to-video retrieval: all sentences of a video joined into one caption,
    in time order (each moment's ``times`` are the annotators' 5-second segment ranges; moments
    are ordered by their mean start, then mean end, then file position).

    Layout: ``root/annotations/{train,val,test}_data.json`` (lists of ``{"video",
    "description", ...}``, the files released with DiDeMo) and ``root/videos/<video>``; videos
    converted to another container are read with ``media_extension=".mp4"``.
    """

    name = "didemo"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        video_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} must be 'train', 'val' or 'test'")
        root = Path(root)
        kwargs.setdefault("name", f"didemo-{split}")
        super().__init__([], Path(video_root) if video_root else root / "videos", **kwargs)
        path = _need_file(
            root / "annotations" / f"{split}_data.json",
            "root",
            f"put DiDeMo's {split}_data.json under root/annotations/",
        )
        # (time key, file position, sentences) per video: paragraphs read in time order
        moments: OrderedDict[str, list[tuple[tuple[float, float], int, list[str]]]] = OrderedDict()
        for position, row in enumerate(_load_json(path, "root")):
            if not isinstance(row, dict) or "video" not in row:
                raise ValueError(f"root: {str(path)!r} has an entry without 'video': {row!r}")
            moments.setdefault(row["video"], []).append(
                (_didemo_time(row.get("times")), position, _clean_captions(row.get("description")))
            )
        entries = []
        for video, rows in moments.items():
            parts = [p for _, _, sentences in sorted(rows, key=lambda r: r[:2]) for p in sentences]
            entries.append(Entry(video, [" ".join(parts)] if parts else [], Path(video).stem))
        self.entries = self._filter_captionless(entries, str(path))


# ===================================================================== COCO / Flickr30k
class KarpathyCaptions(MediaTextDataset):
    """COCO or Flickr30k captions with the Karpathy split (``dataset_coco.json`` /
    ``dataset_flickr30k.json``); images at ``image_root/filepath/filename`` (COCO) or
    ``image_root/filename`` (Flickr30k). ``split="train"`` includes ``restval`` by default."""

    name = "karpathy"

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str = "train",
        include_restval: bool = True,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} must be 'train', 'val' or 'test'")
        json_path = _need_file(
            Path(json_path), "json_path", "pass dataset_coco.json or dataset_flickr30k.json"
        )
        kwargs.setdefault("name", f"{json_path.stem}-{split}")
        super().__init__([], image_root, **kwargs)
        wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
        entries = []
        for image in _load_json(json_path, "json_path").get("images", []):
            if image.get("split") not in wanted:
                continue
            media = str(Path(image.get("filepath", "")) / image["filename"])
            captions = _clean_captions([s.get("raw") for s in image.get("sentences", [])])
            image_id = image.get("cocoid", image.get("imgid", Path(media).stem))
            entries.append(Entry(media, captions, str(image_id)))
        self.entries = self._filter_captionless(entries, str(json_path))


# ===================================================================== question answering
_CONTRACTIONS = {
    "dont": "don't",
    "doesnt": "doesn't",
    "isnt": "isn't",
    "arent": "aren't",
    "cant": "can't",
    "wont": "won't",
    "im": "i'm",
    "ive": "i've",
    "whats": "what's",
}
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:]")


def normalize_answer(answer: str) -> str:
    """VQA-style answer normalisation: lower case, punctuation, number words, articles."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = _PUNCT.sub(" ", text)
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(matches: int, annotators: int = 10) -> float:
    """The VQA accuracy of an answer given by ``matches`` of ``annotators`` people: min(1, n/3)
    averaged over every leave-one-annotator-out subset (1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1)."""
    if annotators <= 1:
        return float(min(1.0, matches))
    with_match = matches * min(1.0, (matches - 1) / 3)
    without = (annotators - matches) * min(1.0, matches / 3)
    return (with_match + without) / annotators


class AnswerVocab:
    """The K most frequent answers, as a classification vocabulary.

    Args:
        answers: answers in index order.
    """

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, answers: Iterable[str], top_k: int) -> AnswerVocab:
        """Keep the ``top_k`` most frequent answers (ties broken alphabetically)."""
        if top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be >= 1 (e.g. 1500 for MSRVTT-QA)")
        counts = Counter(answers)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return cls([answer for answer, _ in ranked])

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerVocab:
        path = _need_file(Path(path), "path", "pass a JSON list of answers saved by save()")
        return cls(_load_json(path, "path"))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.answers, indent=0)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self._index

    def index(self, answer: str) -> int:
        """The answer's class, or -1 when it is not in the vocabulary."""
        return self._index.get(answer, -1)

    def scores(self, weights: dict[str, float]) -> torch.Tensor:
        """(K,) float target: ``weights[answer]`` at each known answer's class, 0 elsewhere."""
        target = torch.zeros(len(self.answers))
        for answer, weight in weights.items():
            position = self._index.get(answer)
            if position is not None:
                target[position] = weight
        return target


class MSRVTTQA(MediaTextDataset):
    """MSRVTT-QA open-ended video question answering.

    Layout: ``root/annotations/{train,val,test}_qa.json`` (lists of ``{"question", "answer",
    "video_id": int}``) and ``root/videos/video<video_id>.mp4``. The answer vocabulary is the
    ``top_k`` most frequent training answers (built from ``train_qa.json`` unless given).
    Training questions whose answer is outside the vocabulary are left out (and counted in the
    log); evaluation keeps them with ``answer_index = -1`` (always wrong).

    Items add ``question``, ``answer``, ``answer_index`` and ``answer_scores`` (K,) one-hot;
    ``text`` is the question.
    """

    name = "msrvtt-qa"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        vocab: AnswerVocab | None = None,
        top_k: int = 1500,
        video_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} must be 'train', 'val' or 'test'")
        root = Path(root)
        kwargs.setdefault("name", f"msrvtt-qa-{split}")
        super().__init__([], Path(video_root) if video_root else root / "videos", **kwargs)

        def read(name: str) -> list[dict[str, Any]]:
            path = _need_file(
                root / "annotations" / f"{name}_qa.json",
                "root",
                f"put MSRVTT-QA's {name}_qa.json under root/annotations/",
            )
            return _load_json(path, "root")

        rows = read(split)
        if vocab is None:
            train_rows = rows if split == "train" else read("train")
            vocab = AnswerVocab.build((str(r["answer"]) for r in train_rows), top_k)
        self.vocab = vocab
        entries, outside = [], 0
        for number, row in enumerate(rows):
            answer = str(row["answer"])
            if self.train and answer not in vocab:
                outside += 1
                continue
            video = f"video{row['video_id']}"
            question = " ".join(str(row["question"]).split())
            entries.append(
                Entry(
                    f"{video}.mp4",
                    [question] if question else [],
                    video,
                    {"question": question, "answer": answer, "question_id": row.get("id", number)},
                )
            )
        if outside:
            logger.info(
                "%s: left out %d questions whose answer is outside the top-%d",
                self.name,
                outside,
                len(vocab),
            )
        self.entries = self._filter_captionless(entries, f"{root}/annotations/{split}_qa.json")

    def extra_fields(self, entry: Entry) -> dict[str, Any]:
        answer = entry.extra["answer"]
        return {
            **entry.extra,
            "answer_index": self.vocab.index(answer),
            "answer_scores": self.vocab.scores({answer: 1.0}),
        }


class VQAv2(MediaTextDataset):
    """VQAv2-style question answering on images, with VQA soft scores.

    Args:
        questions: ``v2_OpenEnded_mscoco_<subtype>_questions.json``.
        annotations: ``v2_mscoco_<subtype>_annotations.json`` (None for the test split).
        image_root: folder of ``COCO_<subtype>_<image_id:012d>.jpg`` (``image_pattern``).
        vocab: answer vocabulary; by default built from ``annotations`` (the top ``top_k``
            normalised ``multiple_choice_answer``s, 3,129 as usual).
        image_pattern: file name of an image from ``subtype`` and ``image_id``.

    Items add ``question``, ``question_id``, ``answers`` (normalised, with repeats),
    ``answer_scores`` (K,) with the VQA soft score of every answer given.
    """

    name = "vqav2"

    def __init__(
        self,
        questions: str | os.PathLike,
        annotations: str | os.PathLike | None,
        image_root: str | os.PathLike,
        vocab: AnswerVocab | None = None,
        top_k: int = 3129,
        image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg",
        **kwargs: Any,
    ) -> None:
        questions = _need_file(Path(questions), "questions", "pass the VQA questions JSON")
        kwargs.setdefault("name", f"vqa:{questions.stem}")
        super().__init__([], image_root, **kwargs)
        q_data = _load_json(questions, "questions")
        subtype = q_data.get("data_subtype", "")
        answers_by_qid: dict[int, list[str]] = {}
        common: list[str] = []
        if annotations is not None:
            annotations = _need_file(
                Path(annotations), "annotations", "pass the VQA annotations JSON (or None)"
            )
            for ann in _load_json(annotations, "annotations").get("annotations", []):
                answers_by_qid[ann["question_id"]] = [
                    normalize_answer(a["answer"]) for a in ann.get("answers", [])
                ]
                common.append(normalize_answer(ann.get("multiple_choice_answer", "")))
        if vocab is None:
            if not common:
                raise ValueError(
                    "vocab=None needs annotations= to build the answer vocabulary; pass the "
                    "training vocabulary (AnswerVocab.load(...)) for the test split"
                )
            vocab = AnswerVocab.build(common, top_k)
        self.vocab = vocab
        entries = []
        for q in q_data.get("questions", []):
            media = image_pattern.format(subtype=subtype, image_id=int(q["image_id"]))
            question = " ".join(str(q["question"]).split())
            extra = {"question": question, "question_id": int(q["question_id"])}
            extra["answers"] = answers_by_qid.get(int(q["question_id"]), [])
            entries.append(Entry(media, [question] if question else [], str(q["image_id"]), extra))
        self.entries = self._filter_captionless(entries, str(questions))

    def extra_fields(self, entry: Entry) -> dict[str, Any]:
        answers = entry.extra["answers"]
        counts = Counter(answers)
        weights = {a: vqa_score(n, max(len(answers), 1)) for a, n in counts.items()}
        return {**entry.extra, "answer_scores": self.vocab.scores(weights)}
