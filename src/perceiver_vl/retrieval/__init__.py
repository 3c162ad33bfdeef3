"""Text-to-video retrieval over a stored index: encode each video once, keep its latents, and
answer text queries with a multi-stream shortlist and a mixed-stream re-rank.

Belongs here: the index (build, add, open, search), its storage format, the approximate
shortlist (faiss, optional), what gets indexed (``media``) and the index benchmarks.
May import: :mod:`perceiver_vl.model`, :mod:`perceiver_vl.data` (tokenizer and decoder),
:mod:`perceiver_vl.fileio`; never ``train`` (search needs no Lightning).

See ``docs/retrieval.md`` for the on-disk format and the measured speed.
"""

from .index import (
    SEARCH_MODES,
    AddReport,
    RetrievalIndex,
    SearchHit,
    model_fingerprint,
    weights_sha256,
)
from .media import resolve_videos
from .storage import CorruptIndexError, ModelMismatchError, RetrievalIndexError

__all__ = [
    "SEARCH_MODES",
    "AddReport",
    "CorruptIndexError",
    "ModelMismatchError",
    "RetrievalIndex",
    "RetrievalIndexError",
    "SearchHit",
    "model_fingerprint",
    "resolve_videos",
    "weights_sha256",
]
