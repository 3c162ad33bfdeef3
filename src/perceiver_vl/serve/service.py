"""The search service behind the HTTP app: one read-only index, one shared model, batched search.

Nothing here imports the web framework, so the service can be used (and tested) on its own:

- :class:`ServeSettings` holds the limits a public service needs (query length, ``k``, pages);
- :class:`SearchService` owns the index (opened read-only), swaps in a fresh index object when
  another process commits new videos (:meth:`SearchService.maybe_refresh`), answers a batch of
  search requests with one text-encoder pass (:meth:`SearchService.search_batch`) and makes
  thumbnails (:mod:`perceiver_vl.serve.thumbnails`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import StreamMode
from perceiver_vl.retrieval import CorruptIndexError, RetrievalIndex
from perceiver_vl.retrieval.index import DEFAULT_SHORTLIST, SEARCH_MODES
from perceiver_vl.retrieval.media import VIDEO_EXTENSIONS

from . import thumbnails

#: Content types of the video containers an index may hold (browsers play mp4/webm natively).
VIDEO_MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".gif": "image/gif",
}
assert set(VIDEO_MEDIA_TYPES) == set(VIDEO_EXTENSIONS)


@dataclass
class ServeSettings:
    """Limits and behaviour of a search service.

    Attributes:
        max_query_chars: longest query accepted (characters); the tokenizer keeps only
            ``max_text_length`` tokens anyway, this bounds the work done before it.
        max_k: most results one page may ask for.
        max_results: deepest rank a client may page to (``offset + k``); each page re-runs the
            search for ``offset + k`` results, so this bounds the work per request.
        max_shortlist: most candidates a client may ask the re-rank to score.
        max_batch: most queued requests answered by one encoder pass (1 = no batching).
        max_mixed_videos: largest index searched in ``mixed`` mode, which scores every video
            (one decoder MLP each) and would hold the model thread for seconds on a large index;
            ``rerank`` serves those.
        refresh_interval_s: how often the manifest is checked for videos added by another
            process (0 = never).
        verify: check every shard's SHA-256 when the index is first opened.
        cache_dir: where thumbnails are cached (default ``~/.cache/perceiver-vl/thumbnails``);
            the index directory itself is never written.
        thumbnail_width: thumbnail width in pixels (height keeps the aspect ratio).
    """

    max_query_chars: int = 500
    max_k: int = 100
    max_results: int = 1000
    max_shortlist: int = 2000
    max_batch: int = 16
    max_mixed_videos: int = 100_000
    refresh_interval_s: float = 2.0
    verify: bool = True
    cache_dir: Path | None = None
    thumbnail_width: int = 320

    def validate(self) -> ServeSettings:
        """Raise ``ValueError`` naming the first field out of range; return ``self``."""
        for name in (
            "max_query_chars",
            "max_k",
            "max_results",
            "max_shortlist",
            "max_batch",
            "max_mixed_videos",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ServeSettings.{name} must be a positive integer, got {value!r}")
        if self.max_results < self.max_k:
            raise ValueError(
                f"ServeSettings.max_results={self.max_results} must be >= max_k={self.max_k}"
            )
        if self.refresh_interval_s < 0:
            raise ValueError(
                f"ServeSettings.refresh_interval_s must be >= 0 (0 = never), got "
                f"{self.refresh_interval_s!r}"
            )
        if not 16 <= self.thumbnail_width <= 1920:
            raise ValueError(
                f"ServeSettings.thumbnail_width must lie in [16, 1920], got {self.thumbnail_width!r}"
            )
        return self

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return Path.home() / ".cache" / "perceiver-vl" / "thumbnails"


@dataclass
class SearchRequest:
    """One search: ``offset`` and ``k`` select the page ``offset + 1 .. offset + k`` of the ranking."""

    query: str
    k: int = 10
    offset: int = 0
    mode: StreamMode | str = StreamMode.RERANK
    shortlist: int = DEFAULT_SHORTLIST
    blocks: tuple[int, ...] | None = None


@dataclass
class SearchPage:
    """The answer to one :class:`SearchRequest`."""

    request: SearchRequest
    hits: list[dict[str, Any]]
    total_videos: int
    has_more: bool
    batch_size: int
    generation: int
    search_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _shortlist_width(request: SearchRequest, total: int) -> int:
    """Candidates ``request`` needs from the multi-stream shortlist (0 for ``mixed``)."""
    depth = request.offset + request.k
    if request.mode == StreamMode.MIXED:
        return 0
    return min(total, depth if request.mode == StreamMode.MULTI else max(depth, request.shortlist))


class SearchService:
    """A read-only index shared by every request.

    One model object serves every request (no per-request copies); requests that arrive while a
    batch runs are answered together by the next batch. The index object is replaced, never
    mutated, when another process adds videos, so a search always sees one consistent state.
    """

    def __init__(self, index: RetrievalIndex, settings: ServeSettings | None = None) -> None:
        if not index.read_only:
            raise ValueError(
                "SearchService needs an index opened read-only "
                "(RetrievalIndex.open(path, read_only=True)); use SearchService.open(path)"
            )
        self.settings = (settings or ServeSettings()).validate()
        self._index = index
        self._stamp = index.manifest_stamp()
        self._refresh_lock = threading.Lock()
        #: Incremented each time a newer state of the index is swapped in.
        self.generation = 0
        self.loaded_at = time.time()
        #: The latest refresh failure (None after a successful refresh).
        self.refresh_error: str | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: PerceiverVL | str | Path | None = None,
        settings: ServeSettings | None = None,
        **index_options: Any,
    ) -> SearchService:
        """Open the index at ``path`` read-only (``index_options`` go to
        :meth:`RetrievalIndex.open`, e.g. ``tokenizer``, ``backend``)."""
        settings = (settings or ServeSettings()).validate()
        index = RetrievalIndex.open(
            path, model, verify=settings.verify, read_only=True, **index_options
        )
        index.prepare_shortlist()
        return cls(index, settings)

    # ------------------------------------------------------------------ the index
    @property
    def index(self) -> RetrievalIndex:
        """The current index object (take it once per operation; it may be replaced)."""
        return self._index

    def maybe_refresh(self) -> bool:
        """Swap in the index on disk if its manifest changed; True when a new state was loaded.

        A failure (e.g. a shard removed by a writer between reading the manifest and mapping the
        shard) keeps the current state, records :attr:`refresh_error` and is retried next time.
        """
        with self._refresh_lock:
            stamp = self._index.manifest_stamp()
            if stamp is None or stamp == self._stamp:
                return False
            try:
                fresh = self._index.refreshed(verify=False)
            except (FileNotFoundError, CorruptIndexError, ValueError) as err:
                self.refresh_error = f"{type(err).__name__}: {err}"
                return False
            fresh.prepare_shortlist()
            self._index, self._stamp = fresh, stamp
            self.generation += 1
            self.loaded_at = time.time()
            self.refresh_error = None
            return True

    # ------------------------------------------------------------------ checks
    def check_request(self, request: SearchRequest) -> None:
        """Raise ``ValueError`` naming the argument when ``request`` is out of bounds."""
        s = self.settings
        if not isinstance(request.query, str) or not request.query.strip():
            raise ValueError("query is empty; type some words, e.g. 'a red circle moves left'")
        if len(request.query) > s.max_query_chars:
            raise ValueError(
                f"query has {len(request.query)} characters; at most {s.max_query_chars} are "
                "accepted (only the first few dozen words are read anyway)"
            )
        if request.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}; got {request.mode!r}")
        if not 1 <= request.k <= s.max_k:
            raise ValueError(f"k must lie in [1, {s.max_k}]; got {request.k}")
        if request.offset < 0 or request.offset + request.k > s.max_results:
            raise ValueError(
                f"offset + k must lie in [1, {s.max_results}] (the deepest page served); got "
                f"offset={request.offset}, k={request.k}"
            )
        if not 1 <= request.shortlist <= s.max_shortlist:
            raise ValueError(
                f"shortlist must lie in [1, {s.max_shortlist}]; got {request.shortlist}"
            )
        if request.mode == StreamMode.MIXED and len(self._index) > s.max_mixed_videos:
            raise ValueError(
                f"mode=mixed scores every video and this index holds {len(self._index)} "
                f"(more than {s.max_mixed_videos}); use mode=rerank (a shortlist re-ranked by the "
                "mixed stream) or mode=multi"
            )
        if request.blocks is not None:
            try:
                self._index.model.select_cross_attention_blocks(list(request.blocks))
            except ValueError as err:
                raise ValueError(f"blocks={','.join(map(str, request.blocks))}: {err}") from None

    # ------------------------------------------------------------------ search
    def search(self, request: SearchRequest) -> SearchPage:
        """Answer one request (see :meth:`search_batch`)."""
        result = self.search_batch([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[SearchPage | Exception]:
        """Answer several requests with one text-encoder pass per cross-attention choice.

        Returns one :class:`SearchPage` per request, or the ``ValueError`` that request raised
        (a bad request does not fail the others in its batch).
        """
        index = self._index  # one consistent state for the whole batch
        generation = self.generation
        out: list[SearchPage | Exception | None] = [None] * len(requests)
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                self.check_request(request)
            except ValueError as err:
                out[i] = err
                continue
            groups.setdefault(request.blocks, []).append(i)
        for blocks, members in groups.items():
            start = time.perf_counter()
            latents = index.encode_texts(
                [requests[i].query for i in members],
                cross_attention_layers=list(blocks) if blocks is not None else None,
            )
            # One shortlist pass for every query of the group that needs one, as wide as the
            # widest of them (a prefix of a best-first list is the narrower list).
            widths = {i: _shortlist_width(requests[i], len(index)) for i in members}
            shortlisted = [row for row, i in enumerate(members) if widths[i]]
            candidates = None
            if shortlisted and len(index):
                with torch.no_grad():
                    embeddings = index.model.embed(latents[shortlisted], "text")
                found = index.shortlist_many(embeddings, max(widths.values()))
                candidates = {row: (found[0][j], found[1][j]) for j, row in enumerate(shortlisted)}
            shared_ms = (time.perf_counter() - start) * 1000 / len(members)
            for row, i in enumerate(members):
                request = requests[i]
                begin = time.perf_counter()
                depth = request.offset + request.k
                given = None
                if candidates is not None and row in candidates:
                    scores, positions = candidates[row]
                    given = (scores[None, : widths[i]], positions[None, : widths[i]])
                hits = index.search_encoded(
                    latents[row : row + 1],
                    depth,
                    request.mode,  # type: ignore[arg-type]
                    shortlist=max(request.shortlist, depth),
                    candidates=given,
                )[0]
                page = hits[request.offset : depth]
                out[i] = SearchPage(
                    request=request,
                    hits=[self._hit_dict(index, hit) for hit in page],
                    total_videos=len(index),
                    has_more=depth < min(len(index), self.settings.max_results),
                    batch_size=len(members),
                    generation=generation,
                    search_ms=shared_ms + (time.perf_counter() - begin) * 1000,
                )
        return out  # type: ignore[return-value]

    @staticmethod
    def _hit_dict(index: RetrievalIndex, hit: Any) -> dict[str, Any]:
        entry = index.videos[hit.position]
        return {
            "rank": hit.rank,
            "id": hit.position,
            "video": hit.video,
            "score": round(hit.score, 6),
            "multi_score": None if hit.multi_score is None else round(hit.multi_score, 6),
            "mixed_score": None if hit.mixed_score is None else round(hit.mixed_score, 6),
            "captions": list(entry.get("captions") or []),
            "duration": entry.get("duration"),
            "file_url": f"/api/videos/{hit.position}/file",
            "thumbnail_url": f"/api/videos/{hit.position}/thumbnail",
        }

    # ------------------------------------------------------------------ videos
    def video_entry(self, video_id: int) -> tuple[dict[str, Any], Path]:
        """The manifest entry and absolute path of indexed video ``video_id`` (its position).

        Only files registered in the index are ever resolved, so no client-supplied path reaches
        the file system. Raises ``LookupError`` (unknown id) or ``FileNotFoundError`` (the file
        is gone from disk).
        """
        index = self._index
        if not 0 <= video_id < len(index):
            raise LookupError(
                f"video id {video_id} is not in the index (ids are 0..{len(index) - 1})"
            )
        entry = index.videos[video_id]
        path = index.video_path(video_id)
        if not path.is_file():
            raise FileNotFoundError(
                f"video {video_id} ({entry['video']!r}) is registered in the index but its file "
                "is missing on disk; restore it or re-index the collection"
            )
        return entry, path

    def media_type(self, path: Path) -> str:
        return VIDEO_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")

    def thumbnail(self, video_id: int) -> Path:
        """The cached JPEG thumbnail of video ``video_id``, made on first request."""
        entry, path = self.video_entry(video_id)
        return thumbnails.cached_thumbnail(
            path,
            entry,
            self.settings.resolved_cache_dir(),
            width=self.settings.thumbnail_width,
        )

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, Any]:
        """What the index holds and how it was built (no per-video data)."""
        index = self._index
        manifest = index.manifest
        model = manifest["model"]
        cfg = index.model.config
        return {
            "videos": len(index),
            "created": manifest.get("created"),
            "updated": manifest.get("updated"),
            "shards": len(manifest["shards"]),
            "index_bytes": sum(int(s.get("bytes", 0)) for s in manifest["shards"]),
            "preprocessing": manifest["preprocessing"],
            "model": {
                "path": model.get("path"),
                "weights_sha256": model.get("weights_sha256"),
                "parameters": index.model.num_parameters(),
                "hidden_size": cfg.hidden_size,
                "num_latents": cfg.num_latents,
                "num_self_attention_layers": cfg.num_self_attention_layers,
                "num_cross_attention_blocks": cfg.num_cross_attention_blocks,
                "contrastive_dim": cfg.contrastive_dim,
                "max_text_length": cfg.max_text_length,
            },
            "shortlist": index.shortlist_backend(),
            "modes": list(SEARCH_MODES),
            "limits": {
                "max_query_chars": self.settings.max_query_chars,
                "max_k": self.settings.max_k,
                "max_results": self.settings.max_results,
                "max_shortlist": self.settings.max_shortlist,
                "max_batch": self.settings.max_batch,
                "max_mixed_videos": self.settings.max_mixed_videos,
            },
            "generation": self.generation,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "refresh_interval_s": self.settings.refresh_interval_s,
            "refresh_error": self.refresh_error,
        }
