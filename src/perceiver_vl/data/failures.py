"""Skip, count, log and report bad samples: the one place every dataset handles bad data.

A bad sample (missing, zero-byte, truncated or non-media file, undecodable frames, empty caption)
is skipped, counted by reason, logged with its path, and appears in `FailureTracker.summary`.
``strict=True`` raises instead; once more than ``max_failure_fraction`` of the samples seen have
failed (after ``min_samples``), a `TooManyFailuresError` stops the run.

Counts live in a small shared-memory tensor with one row per loader worker, so a summary read in
the main process includes what the workers skipped (no locks: each process writes its own row).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path

import torch

logger = logging.getLogger("perceiver_vl.data")

REASONS = (
    "missing",
    "wrong_format",
    "empty_file",
    "undecodable",
    "no_frames",
    "empty_caption",
    "bad_annotation",
    "other",
)
_ROWS = 65  # row 0: the main process; rows 1..64: loader workers (modulo 64)
# the first failures of each process, kept in shared memory so the main process can name them
_FIRST_PER_ROW = 3
_FIRST_BYTES = 320


class MediaError(Exception):
    """A media file could not be used.

    Attributes:
        path: the file (or ``shard.tar:member``) that failed.
        reason: a short reason; ``kind`` is one of `REASONS`.
    """

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "undecodable") -> None:
        self.path = str(path)
        self.reason = reason
        self.kind = kind if kind in REASONS else "other"
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the attributes when sent from a loader worker
        return (type(self), (self.path, self.reason, self.kind))


class TooManyFailuresError(RuntimeError):
    """More than ``max_failure_fraction`` of the samples seen were bad."""


def _worker_row() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_ROWS - 1)


class FailureTracker:
    """Counts good and bad samples across the main process and loader workers.

    Args:
        strict: raise the sample's error instead of skipping it.
        max_failure_fraction: above this fraction of failed samples a `TooManyFailuresError` is
            raised (checked once ``min_samples`` samples were seen).
        min_samples: samples to see before the fraction is checked.
        log_file: optional JSON-lines file; every failure is appended as
            ``{"path", "kind", "reason"}`` (safe from several workers).
        name: shown in logs and summaries (usually the dataset's name).
    """

    def __init__(
        self,
        *,
        strict: bool = False,
        max_failure_fraction: float = 0.1,
        min_samples: int = 20,
        log_file: str | os.PathLike | None = None,
        name: str = "dataset",
    ) -> None:
        if not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError(
                f"max_failure_fraction={max_failure_fraction!r} must lie in [0, 1] "
                "(e.g. 0.1 stops once more than 10 % of samples are bad)"
            )
        self.strict = strict
        self.max_failure_fraction = max_failure_fraction
        self.min_samples = min_samples
        self.log_file = Path(log_file) if log_file is not None else None
        self.name = name
        # columns: [ok, *REASONS]
        self._counts = torch.zeros(_ROWS, 1 + len(REASONS), dtype=torch.int64).share_memory_()
        self._first = torch.zeros(_ROWS, _FIRST_PER_ROW, _FIRST_BYTES, dtype=torch.uint8)
        self._first.share_memory_()
        self.recent: deque[tuple[str, str, str]] = deque(maxlen=20)

    # ----------------------------------------------------------------- recording
    def ok(self) -> None:
        """Record one good sample."""
        self._counts[_worker_row(), 0] += 1

    def fail(
        self, path: str | os.PathLike, reason: str, kind: str = "other", check: bool = True
    ) -> None:
        """Record one skipped sample: count it, log it with its path, check the fraction.

        ``check=False`` skips the fraction check (annotation rows are checked as a whole with
        `check_fraction`).
        """
        kind = kind if kind in REASONS else "other"
        row = _worker_row()
        slot = int(self._counts[row, 1:].sum())
        if slot < _FIRST_PER_ROW:
            record = "\t".join((str(path), kind, reason)).encode("utf-8")[:_FIRST_BYTES]
            self._first[row, slot, : len(record)] = torch.frombuffer(
                bytearray(record), dtype=torch.uint8
            )
        self._counts[row, 1 + REASONS.index(kind)] += 1
        self.recent.append((str(path), kind, reason))
        logger.warning("%s: skipped %s (%s: %s)", self.name, path, kind, reason)
        if self.log_file is not None:
            line = json.dumps({"path": str(path), "kind": kind, "reason": reason}) + "\n"
            with open(self.log_file, "a", encoding="utf-8") as handle:
                handle.write(line)
        if not check:
            return
        seen, failed = self.seen, self.failed
        if seen >= self.min_samples and failed > self.max_failure_fraction * seen:
            raise TooManyFailuresError(
                f"{self.name}: {failed} of {seen} samples failed "
                f"({failed / seen:.1%} > max_failure_fraction={self.max_failure_fraction}); "
                f"last: {path} ({reason}). Check the media root and annotation paths, or raise "
                "max_failure_fraction if this much bad data is expected. " + self.summary()
            )

    def check_fraction(self, failed: int, total: int, what: str) -> None:
        """Raise `TooManyFailuresError` when ``failed`` of ``total`` exceeds the fraction (used
        for annotation rows, which are all read at once)."""
        if self.strict and failed:
            raise ValueError(
                f"{what}: {failed} of {total} entries are unusable and strict=True; "
                "fix the annotations or pass strict=False to skip them. " + self.summary()
            )
        if total >= self.min_samples and failed > self.max_failure_fraction * total:
            raise TooManyFailuresError(
                f"{what}: {failed} of {total} entries are unusable "
                f"(> max_failure_fraction={self.max_failure_fraction}); " + self.summary()
            )

    def handle(self, error: Exception, path: str | os.PathLike | None = None) -> None:
        """Record ``error`` as a skip, or re-raise it when ``strict``."""
        if self.strict:
            raise error
        if isinstance(error, MediaError):
            self.fail(error.path if path is None else path, error.reason, error.kind)
        else:
            self.fail(path if path is not None else "?", f"{type(error).__name__}: {error}")

    # ----------------------------------------------------------------- reading
    @property
    def counts(self) -> dict[str, int]:
        """Totals over all processes: ``{"ok": n, "missing": n, ...}``."""
        totals = self._counts.sum(dim=0).tolist()
        return {"ok": int(totals[0]), **{r: int(v) for r, v in zip(REASONS, totals[1:])}}

    @property
    def first_failures(self) -> list[tuple[str, str, str]]:
        """(path, kind, reason) of the first failures of every process (loader workers
        included; up to 3 each), the main process first."""
        out = []
        for row in range(_ROWS):
            for slot in range(_FIRST_PER_ROW):
                raw = bytes(self._first[row, slot].tolist()).rstrip(b"\0")
                if not raw:
                    break
                parts = raw.decode("utf-8", errors="replace").split("\t", 2)
                out.append(tuple(parts + [""] * (3 - len(parts))))  # type: ignore[arg-type]
        return out

    @property
    def failed(self) -> int:
        return int(self._counts[:, 1:].sum())

    @property
    def seen(self) -> int:
        return int(self._counts.sum())

    def summary(self) -> str:
        """One line: samples seen, skipped by reason, and recent failures (with paths)."""
        counts = self.counts
        reasons = ", ".join(f"{k}={v}" for k, v in counts.items() if k != "ok" and v)
        text = f"{self.name}: {self.seen} samples seen, {self.failed} skipped"
        if reasons:
            text += f" ({reasons})"
        shown = list(self.recent) or self.first_failures  # workers' failures are not "recent"
        if shown:
            label = "recent" if self.recent else "first"
            text += f"; {label}: " + "; ".join(f"{p} [{k}: {r}]" for p, k, r in shown)
        if self.log_file is not None and self.failed:
            text += f"; full list in {self.log_file}"
        return text

    def report(self) -> str:
        """Log the summary at INFO (WARNING when anything was skipped) and return it."""
        text = self.summary()
        logger.log(logging.WARNING if self.failed else logging.INFO, text)
        return text

    def reset(self) -> None:
        self._counts.zero_()
        self._first.zero_()
        self.recent.clear()
