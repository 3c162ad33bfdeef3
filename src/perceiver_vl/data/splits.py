"""Validation splits carved reproducibly from training data.

Model selection must never read a reported test split. Several benchmarks ship no validation
split (TGIF-QA, MSR-VTT 9k / 7k, whose customary "val" is the 1k-A test set), so fine-tuning
holds out part of the training media instead. The held-out part is a pure function of the
media ids and a seed: each id is ranked by a keyed hash (BLAKE2b of ``"<seed>:<id>"``) and the
``size`` lowest are held out. Adding or removing other ids never moves an id from one side to
the other unless it crosses the cut, and the choice does not depend on file order, on the
number of workers or ranks, or on the Python hash seed.

Items are grouped by ``Entry.id`` (the video or image), so every caption or question of a
held-out video is held out with it: no video is seen in training and validation.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from typing import Any

import numpy as np


def _rank_key(seed: int, item_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()


def holdout_ids(ids: Iterable[str], size: float, seed: int = 0) -> set[str]:
    """The ids held out for validation.

    Args:
        ids: media ids (duplicates allowed; each id counts once).
        size: how many ids to hold out (``>= 1``), or a fraction of them (``0 < size < 1``).
        seed: chooses another held-out set.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise ValueError(
            f"holdout size={size!r} must be a count of media (>= 1, e.g. 500) or a fraction "
            "(0 < size < 1, e.g. 0.05)"
        )
    unique = set(ids)
    count = round(size * len(unique)) if size < 1 else int(size)
    if count >= len(unique):
        raise ValueError(
            f"holdout size={size!r} would hold out {count} of {len(unique)} media, leaving "
            "nothing to train on; choose a smaller size"
        )
    # the ``count`` lowest keys (ties, which need equal 8-byte hashes, broken by the id), without
    # sorting millions of ids
    return set(heapq.nsmallest(count, unique, key=lambda item: (_rank_key(seed, item), item)))


def parse_holdout(spec: Any, argument: str) -> tuple[float, int]:
    """``{size: 500, seed: 0}`` (or a bare size) -> (size, seed), checked."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"size": spec}
    if not isinstance(spec, dict) or "size" not in spec or set(spec) - {"size", "seed"}:
        raise ValueError(
            f"{argument}={spec!r} must be a mapping like {{size: 500, seed: 0}} (size: media "
            "count >= 1 or fraction < 1; seed optional, default 0)"
        )
    size, seed = spec["size"], spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{argument}.seed={seed!r} must be an int")
    holdout_ids(["a", "b", "c"], 1 if size >= 1 else 0.34, seed)  # validates the size's type
    return size, seed


def restrict_entries(dataset: Any, held: set[str], keep_held: bool, argument: str) -> None:
    """Keep only the held-out entries of ``dataset`` (``keep_held``) or only the others."""
    from perceiver_vl.data.annotation_index import EntryTable

    entries = getattr(dataset, "entries", None)
    if isinstance(entries, EntryTable):  # a compact index: subset it without making entries
        chosen = entries.has_id(held)
        dataset.entries = entries.select(np.flatnonzero(chosen if keep_held else ~chosen))
        return
    if not isinstance(entries, list):
        raise ValueError(
            f"{argument}: {type(dataset).__name__} has no entry list to carve a validation "
            "split from (streamed data sets such as webdataset shards cannot); give data.val "
            "explicitly"
        )
    dataset.entries = [e for e in entries if (e.id in held) == keep_held]


__all__ = ["holdout_ids", "parse_holdout", "restrict_entries"]
