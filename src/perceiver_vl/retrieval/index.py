"""The retrieval index: encode each video once, answer text queries by shortlist + re-rank.

Search modes (scores are (text, video) pairs; higher is better):

| mode     | what ranks the videos                                                  | cost per query  |
|----------|------------------------------------------------------------------------|-----------------|
| multi    | dot product of the multi-stream embeddings (cosine similarity)        | one mat-vec     |
| mixed    | the mixed-stream matching logit of every indexed video (exact, slow)  | V decoder calls |
| rerank   | multi-stream shortlist of ``shortlist`` videos, re-ranked by mixed    | S decoder calls |

``rerank`` with a shortlist covering the whole index is exactly ``mixed``.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from perceiver_vl.fileio import atomic_write_bytes
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import LATENT_MODES, StreamMode, stream_mode

from . import ann, media, storage
from .rerank import attention_summary, mixed_scores_from_summaries
from .storage import CorruptIndexError, ModelMismatchError

# the stream modes a search can use: those that score from the stored latents
SEARCH_MODES: tuple[StreamMode, ...] = LATENT_MODES
DEFAULT_SHORTLIST = 100
#: Shortlist search: ``exact`` (torch mat-vec), ``faiss`` (faiss flat, exact), ``ann`` (product-
#: quantised codes + exact re-score, see :mod:`perceiver_vl.retrieval.ann`), ``auto`` (``ann`` from
#: :data:`~perceiver_vl.retrieval.ann.ANN_MIN_VIDEOS` videos when faiss is installed, else exact).
BACKENDS: tuple[str, ...] = ("auto", "exact", "faiss", "ann")
ANN_PREFIX = "ann-"
ANN_SUFFIX = ".faiss"


# ----------------------------------------------------------------------------------------------
# Model fingerprint
# ----------------------------------------------------------------------------------------------
def weights_sha256(model: PerceiverVL) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: PerceiverVL) -> dict[str, Any]:
    """What identifies a model for an index: its config and a hash of its weights."""
    return {"config": model.config.to_dict(), "weights_sha256": weights_sha256(model)}


def _describe_mismatch(recorded: dict[str, Any], actual: dict[str, Any]) -> str:
    old, new = recorded.get("config", {}), actual["config"]
    diffs = [
        f"{key}: index {old.get(key)!r} vs model {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if diffs:
        return "config differs (" + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "") + ")"
    return (
        f"same config, different weights (index {str(recorded.get('weights_sha256'))[:12]}..., "
        f"model {actual['weights_sha256'][:12]}...)"
    )


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class SearchHit:
    """One ranked video for one query.

    Attributes:
        rank: 1 = best.
        score: the score that ranked the video (mixed-stream logit for ``mixed``/``rerank``,
            cosine similarity for ``multi``).
        video: the path as stored in the index (relative to the index's video root when inside it).
        path: the absolute path of the video file.
        multi_score: the multi-stream cosine similarity (None in ``mixed`` mode).
        mixed_score: the mixed-stream matching logit (None in ``multi`` mode).
        position: the video's position in the index (its row in :attr:`RetrievalIndex.videos`).
    """

    rank: int
    score: float
    video: str
    path: str
    multi_score: float | None
    mixed_score: float | None
    position: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AddReport:
    """What one :meth:`RetrievalIndex.add` did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, reason)

    def summary(self) -> str:
        text = (
            f"{len(self.added)} added, {len(self.updated)} re-encoded (changed), "
            f"{len(self.unchanged)} unchanged (skipped), {len(self.failed)} unreadable"
        )
        for video, reason in self.failed[:10]:
            text += f"\n  unreadable: {video}: {reason}"
        if len(self.failed) > 10:
            text += f"\n  ... and {len(self.failed) - 10} more"
        return text


@dataclass
class _Pending:
    arrays: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {name: [] for name in storage.SHARD_TENSORS}
    )
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


