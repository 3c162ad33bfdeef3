"""Inputs of the index: which videos, how they are decoded, how queries are tokenised.

Decoding and tokenisation belong to :mod:`perceiver_vl.data`; this module only finds the videos
to index and adapts the data package's functions. Callers may pass their own callables with the
same signatures instead.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import av.error
from torch import Tensor

from perceiver_vl.data import MediaError, Tokenizer, load_video

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif")
ANNOTATION_EXTENSIONS = (".jsonl", ".json", ".csv")


class TextTokenizer(Protocol):
    """``texts -> (ids (B, L) long, mask (B, L) bool)``, e.g. :class:`perceiver_vl.data.Tokenizer`."""

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]: ...


#: ``(path, num_frames, size) -> (video (T, 3, H, W) in [-1, 1], frame_mask (T,) bool)``;
#: raises on an unreadable file (see :func:`media_errors`).
VideoLoader = Callable[[Path, int, int], tuple[Tensor, Tensor]]


#: What :func:`default_tokenizer` tokenises with (reported by the benchmarks).
DEFAULT_TOKENIZER_NAME = "bert-base-uncased"


def default_tokenizer(max_length: int) -> TextTokenizer:
    """The data package's BERT-uncased tokenizer, padded/truncated to ``max_length``."""
    return Tokenizer.default(max_length=max_length)


def default_video_loader() -> VideoLoader:
    """The data package's evaluation-mode video decoder (deterministic frame sampling)."""

    def load(path: Path, num_frames: int, size: int) -> tuple[Tensor, Tensor]:
        return load_video(path, num_frames, size, train=False)

    return load


def media_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this one video cannot be decoded": it is skipped and reported.

    The data package's ``MediaError``, and the OS / decoder errors a caller's own loader may
    raise.
    """
    return (MediaError, OSError, ValueError, av.error.FFmpegError)


@dataclass
class VideoSource:
    """Videos to index: absolute paths, the root they are named relative to, optional captions."""

    root: Path
    paths: list[Path]
    captions: dict[Path, list[str]] = field(default_factory=dict)


def _read_annotation_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {number} is not JSON: {err}") from err
        return records
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("annotations", data.get("data"))
        if not isinstance(data, list):
            raise ValueError(
                f"{str(path)!r} must hold a JSON list of {{'video', 'caption'}} records"
            )
        return data
    return list(csv.DictReader(text.splitlines()))


def resolve_videos(
    source: str | Path | Sequence[str | Path], root: str | Path | None = None
) -> VideoSource:
    """Find the videos to index.

    Args:
        source: a directory (searched recursively for video files), an annotations file
            (``.jsonl`` / ``.json`` / ``.csv`` records with a ``video`` field, relative to the
            file's directory, and an optional ``caption``), or a list of video paths.
        root: what stored paths are relative to; default: the directory, the annotation file's
            directory, or the common parent of the listed paths.
    """
    captions: dict[Path, list[str]] = {}
    if isinstance(source, (str, Path)):
        source = Path(source).expanduser()
        if not source.exists():
            raise FileNotFoundError(
                f"videos={str(source)!r} does not exist; pass a directory of videos or an "
                "annotations file (.jsonl / .json / .csv with a 'video' field)"
            )
        if source.is_dir():
            base = source.resolve()
            paths = sorted(
                p.resolve()
                for p in base.rglob("*")
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
            )
            if not paths:
                raise ValueError(
                    f"videos={str(source)!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)})"
                )
        elif source.suffix.lower() in ANNOTATION_EXTENSIONS:
            base = source.resolve().parent
            records = _read_annotation_records(source)
            seen: dict[Path, None] = {}
            for number, record in enumerate(records, 1):
                name = record.get("video") if isinstance(record, dict) else None
                if not name:
                    raise ValueError(
                        f"{str(source)!r} record {number} has no 'video' field: {record!r}"
                    )
                path = (base / str(name)).resolve()
                seen.setdefault(path, None)
                caption = record.get("caption")
                if caption:
                    captions.setdefault(path, []).append(str(caption))
            paths = list(seen)
            if not paths:
                raise ValueError(f"annotations {str(source)!r} list no videos")
        elif source.suffix.lower() in VIDEO_EXTENSIONS:
            base = source.resolve().parent
            paths = [source.resolve()]
        else:
            raise ValueError(
                f"videos={str(source)!r} is neither a directory, a video, nor an annotations "
                f"file ({', '.join(ANNOTATION_EXTENSIONS)})"
            )
    else:
        paths = [Path(p).expanduser().resolve() for p in source]
        if not paths:
            raise ValueError("videos is an empty list; pass at least one video path")
        base = Path(_common_parent(paths))
    return VideoSource(Path(root).resolve() if root is not None else base, paths, captions)


def _common_parent(paths: Sequence[Path]) -> str:
    import os.path

    parents = [str(p.parent) for p in paths]
    return os.path.commonpath(parents)
