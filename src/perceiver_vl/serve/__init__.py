"""An HTTP search service over a retrieval index: a JSON API and a web page.

    perceiver-vl serve --index INDEX [--host 127.0.0.1] [--port 8000]

:class:`SearchService` (the index, opened read-only, and batched search) knows nothing of HTTP;
:func:`perceiver_vl.serve.app.create_app` wraps it in a FastAPI app (``pip install
'perceiver-vl[serve]'``); :mod:`perceiver_vl.serve.loadbench` measures it under concurrent
clients. See ``docs/retrieval.md``.

May import: :mod:`perceiver_vl.retrieval`, :mod:`perceiver_vl.model`, :mod:`perceiver_vl.fileio`
and the ``serve`` extra (FastAPI, uvicorn, httpx), which only ``app``, ``loadbench`` and the
command's run import.
"""

from .service import SearchPage, SearchRequest, SearchService, ServeSettings

__all__ = ["SearchPage", "SearchRequest", "SearchService", "ServeSettings"]
