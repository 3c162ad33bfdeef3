"""Atomic file writes: a reader (or a crash) sees either the previous file or the complete new one.

Every write goes to a temporary file in the target's own directory (so the final rename stays on
one file system), the temporary file is fsynced, ``os.replace`` moves it over the target, and the
directory is fsynced so the rename itself survives a power cut. If the writer raises, the
temporary file is removed and the target is left as it was.

- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`: whole
  contents at once;
- :func:`atomic_open`: a file object for writers that stream into a handle;
- :func:`atomic_path`: a temporary path for writers that want a file name (``safetensors``'
  ``save_file``); :func:`atomic_savefig` for matplotlib figures.

This module imports only the standard library, so every package (``model`` and ``data``
included) may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_savefig",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
]

#: Temporary files are named ``.<target name>.<random>.tmp`` beside the target.
TMP_SUFFIX = ".tmp"


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush ``directory``'s entries (a rename into it) to disk; a no-op where the platform
    cannot open a directory (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception the file
    written there is fsynced and renamed over ``path``.

    The temporary file exists (empty) when the block starts, so writers that refuse to replace a
    file cannot be used; those that open it for writing can. If the block raises, the temporary
    file is removed and ``path`` keeps its previous contents (or stays absent).

    Example::

        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, tmp)
    """
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    make_parents: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode`` ``"wb"`` or ``"w"``); on a
    clean exit it is flushed, fsynced and renamed over ``path``, on an exception removed.

    Text mode (``"w"``) defaults to UTF-8.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is not supported; atomic_open writes with 'w' or 'wb'")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with (
        atomic_path(path, make_parents=make_parents) as tmp,
        open(tmp, mode, encoding=encoding) as handle,
    ):
        yield handle
        handle.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, "wb", make_parents=make_parents) as handle:
        handle.write(data)


def atomic_write_text(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", make_parents: bool = True
) -> None:
    """Replace ``path`` with ``text`` (UTF-8 by default) atomically."""
    atomic_write_bytes(path, text.encode(encoding), make_parents=make_parents)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    make_parents: bool = True,
    **dumps_kwargs: Any,
) -> None:
    """Replace ``path`` with ``json.dumps(obj, indent=indent, **dumps_kwargs)`` and a final
    newline, atomically. The object is serialised before the file is touched, so an
    unserialisable object leaves ``path`` as it was."""
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    atomic_write_text(path, text, make_parents=make_parents)


def atomic_savefig(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """``figure.savefig`` (a matplotlib figure) to ``path`` atomically; the image format comes
    from ``path``'s suffix (the temporary file's own suffix is ``.tmp``)."""
    suffix = Path(path).suffix.lstrip(".").lower()
    savefig_kwargs.setdefault("format", suffix or "png")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, **savefig_kwargs)
