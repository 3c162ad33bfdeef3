"""The HTTP app (FastAPI): a JSON API over a :class:`SearchService` and the page at ``/``.

Routes (all read-only; there is no endpoint that writes):

=====================================  ==========================================================
``GET /``                              the search page (plain HTML + JS + CSS, no external assets)
``GET /api/search``                    ``q``, ``k``, ``offset``, ``mode``, ``shortlist``, ``blocks``
``GET /api/videos/{id}``               one video's metadata
``GET /api/videos/{id}/file``          the video file, with HTTP range requests (seeking)
``GET /api/videos/{id}/thumbnail``     a JPEG of the middle frame, cached after the first request
``GET /api/stats``                     the index: videos, model, build settings, limits
``GET /api/health``                    liveness
``GET /openapi.json``                  the OpenAPI schema
=====================================  ==========================================================

Every error is JSON ``{"error": message, "status": code}``.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time, and
# they refer to create_app's `settings`.

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from perceiver_vl.model.streams import StreamMode
from perceiver_vl.retrieval.index import DEFAULT_SHORTLIST, SEARCH_MODES

from .service import SearchPage, SearchRequest, SearchService
from .thumbnails import ThumbnailError

# The query parameter's type: the search modes by name (FastAPI validates and documents them).
SearchModeName = Literal[tuple(str(mode) for mode in SEARCH_MODES)]  # type: ignore[valid-type]

STATIC_DIR = Path(__file__).parent / "static"


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class SearchBatcher:
    """Collects concurrent search requests and answers them in batches on one model thread.

    No request waits for a batch to fill: whatever queued while the previous batch ran (up to
    ``max_batch``) goes into the next one, so a lone request runs at once and a busy server
    encodes many queries per encoder pass. The model runs on one thread at a time (its own
    intra-op threads use the cores), so requests never compete for the CPU with each other.
    """

    def __init__(self, service: SearchService, max_batch: int) -> None:
        self.service = service
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[SearchRequest, asyncio.Future[Any]]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perceiver-vl-model")
        self._task: asyncio.Task[None] | None = None
        #: How many requests each batch held (for the load benchmark); the latest 10,000.
        self.batch_sizes: list[int] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, request: SearchRequest) -> SearchPage:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(r, f) for r, f in batch if not f.cancelled()]  # clients that hung up
            if not live:
                continue
            self.batch_sizes = [*self.batch_sizes[-9999:], len(live)]
            try:
                results = await loop.run_in_executor(
                    self._executor, self.service.search_batch, [r for r, _ in live]
                )
            except Exception as err:  # noqa: BLE001 - reported to every waiting request
                results = [err] * len(live)
            for (_, future), result in zip(live, results):
                if future.cancelled():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def _parse_blocks(blocks: str | None) -> tuple[int, ...] | None:
    if blocks is None or not blocks.strip():
        return None
    try:
        return tuple(int(part) for part in blocks.split(","))
    except ValueError:
        raise ApiError(
            422,
            f"blocks must be comma-separated block indices such as '0' or '0,1'; got {blocks!r}",
        ) from None


def create_app(service: SearchService) -> FastAPI:
    """The FastAPI app serving ``service`` (its settings bound the request parameters)."""
    settings = service.settings
    batcher = SearchBatcher(service, settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        refresher = None
        if settings.refresh_interval_s > 0:
            refresher = asyncio.get_running_loop().create_task(_refresh_loop())
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            await batcher.stop()

    async def _refresh_loop() -> None:
        while True:
            await asyncio.sleep(settings.refresh_interval_s)
            # Reading a large manifest takes a while: off the event loop and off the model thread.
            await run_in_threadpool(service.maybe_refresh)

    app = FastAPI(
        title="perceiver-vl search",
        summary="Text-to-video search over a Perceiver-VL retrieval index.",
        version="1",
        lifespan=lifespan,
        # The interactive docs pages load their scripts from a CDN; the schema is enough.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code == 404 and message == "Not Found":
            message = f"no such resource: {request.url.path}"
        elif err.status_code == 405:
            message = (
                f"method {request.method} is not allowed on {request.url.path}; this service is "
                "read-only (GET only)"
            )
        return _error(err.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, err: Exception) -> JSONResponse:
        # Still JSON, and without internals: the traceback goes to the server's log.
        return _error(
            500, f"internal error while answering {request.url.path}: {type(err).__name__}"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for item in err.errors():
            where = ".".join(str(x) for x in item.get("loc", ()) if x not in ("query", "path"))
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return _error(422, "invalid request: " + "; ".join(parts))

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------ API
    @app.get("/api/health", summary="Liveness and the number of indexed videos")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "videos": len(service.index), "generation": service.generation}

    @app.get("/api/stats", summary="The index: videos, model, build settings and limits")
    async def stats() -> dict[str, Any]:
        return service.stats()

    @app.get("/api/search", summary="Rank the indexed videos for a text query")
    async def search(
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=settings.max_query_chars,
                description="the text query, e.g. 'a red circle moves left'",
            ),
        ],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="results per page")] = 10,
        offset: Annotated[
            int,
            Query(
                ge=0,
                le=settings.max_results - 1,
                description="results to skip (the page starts at rank offset + 1)",
            ),
        ] = 0,
        mode: Annotated[
            SearchModeName,
            Query(
                description="multi: embedding dot product; mixed: mixed-stream logit of every "
                "video (exact, slow on big indexes); rerank: multi-stream shortlist re-ranked by "
                "the mixed stream",
            ),
        ] = StreamMode.RERANK.value,
        shortlist: Annotated[
            int,
            Query(
                ge=1,
                le=settings.max_shortlist,
                description="candidates re-ranked in rerank mode (at least offset + k)",
            ),
        ] = DEFAULT_SHORTLIST,
        blocks: Annotated[
            str | None,
            Query(
                max_length=64,
                description="cross-attention blocks the query encoder runs, e.g. '0' "
                "(default: the model's inference choice)",
            ),
        ] = None,
    ) -> dict[str, Any]:
        request = SearchRequest(
            query=q,
            k=k,
            offset=offset,
            mode=mode,
            shortlist=shortlist,
            blocks=_parse_blocks(blocks),
        )
        start = time.perf_counter()
        try:
            result = await batcher.submit(request)
        except ValueError as err:
            raise ApiError(422, str(err)) from None
        return {
            "query": q,
            "mode": mode,
            "k": k,
            "offset": offset,
            "shortlist": shortlist,
            "blocks": None if request.blocks is None else list(request.blocks),
            "total_videos": result.total_videos,
            "has_more": result.has_more,
            "took_ms": round((time.perf_counter() - start) * 1000, 2),
            "search_ms": round(result.search_ms, 2),
            "batch_size": result.batch_size,
            "generation": result.generation,
            "results": result.hits,
        }

    def _lookup(video_id: int) -> tuple[dict[str, Any], Path]:
        try:
            return service.video_entry(video_id)
        except LookupError as err:
            raise ApiError(404, str(err)) from None
        except FileNotFoundError as err:
            raise ApiError(404, str(err)) from None

    @app.get("/api/videos/{video_id}", summary="One indexed video's metadata")
    async def video(video_id: int) -> dict[str, Any]:
        index = service.index
        if not 0 <= video_id < len(index):
            raise ApiError(
                404, f"video id {video_id} is not in the index (ids are 0..{len(index) - 1})"
            )
        entry = index.videos[video_id]
        return {
            "id": video_id,
            "video": entry["video"],
            "captions": list(entry.get("captions") or []),
            "duration": entry.get("duration"),
            "frame_count": entry.get("frame_count"),
            "size": entry.get("size"),
            "file_url": f"/api/videos/{video_id}/file",
            "thumbnail_url": f"/api/videos/{video_id}/thumbnail",
        }

    @app.get(
        "/api/videos/{video_id}/file",
        summary="The video file (supports Range requests)",
        response_class=FileResponse,
    )
    async def video_file(video_id: int) -> FileResponse:
        _, path = _lookup(video_id)
        return FileResponse(
            path,
            media_type=service.media_type(path),
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.get(
        "/api/videos/{video_id}/thumbnail",
        summary="A JPEG of the video's middle frame",
        response_class=FileResponse,
    )
    async def thumbnail(video_id: int) -> FileResponse:
        _lookup(video_id)
        try:
            file = await run_in_threadpool(service.thumbnail, video_id)
        except ThumbnailError as err:
            raise ApiError(422, f"no thumbnail for video {video_id}: {err}") from None
        return FileResponse(
            file, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    return app