def _file_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _probe(path: Path) -> dict[str, Any]:
    """Duration (s) and frame count from the container header; None where unknown."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            return {"duration": duration, "frame_count": int(stream.frames) or None}
    except Exception:  # noqa: BLE001 - metadata is best effort; decoding errors surface later
        return {"duration": None, "frame_count": None}


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError("texts is empty: pass a query string or a non-empty list of strings")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise ValueError(f"query {i} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(
                f"query {i} is empty ({text!r}); pass some words, e.g. 'a red circle moves left'"
            )
    return items


# ----------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------
class RetrievalIndex:
    """A directory of per-video latents + multi-stream embeddings, searched by text.

    Build with :meth:`build`, reopen with :meth:`open`, grow with :meth:`add`, query with
    :meth:`search`. The index belongs to one model (recorded by fingerprint); opening it with
    another model raises :class:`ModelMismatchError`.

    Example:
        >>> index = RetrievalIndex.build("my.index", "runs/model", "data/videos")
        >>> hits = index.search("a red circle moves left", k=5)
        >>> [(h.rank, h.video, round(h.score, 2)) for h in hits]
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        model: PerceiverVL,
        *,
        tokenizer: media.TextTokenizer | None = None,
        video_loader: media.VideoLoader | None = None,
        verify: bool = True,
        backend: str = "auto",
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        #: True when opened for search only: :meth:`add` and :meth:`add_latents` refuse to write.
        self.read_only = read_only
        self.manifest = manifest
        self.model = model.eval()
        self._tokenizer = tokenizer
        self._video_loader = video_loader
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        #: The report of the latest :meth:`add` on this object (None before any).
        self.last_report: AddReport | None = None
        self._load(verify=verify)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        path: str | Path,
        model: PerceiverVL | str | Path,
        videos: str | Path | Sequence[str | Path],
        *,
        num_frames: int | None = None,
        image_size: int | None = None,
        batch_size: int = 8,
        shard_size: int = 1024,
        tokenizer: media.TextTokenizer | None = None,
        video_loader: media.VideoLoader | None = None,
        progress: bool = True,
        verify: bool = True,
    ) -> RetrievalIndex:
        """Create the index at ``path`` (or reopen it) and add ``videos``.

        Args:
            path: the index directory; created when missing. When it already holds an index, that
                index is opened (the model must match) and only new or changed videos are encoded.
            model: a :class:`PerceiverVL` or a directory written by ``save_pretrained``; a
                directory is recorded in the index so that :meth:`open` can reload it.
            videos: a directory of videos, an annotations file or a list of paths
                (see :func:`perceiver_vl.retrieval.media.resolve_videos`).
            num_frames: frames sampled per video; default ``min(8, config.max_frames)``.
            image_size: frame side; default ``config.image_size``.
            batch_size: videos encoded per forward pass.
            shard_size: videos per shard file; each finished shard is committed, so a killed run
                keeps every complete shard.
            tokenizer, video_loader: override the data package's defaults (same signatures).
            progress: show a progress bar.
            verify: check the SHA-256 of every shard when reopening an existing index.
        """
        path = Path(path)
        model_obj, model_path = _resolve_model(model)
        if (path / storage.MANIFEST_NAME).exists():
            index = cls.open(
                path,
                model_obj,
                tokenizer=tokenizer,
                video_loader=video_loader,
                verify=verify,
            )
            pre = index.manifest["preprocessing"]
            for name, asked in (("num_frames", num_frames), ("image_size", image_size)):
                if asked is not None and asked != pre[name]:
                    raise ValueError(
                        f"{name}={asked} differs from the existing index {str(path)!r}, built "
                        f"with {name}={pre[name]}; an index keeps one preprocessing. Leave "
                        f"{name} out to add to it, or build a new index elsewhere"
                    )
        else:
            index = cls.create(
                path,
                model_obj,
                num_frames=num_frames,
                image_size=image_size,
                tokenizer=tokenizer,
                video_loader=video_loader,
            )
            index.manifest["model"]["path"] = model_path
            with storage.writer_lock(path):
                storage.write_manifest(path, index.manifest)
        index.add(videos, batch_size=batch_size, shard_size=shard_size, progress=progress)
        return index

    @classmethod
    def create(
        cls,
        path: str | Path,
        model: PerceiverVL | str | Path,
        *,
        num_frames: int | None = None,
        image_size: int | None = None,
        tokenizer: media.TextTokenizer | None = None,
        video_loader: media.VideoLoader | None = None,
    ) -> RetrievalIndex:
        """Create an empty index at ``path`` (a new or empty directory) for ``model``.

        See :meth:`build` for the arguments; :meth:`build` = :meth:`create` + :meth:`add`.
        """
        path = Path(path)
        model_obj, model_path = _resolve_model(model)
        if path.exists() and not path.is_dir():
            raise ValueError(f"index path {str(path)!r} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        if any(p.name != storage.LOCK_NAME for p in path.iterdir()):
            raise ValueError(
                f"index path {str(path)!r} is a non-empty directory without "
                f"{storage.MANIFEST_NAME}; choose an empty or new directory for the index"
            )
        cfg = model_obj.config
        frames = num_frames if num_frames is not None else min(8, cfg.max_frames)
        if not 1 <= frames <= cfg.max_frames:
            raise ValueError(
                f"num_frames={frames} must lie in [1, config.max_frames={cfg.max_frames}]"
            )
        size = image_size if image_size is not None else cfg.image_size
        if size <= 0 or size % cfg.patch_size:
            raise ValueError(
                f"image_size={size} must be a positive multiple of patch_size={cfg.patch_size}"
            )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "format": storage.FORMAT_NAME,
            "version": storage.FORMAT_VERSION,
            "created": now,
            "updated": now,
            "model": {**model_fingerprint(model_obj), "path": model_path},
            "preprocessing": {
                "num_frames": frames,
                "image_size": size,
                "max_text_length": cfg.max_text_length,
                "latents_dtype": "float16",
            },
            "root": None,
            "shards": [],
            "videos": [],
        }
        with storage.writer_lock(path):
            storage.write_manifest(path, manifest)
        return cls(path, manifest, model_obj, tokenizer=tokenizer, video_loader=video_loader)

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: PerceiverVL | str | Path | None = None,
        *,
        tokenizer: media.TextTokenizer | None = None,
        video_loader: media.VideoLoader | None = None,
        verify: bool = True,
        backend: str = "auto",
        read_only: bool = False,
    ) -> RetrievalIndex:
        """Open an index for search (and :meth:`add`).

        Args:
            path: the index directory.
            model: the model it was built with (object or directory); default: the directory
                recorded at build time.
            verify: check every shard's SHA-256 against the manifest (reads every byte once).
            backend: shortlist search, one of :data:`BACKENDS`: ``"exact"`` (torch),
                ``"faiss"`` (faiss flat), ``"ann"`` (approximate, needs faiss) or ``"auto"``
                (``"ann"`` for large indexes when faiss is importable, else exact).
            read_only: open for search only (what a server does): nothing is ever written, and
                :meth:`add` / :meth:`add_latents` raise. Another process may still add videos;
                :meth:`refreshed` picks them up.

        Raises:
            FileNotFoundError: the index, its manifest, a shard or the recorded model is missing.
            CorruptIndexError: a file is unreadable or fails its checksum.
            ModelMismatchError: ``model`` is not the model the index was built with.
        """
        path = Path(path)
        manifest = storage.read_manifest(path)
        if model is None:
            recorded = manifest["model"].get("path")
            if not recorded:
                raise ValueError(
                    f"index {str(path)!r} was built from an in-memory model and records no model "
                    "directory; pass the model (RetrievalIndex.open(path, model) or --model DIR)"
                )
            if not Path(recorded).is_dir():
                raise FileNotFoundError(
                    f"the model directory recorded in index {str(path)!r} ({recorded!r}) no longer "
                    "exists; pass the model explicitly (--model DIR)"
                )
            model = recorded
        model_obj, _ = _resolve_model(model)
        actual = model_fingerprint(model_obj)
        if actual["weights_sha256"] != manifest["model"].get("weights_sha256") or actual[
            "config"
        ] != manifest["model"].get("config"):
            raise ModelMismatchError(
                f"the model does not match index {str(path)!r}: "
                f"{_describe_mismatch(manifest['model'], actual)}. Search with the model the index "
                f"was built with (recorded: {manifest['model'].get('path')!r}), or build a new "
                "index for this model with `perceiver-vl index --model DIR --videos ... --out NEW`"
            )
        return cls(
            path,
            manifest,
            model_obj,
            tokenizer=tokenizer,
            video_loader=video_loader,
            verify=verify,
            backend=backend,
            read_only=read_only,
        )

    def manifest_stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of the manifest on disk now; None when it cannot be read.

        Writers replace the manifest atomically and last, so a changed stamp means a complete new
        state of the index is ready to be opened (see :meth:`refreshed`).
        """
        try:
            stat = (self.path / storage.MANIFEST_NAME).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def refreshed(self, *, verify: bool = False) -> RetrievalIndex:
        """A new index object over the manifest on disk now, sharing this one's model and
        tokenizer (nothing is copied); this object is left untouched, so searches running on it
        finish on the state they started with.

        ``verify`` checks the shards' SHA-256 (default off: sizes are still checked).
        """
        manifest = storage.read_manifest(self.path)
        recorded = manifest["model"]
        if recorded.get("weights_sha256") != self.manifest["model"].get("weights_sha256") or (
            recorded.get("config") != self.manifest["model"].get("config")
        ):
            raise ModelMismatchError(
                f"index {str(self.path)!r} was rebuilt with another model "
                f"({_describe_mismatch(recorded, self.manifest['model'])}); restart the server "
                "with the new model"
            )
        return type(self)(
            self.path,
            manifest,
            self.model,
            tokenizer=self._tokenizer,
            video_loader=self._video_loader,
            verify=verify,
            backend=self.backend,
            read_only=self.read_only,
        )

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError(
                f"index {str(self.path)!r} was opened read-only (read_only=True); open it with "
                "RetrievalIndex.open(path) to add videos"
            )

    # ------------------------------------------------------------------ loading
    def _load(self, verify: bool) -> None:
        """Map every shard and gather the live rows' embeddings (in video order)."""
        self._shards: dict[str, storage.Shard] = {}
        cfg = self.model.config
        for info in self.manifest["shards"]:
            name = info["file"]
            file = self.path / name
            if not file.is_file():
                raise FileNotFoundError(
                    f"shard {str(file)!r} listed in the manifest is missing; the index is "
                    "incomplete. Rebuild it (or restore the file from a backup)"
                )
            size = file.stat().st_size
            if size != info["bytes"]:
                raise CorruptIndexError(
                    f"shard {str(file)!r} has {size} bytes, the manifest records {info['bytes']}; "
                    "the file is truncated or was replaced. Rebuild the index"
                )
            if verify and storage.sha256_file(file) != info["sha256"]:
                raise CorruptIndexError(
                    f"shard {str(file)!r} fails its checksum (SHA-256 differs from the manifest); "
                    "the file is corrupted. Rebuild the index (or restore the file)"
                )
            shard = storage.open_shard(file)
            expected = {
                "latents": (cfg.num_latents, cfg.hidden_size),
                "embeddings": (cfg.contrastive_dim,),
                "attn_lse": (cfg.num_heads,),
                "attn_values": (cfg.num_heads, cfg.hidden_size // cfg.num_heads),
            }
            for tensor, shape in expected.items():
                got = getattr(shard, tensor).shape[1:]
                if tuple(got) != shape:
                    raise CorruptIndexError(
                        f"shard {str(file)!r} holds {tensor!r} rows of shape {tuple(got)}, the "
                        f"model makes {shape}; the shard does not belong to this index"
                    )
            self._shards[name] = shard
        videos = self.manifest["videos"]
        self._by_video = {entry["video"]: i for i, entry in enumerate(videos)}
        self._rows: list[tuple[str, int]] = []
        for entry in videos:
            shard = self._shards.get(entry["shard"])
            if shard is None or not 0 <= entry["row"] < shard.latents.shape[0]:
                raise CorruptIndexError(
                    f"manifest entry {entry['video']!r} points at {entry['shard']!r} row "
                    f"{entry['row']}, which does not exist; the index is corrupted"
                )
            self._rows.append((entry["shard"], entry["row"]))
        if videos:
            self._embeddings = torch.from_numpy(self._gather("embeddings", range(len(videos))))
        else:
            self._embeddings = torch.zeros(0, cfg.contrastive_dim)
        self._exclude_nonfinite_rows()
        self._faiss_index = None
        self._ann: ann.PQShortlist | None = None

    def _exclude_nonfinite_rows(self) -> None:
        """Rows holding NaN or inf (a damaged shard opened with ``verify=False``) never rank:
        their embeddings are zeroed for the shortlist and search drops them; a warning names
        them. A non-finite mixed-stream score found during a search is dropped there too."""
        bad = ~torch.isfinite(self._embeddings).all(dim=1)
        if len(self._rows):  # the small per-row summary; attn_values are checked per search
            lse = torch.from_numpy(self._gather("attn_lse", range(len(self._rows))))
            bad |= ~torch.isfinite(lse.float()).all(dim=1)
        self._excluded: set[int] = set(torch.nonzero(bad).flatten().tolist())
        if self._excluded:
            self._embeddings = self._embeddings.clone()
            self._embeddings[bad] = 0.0
            names = [self.manifest["videos"][i]["video"] for i in sorted(self._excluded)]
            warnings.warn(
                f"index {str(self.path)!r}: {len(names)} videos hold NaN/inf values and are "
                f"left out of every search: {names[:5]}; re-index them (perceiver-vl index)",
                stacklevel=3,
            )

    def _gather(self, field_name: str, positions: Sequence[int] | range) -> np.ndarray:
        """Rows ``positions`` of ``latents`` or ``embeddings`` (a copy, in the order given)."""
        positions = list(positions)
        first = next(iter(self._shards.values()))
        template = getattr(first, field_name)
        out = np.empty((len(positions), *template.shape[1:]), dtype=template.dtype)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for out_row, pos in enumerate(positions):
            shard, row = self._rows[pos]
            dst, src = by_shard.setdefault(shard, ([], []))
            dst.append(out_row)
            src.append(row)
        for shard, (dst, src) in by_shard.items():
            out[dst] = getattr(self._shards[shard], field_name)[src]
        return out

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        return len(self.manifest["videos"])

    @property
    def videos(self) -> list[dict[str, Any]]:
        """The manifest entries, one per indexed video, in index order."""
        return self.manifest["videos"]

    @property
    def root(self) -> Path | None:
        """The directory stored video paths are relative to."""
        root = self.manifest.get("root")
        return Path(root) if root else None

    def video_path(self, position: int) -> Path:
        """The absolute path of the video at ``position``."""
        name = Path(self.manifest["videos"][position]["video"])
        return name if name.is_absolute() or self.root is None else self.root / name

    def latents(self, positions: Sequence[int] | None = None) -> Tensor:
        """Stored latents (n, N, D) as float32 (all videos when ``positions`` is None)."""
        positions = range(len(self)) if positions is None else positions
        if len(self) == 0:
            cfg = self.model.config
            return torch.zeros(0, cfg.num_latents, cfg.hidden_size)
        return torch.from_numpy(self._gather("latents", positions)).float()

    @property
    def embeddings(self) -> Tensor:
        """Multi-stream embeddings (V, E) float32 of every video, in index order."""
        return self._embeddings

    # ------------------------------------------------------------------ encoding
    @property
    def tokenizer(self) -> media.TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = media.default_tokenizer(
                self.manifest["preprocessing"]["max_text_length"]
            )
        return self._tokenizer

    @property
    def video_loader(self) -> media.VideoLoader:
        if self._video_loader is None:
            self._video_loader = media.default_video_loader()
        return self._video_loader

    @torch.no_grad()
    def encode_texts(
        self, texts: str | Sequence[str], *, cross_attention_layers: Sequence[int] | None = None
    ) -> Tensor:
        """Text latents (Q, N, D) float32 for queries (one encoder pass).

        ``cross_attention_layers``: the cross-attention blocks the text encoder runs (indices into
        the schedule; default the model's inference choice). The videos keep the blocks they were
        indexed with.
        """
        items = _check_texts(texts)
        ids, mask = self.tokenizer(items)
        limit = self.model.config.max_text_length
        cut = set(getattr(self.tokenizer, "last_truncated", []))
        if ids.shape[1] > limit:
            cut |= set(torch.nonzero(mask[:, limit:].any(dim=1)).flatten().tolist())
            ids, mask = ids[:, :limit], mask[:, :limit]
        for position in sorted(cut):
            warnings.warn(
                f"query {position} ({items[position][:40]!r}...) is longer than the "
                f"{min(limit, ids.shape[1])} tokens the model reads; only its beginning is "
                "searched. Shorten the query",
                stacklevel=2,
            )
        return self.model.encode(
            text_ids=ids, text_mask=mask, cross_attention_layers=cross_attention_layers
        ).float()

    @torch.no_grad()
    def _encode_videos(self, videos: list[Tensor], masks: list[Tensor]) -> dict[str, np.ndarray]:
        """The shard arrays of a batch of decoded videos."""
        video = torch.stack(videos).float()
        mask = torch.stack(masks).bool()
        return self._shard_arrays(self.model.encode(video=video, video_mask=mask))

    @torch.no_grad()
    def _shard_arrays(self, latents: Tensor) -> dict[str, np.ndarray]:
        latents = latents.float()
        finite = torch.isfinite(latents).flatten(1).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(
                f"latents rows {rows[:10]} hold NaN or inf values; an index refuses them (they "
                "would rank first for every query). Check the inputs or the model that "
                "encoded them"
            )
        stored = latents.half()
        # The summary is taken of the stored (rounded) latents so that a re-rank equals the mixed
        # stream over exactly what the index holds.
        lse, values = attention_summary(self.model, stored.float())
        return {
            "latents": stored.numpy(),
            "embeddings": self.model.embed(latents, "visual").float().numpy(),
            "attn_lse": lse.numpy(),
            "attn_values": values.numpy(),
        }

    # ------------------------------------------------------------------ adding
    def add(
        self,
        videos: str | Path | Sequence[str | Path],
        *,
        batch_size: int = 8,
        shard_size: int = 1024,
        progress: bool = True,
    ) -> AddReport:
        """Encode and add the videos not yet indexed (unchanged ones are skipped).

        A video is unchanged when its size and mtime, or else its SHA-256, match the index.
        A changed video is re-encoded and its entry replaced. Unreadable videos are skipped and
        listed in the report. Every ``shard_size`` videos a shard is written and the manifest
        replaced (atomically); a killed run leaves the last committed index valid.
        """
        self._check_writable()
        if batch_size <= 0 or shard_size <= 0:
            raise ValueError(
                f"batch_size={batch_size} and shard_size={shard_size} must be positive"
            )
        source = media.resolve_videos(videos)
        report = AddReport()
        with storage.writer_lock(self.path):
            # Another writer may have committed since this index was opened.
            self.manifest = storage.read_manifest(self.path)
            if self.manifest.get("root") is None:
                self.manifest["root"] = str(source.root)
            root = Path(self.manifest["root"])
            known = {entry["video"]: entry for entry in self.manifest["videos"]}
            todo: list[tuple[Path, str, dict[str, Any]]] = []
            for file in source.paths:
                name = _stored_name(file, root)
                if not file.is_file():
                    report.failed.append((name, "file not found"))
                    continue
                stamp = _file_stamp(file)
                old = known.get(name)
                if old is not None:
                    if (old["size"], old["mtime_ns"]) == (stamp["size"], stamp["mtime_ns"]):
                        report.unchanged.append(name)
                        continue
                    digest = storage.sha256_file(file)
                    if digest == old.get("sha256"):
                        old.update(stamp)  # touched, not changed: keep the encoding
                        report.unchanged.append(name)
                        continue
                    stamp["sha256"] = digest
                todo.append((file, name, stamp))
            self._encode_and_commit(todo, source, known, report, batch_size, shard_size, progress)
            if not todo and report.unchanged:
                self._commit(None)  # refreshed stamps of touched files
            self._load(verify=False)
            if report.added or report.updated:
                self._maintain_ann(replaced=bool(report.updated))
        self.last_report = report
        return report

    def _encode_and_commit(
        self,
        todo: list[tuple[Path, str, dict[str, Any]]],
        source: media.VideoSource,
        known: dict[str, dict[str, Any]],
        report: AddReport,
        batch_size: int,
        shard_size: int,
        progress: bool,
    ) -> None:
        if not todo:
            return
        from tqdm.auto import tqdm

        pre = self.manifest["preprocessing"]
        frames, size = pre["num_frames"], pre["image_size"]
        loader = self.video_loader
        errors = media.media_errors()
        pending = _Pending()
        batch: list[tuple[Tensor, Tensor, dict[str, Any]]] = []

        def flush_batch() -> None:
            if not batch:
                return
            arrays = self._encode_videos([b[0] for b in batch], [b[1] for b in batch])
            for name, array in arrays.items():
                pending.arrays[name].append(array)
            pending.entries.extend(b[2] for b in batch)
            batch.clear()

        bar = tqdm(todo, desc="indexing videos", unit="video", disable=not progress)
        for file, name, stamp in bar:
            try:
                video, mask = loader(file, frames, size)
            except errors as err:
                report.failed.append((name, f"{type(err).__name__}: {err}"))
                continue
            if video.dim() != 4 or mask.dim() != 1 or mask.shape[0] != video.shape[0]:
                raise ValueError(
                    f"video_loader returned video {tuple(video.shape)} and mask "
                    f"{tuple(mask.shape)} for {str(file)!r}; expected (T, 3, H, W) and (T,)"
                )
            entry = {
                "video": name,
                **stamp,
                "sha256": stamp.get("sha256") or storage.sha256_file(file),
                "frames": int(mask.sum()),
                **_probe(file),
                "captions": source.captions.get(file, []),
            }
            (report.updated if name in known else report.added).append(name)
            batch.append((video, mask, entry))
            if len(batch) >= batch_size:
                flush_batch()
            if len(pending) + len(batch) >= shard_size:
                flush_batch()
                self._commit(pending)
                pending = _Pending()
        flush_batch()
        if len(pending):
            self._commit(pending)
        bar.close()

    @torch.no_grad()
    def add_latents(
        self,
        names: Sequence[str],
        latents: Tensor,
        *,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Add videos encoded elsewhere: ``latents`` (n, N, D) from ``model.encode(video=...)``.

        ``names`` are stored as the videos' paths (relative to the index root when it has one);
        an existing name is replaced. Written as one shard, committed atomically. No file stamps
        are recorded, so :meth:`add` on the same files re-encodes them.
        """
        self._check_writable()
        cfg = self.model.config
        if latents.dim() != 3 or tuple(latents.shape[1:]) != (cfg.num_latents, cfg.hidden_size):
            raise ValueError(
                f"latents must be (n, {cfg.num_latents}, {cfg.hidden_size}) for this model, got "
                f"{tuple(latents.shape)}"
            )
        if len(names) != latents.shape[0] or len(set(names)) != len(names):
            raise ValueError(
                f"names must be {latents.shape[0]} distinct strings (one per latents row), got "
                f"{len(names)} ({len(set(names))} distinct)"
            )
        if metadata is not None and len(metadata) != len(names):
            raise ValueError(f"metadata must have {len(names)} entries, got {len(metadata)}")
        pending = _Pending()
        for name, array in self._shard_arrays(latents).items():
            pending.arrays[name].append(array)
        pending.entries = [
            {"video": str(name), **(dict(metadata[i]) if metadata is not None else {})}
            for i, name in enumerate(names)
        ]
        with storage.writer_lock(self.path):
            self.manifest = storage.read_manifest(self.path)
            stored = {entry["video"] for entry in self.manifest["videos"]}
            replaced = any(str(name) in stored for name in names)
            self._commit(pending)
            self._load(verify=False)
            self._maintain_ann(replaced)

    def _commit(self, pending: _Pending | None) -> None:
        """Write ``pending`` as a new shard, then replace the manifest; drop unreferenced shards."""
        manifest = self.manifest
        if pending is not None and len(pending):
            arrays = {name: np.concatenate(parts) for name, parts in pending.arrays.items()}
            count = int(arrays["latents"].shape[0])
            name = (
                f"{storage.SHARD_PREFIX}{len(manifest['shards']):06d}-{secrets.token_hex(4)}"
                f"{storage.SHARD_SUFFIX}"
            )
            data = storage.shard_bytes(arrays, {"format": storage.FORMAT_NAME})
            atomic_write_bytes(self.path / name, data, make_parents=False)
            manifest["shards"].append(
                {
                    "file": name,
                    "count": count,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            positions = {entry["video"]: i for i, entry in enumerate(manifest["videos"])}
            for row, entry in enumerate(pending.entries):
                entry = {**entry, "shard": name, "row": row}
                if entry["video"] in positions:
                    manifest["videos"][positions[entry["video"]]] = entry
                else:
                    positions[entry["video"]] = len(manifest["videos"])
                    manifest["videos"].append(entry)
        live = {entry["shard"] for entry in manifest["videos"]}
        manifest["shards"] = [s for s in manifest["shards"] if s["file"] in live]
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        storage.write_manifest(self.path, manifest)
        # Only now, with the new manifest durable, may unreferenced shards (replaced rows, or
        # leftovers of a killed run) go.
        keep = {s["file"] for s in manifest["shards"]}
        for file in self.path.iterdir():
            is_shard = file.name.startswith(storage.SHARD_PREFIX) and file.name.endswith(
                storage.SHARD_SUFFIX
            )
            leftover_tmp = file.name.startswith(".") and file.name.endswith(".tmp")
            if (is_shard and file.name not in keep) or leftover_tmp:
                file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ search
    @overload
    def search(
        self,
        texts: str,
        k: int = 10,
        mode: StreamMode | str = StreamMode.RERANK,
        *,
        shortlist: int = ...,
        cross_attention_layers: Sequence[int] | None = ...,
    ) -> list[SearchHit]: ...

    @overload
    def search(
        self,
        texts: Sequence[str],
        k: int = 10,
        mode: StreamMode | str = StreamMode.RERANK,
        *,
        shortlist: int = ...,
        cross_attention_layers: Sequence[int] | None = ...,
    ) -> list[list[SearchHit]]: ...

    def search(
        self,
        texts: str | Sequence[str],
        k: int = 10,
        mode: StreamMode | str = StreamMode.RERANK,
        *,
        shortlist: int = DEFAULT_SHORTLIST,
        cross_attention_layers: Sequence[int] | None = None,
    ) -> list[SearchHit] | list[list[SearchHit]]:
        """Rank the indexed videos for each text query.

        Args:
            texts: one query (returns a list of hits) or several (returns a list per query).
            k: how many videos to return per query (fewer when the index is smaller).
            mode: ``"multi"`` (embedding dot product), ``"mixed"`` (mixed-stream logit of every
                video: exact and slow) or ``"rerank"`` (multi-stream shortlist, mixed re-rank).
            shortlist: candidates re-ranked in ``"rerank"`` mode (at least ``k`` are taken).
            cross_attention_layers: the cross-attention blocks the query encoder runs
                (see :meth:`encode_texts`).
        """
        single = isinstance(texts, str)
        items = _check_texts(texts)
        _check_search_arguments(k, mode, shortlist)
        if len(self) == 0:
            return [] if single else [[] for _ in items]
        text_latents = self.encode_texts(items, cross_attention_layers=cross_attention_layers)
        results = self.search_encoded(text_latents, k, mode, shortlist=shortlist)
        return results[0] if single else results

    def search_encoded(
        self,
        text_latents: Tensor,
        k: int = 10,
        mode: StreamMode | str = StreamMode.RERANK,
        *,
        shortlist: int = DEFAULT_SHORTLIST,
        candidates: tuple[Tensor, Tensor] | None = None,
    ) -> list[list[SearchHit]]:
        """:meth:`search` for queries already encoded by :meth:`encode_texts`: text latents
        (Q, N, D) -> one list of hits per query. Lets a caller encode many queries in one
        encoder pass (a server batching concurrent requests) and rank each with its own ``k``.

        ``candidates``: (scores, positions), each (Q, W), from :meth:`shortlist_many` for these
        queries, best first, with W at least the width this call needs (``k`` in ``multi`` mode,
        ``max(k, shortlist)`` in ``rerank``); computed here, for all queries at once, when None.
        """
        _check_search_arguments(k, mode, shortlist)
        if text_latents.dim() != 3:
            raise ValueError(
                f"text_latents must be (Q, N, D) from encode_texts, got {tuple(text_latents.shape)}"
            )
        count = text_latents.shape[0]
        if len(self) == 0:
            return [[] for _ in range(count)]
        if mode == StreamMode.MIXED:
            return [
                self._search_one(text_latents[i : i + 1], k, mode, shortlist) for i in range(count)
            ]
        width = min(len(self), k if mode == StreamMode.MULTI else max(k, shortlist))
        if candidates is None:
            with torch.no_grad():
                embeddings = self.model.embed(text_latents, "text").float()
            candidates = self.shortlist_many(embeddings, width)
        scores, positions = candidates
        if tuple(scores.shape) != tuple(positions.shape) or scores.shape[0] != count:
            raise ValueError(
                f"candidates must be two ({count}, W) tensors, got {tuple(scores.shape)} and "
                f"{tuple(positions.shape)}"
            )
        if positions.shape[1] < width:
            raise ValueError(
                f"candidates hold {positions.shape[1]} videos per query; this search needs {width}"
            )
        return [
            self._search_one(
                text_latents[i : i + 1],
                k,
                mode,
                shortlist,
                candidates=(scores[i, :width], positions[i, :width]),
            )
            for i in range(count)
        ]

    @torch.no_grad()
    def _search_one(
        self,
        text_latents: Tensor,
        k: int,
        mode: str,
        shortlist: int,
        candidates: tuple[Tensor, Tensor] | None = None,
    ) -> list[SearchHit]:
        excluded = self._excluded
        total = len(self) - len(excluded)
        k = min(k, total)
        if k <= 0:
            return []
        text_embedding = self.model.embed(text_latents, "text").float()  # (1, E)
        multi: Tensor | None = None
        if mode == StreamMode.MIXED:
            mixed = self.mixed_scores(text_latents)[0].nan_to_num(nan=-float("inf"))
            if excluded:
                mixed[list(excluded)] = -float("inf")
            scores, order = mixed.topk(k)
            positions = order.tolist()
            mixed_scores: list[float | None] = scores.tolist()
            multi_scores: list[float | None] = [None] * k
            ranked = mixed_scores
        else:
            width = k if mode == StreamMode.MULTI else min(total, max(k, shortlist))
            if candidates is None:
                candidates = self.shortlist(text_embedding, width + len(excluded))
            multi, found = candidates
            if excluded:  # rows of a damaged shard (opened unverified) are never results
                keep = [i for i, pos in enumerate(found.tolist()) if pos not in excluded][:width]
                multi, found = multi[keep], found[keep]
            positions = found.tolist()
            multi_scores = multi.tolist()
            if mode == StreamMode.MULTI:
                mixed_scores = [None] * k
                ranked = multi_scores
            else:
                mixed = self.mixed_scores(text_latents, positions)[0]
                scores, order = mixed.nan_to_num(nan=-float("inf")).topk(k)
                positions = [positions[i] for i in order.tolist()]
                multi_scores = [multi_scores[i] for i in order.tolist()]
                mixed_scores = scores.tolist()
                ranked = mixed_scores
        return [
            SearchHit(
                rank=rank + 1,
                score=float(ranked[rank]),  # type: ignore[arg-type]
                video=self.manifest["videos"][pos]["video"],
                path=str(self.video_path(pos)),
                multi_score=multi_scores[rank],
                mixed_score=mixed_scores[rank],
                position=pos,
            )
            for rank, pos in enumerate(positions[:k])
            # a damaged row whose summary is NaN: never a result
            if math.isfinite(float(ranked[rank]))  # type: ignore[arg-type]
        ]

    def shortlist_many(self, text_embeddings: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Top ``width`` videos by multi-stream score for each of Q query embeddings (Q, E) ->
        (scores (Q, width), positions (Q, width)), best first. One pass over the stored
        embeddings (or codes) serves all Q queries, which is what makes batching pay."""
        width = min(width, len(self))
        text_embeddings = text_embeddings.float()
        backend = self.shortlist_backend()
        if backend == "ann":
            return self._ann_shortlist().search_many(text_embeddings, width, self._embeddings)
        if backend == "faiss":
            scores, ids = self._faiss_flat().search(
                np.ascontiguousarray(text_embeddings.numpy(), dtype=np.float32), width
            )
            return torch.from_numpy(scores), torch.from_numpy(ids).long()
        return (text_embeddings @ self._embeddings.T).topk(width, dim=1)

    def _faiss_flat(self):
        if self._faiss_index is None:
            import faiss

            self._faiss_index = faiss.IndexFlatIP(self._embeddings.shape[1])
            self._faiss_index.add(np.ascontiguousarray(self._embeddings.numpy()))
        return self._faiss_index

    def shortlist(self, text_embedding: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Top ``width`` videos by multi-stream score for one query embedding (1, E) ->
        (scores (width,), positions (width,)), best first."""
        width = min(width, len(self))
        if self.shortlist_backend() == "ann":
            return self._ann_shortlist().search(text_embedding.float(), width, self._embeddings)
        if self._use_faiss():
            scores, ids = self._faiss_flat().search(
                np.ascontiguousarray(text_embedding.numpy(), dtype=np.float32), width
            )
            return torch.from_numpy(scores[0]), torch.from_numpy(ids[0]).long()
        scores = self._embeddings @ text_embedding[0]
        return scores.topk(width)

    def shortlist_backend(self) -> str:
        """The shortlist search in use now: ``"ann"``, ``"faiss"`` (flat) or ``"exact"``."""
        if self.backend == "ann":
            ann._faiss()  # raises ImportError naming the fix
            return "ann"
        if self.backend == "auto" and len(self) >= ann.ANN_MIN_VIDEOS and ann.faiss_available():
            return "ann"
        return "faiss" if self._use_faiss() else "exact"

    def prepare_shortlist(self) -> str:
        """Load (or build) what the shortlist search needs now rather than at the first query;
        returns :meth:`shortlist_backend`."""
        backend = self.shortlist_backend()
        if backend == "ann" and len(self):
            self._ann_shortlist()
        return backend

    def _ann_shortlist(self) -> ann.PQShortlist:
        """The approximate shortlist: the codes stored with the index (written by the last
        writer) extended in memory to any rows added since, or built in memory when absent."""
        if self._ann is None:
            shortlist = self._stored_ann()
            if shortlist is None:
                shortlist = ann.PQShortlist.build(self._embeddings.numpy())
            elif shortlist.count < len(self):
                shortlist.extend(self._embeddings[shortlist.count :].numpy())
            self._ann = shortlist
        return self._ann

    def _stored_ann(self) -> ann.PQShortlist | None:
        """The codes the manifest records, or None (none stored, or replaced meanwhile)."""
        record = self.manifest.get("ann")
        if not record or not 0 < record.get("count", 0) <= len(self):
            return None
        try:
            shortlist = ann.PQShortlist.from_bytes((self.path / record["file"]).read_bytes())
        except (OSError, RuntimeError):  # removed by a newer writer: the caller rebuilds
            return None
        return shortlist if shortlist.count == record["count"] else None

    def _maintain_ann(self, replaced: bool) -> None:
        """Writers keep the stored approximate-shortlist codes in step with the index (called
        under the writer lock, after a commit). Replaced rows force a rebuild; new rows are
        encoded and appended. Nothing is stored below ``ANN_MIN_VIDEOS`` or without faiss."""
        if len(self) < ann.ANN_MIN_VIDEOS or not ann.faiss_available():
            return
        shortlist = None if replaced else self._stored_ann()
        if shortlist is None:
            shortlist = ann.PQShortlist.build(self._embeddings.numpy())
        elif shortlist.count < len(self):
            shortlist.extend(self._embeddings[shortlist.count :].numpy())
        name = f"{ANN_PREFIX}{secrets.token_hex(4)}{ANN_SUFFIX}"
        data = shortlist.to_bytes()
        atomic_write_bytes(self.path / name, data, make_parents=False)
        self.manifest["ann"] = {
            "file": name,
            "count": shortlist.count,
            "bytes": len(data),
            "kind": ann.FACTORY_DESCRIPTION,
        }
        storage.write_manifest(self.path, self.manifest)
        for file in self.path.iterdir():
            if file.name.startswith(ANN_PREFIX) and file.name != name:
                file.unlink(missing_ok=True)
        self._ann = shortlist

    def _use_faiss(self) -> bool:
        if self.backend == "exact":
            return False
        try:
            import faiss  # noqa: F401
        except ImportError:
            if self.backend == "faiss":
                raise ImportError(
                    "backend='faiss' needs the faiss package (pip install faiss-cpu); "
                    "or use backend='exact'"
                ) from None
            return False
        return True

    @torch.no_grad()
    def mixed_scores(
        self,
        text_latents: Tensor,
        positions: Sequence[int] | None = None,
        *,
        from_latents: bool = False,
        chunk: int = 4096,
    ) -> Tensor:
        """Mixed-stream logits (Q, n) of queries' latents (Q, N, D) against indexed videos.

        Args:
            positions: the videos to score (default: all, in index order).
            from_latents: score from the stored float16 latents with
                ``model.mixed_stream_scores`` (keys and values projected per call) instead of
                the stored attention summaries (the default; same result, much cheaper).
        """
        positions = list(range(len(self)) if positions is None else positions)
        text_latents = text_latents.float()
        text_summary = None if from_latents else attention_summary(self.model, text_latents)
        out = []
        for start in range(0, len(positions), chunk):
            part = positions[start : start + chunk]
            if from_latents:
                out.append(self.model.mixed_stream_scores(self.latents(part), text_latents))
            else:
                visual = (
                    torch.from_numpy(self._gather("attn_lse", part)),
                    torch.from_numpy(self._gather("attn_values", part)),
                )
                assert text_summary is not None
                out.append(mixed_scores_from_summaries(self.model, visual, text_summary))
        if not out:
            return torch.zeros(text_latents.shape[0], 0)
        return torch.cat(out, dim=1).float()


def _check_search_arguments(k: Any, mode: Any, shortlist: Any) -> None:
    stream_mode(mode, allowed=SEARCH_MODES)
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(shortlist, int) or shortlist <= 0:
        raise ValueError(f"shortlist must be a positive integer, got {shortlist!r}")


def _resolve_model(model: PerceiverVL | str | Path) -> tuple[PerceiverVL, str | None]:
    if isinstance(model, PerceiverVL):
        return model.eval(), None
    if isinstance(model, (str, Path)):
        directory = Path(model).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model={str(model)!r} is not a directory; pass a directory written by "
                "save_pretrained (config.json + model.safetensors)"
            )
        return PerceiverVL.from_pretrained(directory).eval(), str(directory.resolve())
    raise ValueError(
        f"model must be a PerceiverVL or a model directory, got {type(model).__name__}"
    )


def _stored_name(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return os.fspath(file)
