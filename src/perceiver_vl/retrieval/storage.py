"""The on-disk format of a retrieval index (see ``docs/retrieval.md``).

An index is a directory::

    INDEX/
      manifest.json               # what is in the index; replaced last, atomically
      shard-000000-<id>.safetensors
      shard-000001-<id>.safetensors
      ...

Each shard is an immutable safetensors file holding, for ``n`` videos,

- ``latents``: (n, N, D) float16, the encoder latents of each video;
- ``embeddings``: (n, E) float32, the unit multi-stream embeddings ``model.embed(latents, "visual")``
  (computed from the float32 latents before rounding);
- ``attn_lse``: (n, heads) float32 and ``attn_values``: (n, heads, head_dim) float32, the decoder
  [CLS] query's attention summary of the stored (float16) latents, which makes the mixed-stream
  re-rank cost one decoder MLP per pair (see :mod:`perceiver_vl.retrieval.rerank`).

The manifest (JSON) names the format and version, the model fingerprint, the preprocessing, the
shards with their byte size and SHA-256, and one entry per video pointing at its shard row.
Writers only ever add new shard files and then replace the manifest, so a reader (or a killed
writer) always sees a complete, consistent index.

Nothing here unpickles: shards are parsed as safetensors (an 8-byte header length, a JSON header,
raw little-endian tensor data) and memory-mapped with numpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perceiver_vl.fileio import atomic_write_json

FORMAT_NAME = "perceiver-vl-retrieval-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".safetensors"

_DTYPES = {"F16": np.float16, "F32": np.float32}


class RetrievalIndexError(ValueError):
    """Base class of the errors about an index's files (a ``ValueError``)."""


class CorruptIndexError(RetrievalIndexError):
    """An index file is unreadable, truncated or fails its checksum."""


class ModelMismatchError(RetrievalIndexError):
    """The model given does not match the model the index was built with."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` while adding to an index."""
    path = Path(directory) / LOCK_NAME
    handle = open(path, "a+b")  # noqa: SIM115 - held for the duration of the block
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: single writer assumed, as documented
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RuntimeError(
                f"index {str(directory)!r} is being written by another process (lock {LOCK_NAME}); "
                "wait for it to finish, or remove the lock file if no writer is running"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------
SHARD_TENSORS = {
    "latents": ("F16", 3),
    "embeddings": ("F32", 2),
    "attn_lse": ("F32", 2),
    "attn_values": ("F32", 3),
}


def shard_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialise one shard (safetensors) to bytes; ``arrays`` holds :data:`SHARD_TENSORS`."""
    from safetensors.numpy import save

    missing = set(SHARD_TENSORS) - set(arrays)
    if missing:
        raise ValueError(
            f"a shard needs the tensors {sorted(SHARD_TENSORS)}; missing {sorted(missing)}"
        )
    dtypes = {"F16": np.float16, "F32": np.float32}
    return save(
        {
            name: np.ascontiguousarray(arrays[name], dtype=dtypes[dtype])
            for name, (dtype, _) in SHARD_TENSORS.items()
        },
        metadata=metadata,
    )


@dataclass
class Shard:
    """A read-only, memory-mapped shard (the arrays of :data:`SHARD_TENSORS`)."""

    path: Path
    latents: np.ndarray
    embeddings: np.ndarray
    attn_lse: np.ndarray
    attn_values: np.ndarray
    metadata: dict[str, str]

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def _read_header(path: Path, file_size: int) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CorruptIndexError(f"shard {str(path)!r} is truncated ({file_size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or 8 + length > file_size or length > 100_000_000:
            raise CorruptIndexError(
                f"shard {str(path)!r} has an invalid safetensors header length {length}"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptIndexError(f"shard {str(path)!r} has an unreadable header: {err}") from err
    if not isinstance(header, dict):
        raise CorruptIndexError(f"shard {str(path)!r} has an invalid safetensors header")
    return header, 8 + length


def open_shard(path: Path) -> Shard:
    """Memory-map a shard written by :func:`shard_bytes`, checking its structure."""
    path = Path(path)
    file_size = path.stat().st_size
    header, data_start = _read_header(path, file_size)
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype_name, ndim) in SHARD_TENSORS.items():
        info = header.get(name)
        if (
            not isinstance(info, dict)
            or info.get("dtype") != dtype_name
            or len(info.get("shape", ())) != ndim
        ):
            raise CorruptIndexError(
                f"shard {str(path)!r} lacks the {dtype_name} tensor {name!r} of {ndim} dimensions"
            )
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or data_start + end > file_size:
            raise CorruptIndexError(
                f"shard {str(path)!r}: tensor {name!r} of shape {shape} does not fit the file "
                f"({file_size} bytes); the file is truncated or corrupted"
            )
        if expected == 0:
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            arrays[name] = np.memmap(
                path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape
            )
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise CorruptIndexError(f"shard {str(path)!r} tensors disagree on the row count: {rows}")
    metadata = header.get("__metadata__") or {}
    return Shard(path, **arrays, metadata=dict(metadata))


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------
def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and structurally check ``directory/manifest.json``."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.exists():
        raise FileNotFoundError(
            f"index {str(directory)!r} does not exist; build one with "
            "`perceiver-vl index --model MODEL_DIR --videos VIDEOS --out INDEX`"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: {str(directory)!r} is not a perceiver-vl index (or its "
            "manifest was deleted); rebuild it with `perceiver-vl index ... --out INDEX`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptIndexError(
            f"{str(path)!r} is not valid JSON ({err}); the index is corrupted"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptIndexError(
            f"{str(path)!r} is not a perceiver-vl retrieval index manifest "
            f"(format={manifest.get('format') if isinstance(manifest, dict) else None!r})"
        )
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise CorruptIndexError(
            f"{str(path)!r} has format version {version!r}; this perceiver-vl reads version "
            f"{FORMAT_VERSION}. Rebuild the index with this version."
        )
    for key in ("model", "preprocessing", "shards", "videos"):
        if key not in manifest:
            raise CorruptIndexError(
                f"{str(path)!r} lacks the field {key!r}; the index is corrupted"
            )
    for field_name, required in (
        ("shards", ("file", "count", "bytes", "sha256")),
        ("videos", ("video", "shard", "row")),
    ):
        entries = manifest[field_name]
        if not isinstance(entries, list):
            raise CorruptIndexError(f"{str(path)!r}: {field_name!r} is not a list; corrupted")
        for position, entry in enumerate(entries):
            lacking = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if lacking:
                raise CorruptIndexError(
                    f"{str(path)!r}: {field_name} entry {position} lacks {lacking}; the index is "
                    "corrupted. Rebuild it (perceiver-vl index ... --out INDEX)"
                )
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``directory/manifest.json``."""
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest, indent=1, make_parents=False)
