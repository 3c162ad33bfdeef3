"""Compact indexes of large annotation files: built with numpy, cached on disk, shared by ranks.

A data set of millions of items (CC3M: 3.3 million rows) must not cost one Python object per row
before the first step. :class:`EntryTable` stores the entries of a data set as arrays (captions
as one UTF-8 byte array with offsets; media paths and ids as byte arrays with offsets, or as
img2dataset keys formatted when asked) and makes an :class:`~perceiver_vl.data.datasets.Entry`
only for the item being read. :func:`read_img2dataset_tsv` parses CC3M's ``caption<TAB>url``
file with numpy over the raw bytes (no per-row Python work); :func:`read_caption_jsonl` parses a
JSON-lines manifest in large slices (one ``json.loads`` each), takes plain slices column by column
and works out merged media, ids and blank captions with numpy over all rows.

:func:`cached_index` keeps a built index in one ``.npz`` file (numpy arrays, read with
``allow_pickle=False``; nothing is pickled) named after the annotation file and the reader's
options, and keyed by the annotation file's resolved path, size and modification time: a
changed file is re-indexed, an unreadable cache is rebuilt with a warning. The file is written
atomically, so processes that read it (the other ranks, after the data module's
``prepare_data``) see either the whole index or none.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import logging
import operator
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from perceiver_vl.fileio import atomic_open

logger = logging.getLogger("perceiver_vl.data")

CACHE_VERSION = 1
# bytes of the annotation file parsed at once (bounds the parser's temporary arrays)
_CHUNK_BYTES = 1 << 24
_NEWLINE, _TAB, _CR = 10, 9, 13
# visible ASCII characters: bytes that str.split() never treats as whitespace
_VISIBLE = np.zeros(256, dtype=bool)
_VISIBLE[33:128] = True


def normalize_caption(text: str) -> str:
    """Runs of whitespace collapsed to one space, ends stripped (how every reader cleans text)."""
    return " ".join(text.split())


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 start offsets of ``n`` consecutive pieces of these lengths."""
    return np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)


def _blank_spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(n,) bool: which UTF-8 spans ``data[starts[i]:ends[i]]`` ``str.split()`` finds no word
    in. A span whose first or last byte is a visible ASCII character is not blank; the others
    (empty spans aside) are decoded and split."""
    blank = ends <= starts
    if not len(data):
        return blank
    first = data[np.minimum(starts, len(data) - 1)]
    last = data[np.maximum(ends - 1, 0)]
    for i in np.flatnonzero(~blank & ~(_VISIBLE[first] | _VISIBLE[last])).tolist():
        blank[i] = not data[starts[i] : ends[i]].tobytes().decode("utf-8").split()
    return blank


class Strings:
    """Many strings in one UTF-8 byte array: string ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_list(cls, values: Sequence[str]) -> Strings:
        """Pack ``values``: one join and one encode (ASCII text: the lengths are the strings'
        lengths; other text: cut at NUL separators; strings holding NUL: encoded one by one)."""
        if not values:
            return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64))
        text = "".join(values)
        if text.isascii():  # one byte per character: the lengths are the strings' lengths
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            offsets = _offsets(lengths)
            return cls(np.frombuffer(text.encode("ascii"), dtype=np.uint8), offsets)
        joined = "\0".join(values).encode("utf-8")
        data = np.frombuffer(joined, dtype=np.uint8)
        cuts = np.flatnonzero(data == 0)
        if len(cuts) == len(values) - 1:
            ends = np.append(cuts, len(data))
            starts = np.concatenate(([0], cuts + 1))
            lengths = ends - starts
            offsets = _offsets(lengths)
            keep = np.ones(len(data), dtype=bool)
            keep[cuts] = False
            return cls(data[keep], offsets)
        encoded = [v.encode("utf-8") for v in values]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = _offsets(lengths)
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, which: np.ndarray) -> Strings:
        """The strings at ``which`` (positions in any order, or a boolean mask), packed anew."""
        starts = self.offsets[:-1][which]
        lengths = self.offsets[1:][which] - starts
        offsets = _offsets(lengths)
        source = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Strings(self.data[source], offsets)

    def __getitem__(self, index: int) -> str:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.data[start:stop].tobytes().decode("utf-8")


@dataclass(frozen=True)
class Img2datasetKeys:
    """The file names img2dataset ``--output_format files`` gives data rows: row ``i`` is shard
    ``i // samples_per_shard``, key ``shard * 10**d + i % samples_per_shard`` zero-padded to
    ``shard_digits + d`` digits (``d``: the digits of ``samples_per_shard - 1``), file
    ``<first shard_digits digits>/<key><extension>``."""

    samples_per_shard: int = 10000
    shard_digits: int = 5
    extension: str = ".jpg"

    @property
    def sample_digits(self) -> int:
        return len(str(self.samples_per_shard - 1))

    def key(self, row: int) -> str:
        shard, position = divmod(int(row), self.samples_per_shard)
        digits = self.sample_digits
        return f"{shard * 10**digits + position:0{self.shard_digits + digits}d}"

    def media(self, row: int) -> str:
        key = self.key(row)
        return f"{key[: -self.sample_digits]}/{key}{self.extension}"


class EntryTable(Sequence[Any]):
    """A data set's entries as arrays; indexing gives an ``Entry`` made on demand.

    Either ``media`` and ``ids`` are :class:`Strings` (one per entry), or ``keys`` holds each
    entry's img2dataset row with ``key_format`` naming its file (``ids`` are then the keys).
    ``captions`` holds every caption, entry ``i`` owning ``captions[entry_captions[i] :
    entry_captions[i + 1]]``. ``index`` (positions into the arrays) makes a subset without
    copying them (:meth:`select`). The table is read-only: an ``Entry`` taken from it is a
    copy, so to edit entries assign a list (``dataset.entries = list(dataset.entries)``).
    """

    def __init__(
        self,
        captions: Strings,
        entry_captions: np.ndarray,
        *,
        media: Strings | None = None,
        ids: Strings | None = None,
        keys: np.ndarray | None = None,
        key_format: Img2datasetKeys | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        if (keys is None) == (media is None):
            raise ValueError("EntryTable needs either media (+ ids) strings or img2dataset keys")
        self.captions = captions
        self.entry_captions = entry_captions
        self.media = media
        self.ids = ids
        self.keys = keys
        self.key_format = key_format
        size = len(entry_captions) - 1
        self.index = np.arange(size, dtype=np.int64) if index is None else index
        #: what the table was built from (annotation file path, size, mtime, reader and its
        #: options) when it came through :func:`cached_index` with a cache folder, else None
        self.source: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.index)

    @overload
    def __getitem__(self, position: int) -> Any: ...

    @overload
    def __getitem__(self, position: slice) -> EntryTable: ...

    def __getitem__(self, position: int | slice) -> Any:
        if isinstance(position, slice):
            return self.select(self.index[position])
        from perceiver_vl.data.datasets import Entry

        row = int(self.index[position])
        first, stop = int(self.entry_captions[row]), int(self.entry_captions[row + 1])
        captions = [normalize_caption(self.captions[c]) for c in range(first, stop)]
        if self.keys is not None:
            assert self.key_format is not None
            key_row = int(self.keys[row])
            return Entry(self.key_format.media(key_row), captions, self.key_format.key(key_row))
        assert self.media is not None and self.ids is not None
        return Entry(self.media[row], captions, self.ids[row])

    def __iter__(self) -> Iterator[Any]:
        for position in range(len(self)):
            yield self[position]

    def select(self, positions: np.ndarray | Sequence[int]) -> EntryTable:
        """The entries at ``positions`` (of this table), sharing the arrays."""
        chosen = self.index[np.asarray(positions, dtype=np.int64)]
        return EntryTable(
            self.captions,
            self.entry_captions,
            media=self.media,
            ids=self.ids,
            keys=self.keys,
            key_format=self.key_format,
            index=chosen,
        )

    def id_list(self) -> list[str]:
        """Every entry's id, in order (what validation hold-outs are drawn from)."""
        if self.keys is not None:
            assert self.key_format is not None
            fmt = self.key_format
            digits, per = fmt.sample_digits, fmt.samples_per_shard
            rows = self.keys[self.index]
            codes = (rows // per) * 10**digits + rows % per
            width = fmt.shard_digits + digits
            return [f"{code:0{width}d}" for code in codes.tolist()]
        assert self.ids is not None
        return [self.ids[int(row)] for row in self.index]

    def has_id(self, ids: set[str]) -> np.ndarray:
        """(len,) bool: whether each entry's id is in ``ids`` (img2dataset keys are compared as
        numbers, without formatting every id)."""
        if self.keys is None:
            return np.fromiter((i in ids for i in self.id_list()), dtype=bool, count=len(self))
        assert self.key_format is not None
        fmt = self.key_format
        width = fmt.shard_digits + fmt.sample_digits
        wanted = np.array(
            [int(i) for i in ids if len(i) == width and i.isascii() and i.isdigit()], np.int64
        )
        rows = self.keys[self.index]
        codes = (rows // fmt.samples_per_shard) * 10**fmt.sample_digits
        codes += rows % fmt.samples_per_shard
        return np.isin(codes, wanted)

    def caption_counts(self) -> np.ndarray:
        """(len,) captions per entry."""
        return (self.entry_captions[1:] - self.entry_captions[:-1])[self.index]

    # ------------------------------------------------------------------ (de)serialisation
    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "captions_data": self.captions.data,
            "captions_offsets": self.captions.offsets,
            "entry_captions": self.entry_captions,
            "index": self.index,
        }
        if self.keys is not None:
            out["keys"] = self.keys
        else:
            assert self.media is not None and self.ids is not None
            out.update(
                media_data=self.media.data,
                media_offsets=self.media.offsets,
                ids_data=self.ids.data,
                ids_offsets=self.ids.offsets,
            )
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], key_format: Img2datasetKeys | None
    ) -> EntryTable:
        captions = Strings(arrays["captions_data"], arrays["captions_offsets"])
        if "keys" in arrays:
            return cls(
                captions,
                arrays["entry_captions"],
                keys=arrays["keys"],
                key_format=key_format,
                index=arrays["index"],
            )
        return cls(
            captions,
            arrays["entry_captions"],
            media=Strings(arrays["media_data"], arrays["media_offsets"]),
            ids=Strings(arrays["ids_data"], arrays["ids_offsets"]),
            index=arrays["index"],
        )


@dataclass
class BuiltIndex:
    """An index and what building it skipped.

    Attributes:
        table: the usable entries (every entry has at least one caption).
        skipped: ``[where, reason, kind]`` of each skipped row or entry (``kind`` one of the
            failure tracker's reasons: ``bad_annotation``, ``empty_caption``).
        checks: ``[failed, total, what]`` fraction checks to run on the failure tracker.
    """

    table: EntryTable
    skipped: list[list[str]] = field(default_factory=list)
    checks: list[list[Any]] = field(default_factory=list)


# ====================================================================== the TSV reader
def _check_utf8(raw: bytes | memoryview, path: Path, decoder: Any, consumed: int) -> None:
    try:
        decoder.decode(raw)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"annotations={str(path)!r} is not UTF-8 text ({err.reason} at byte "
            f"{consumed + err.start}); save it as UTF-8"
        ) from None


def _tsv_chunks(path: Path) -> Iterator[tuple[bytes, int]]:
    """(whole lines, byte offset in the file) in slices of about ``_CHUNK_BYTES``."""
    carry = b""
    consumed = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_CHUNK_BYTES)
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                carry = block
                continue
            yield block[:cut], consumed
            consumed += cut
            carry = block[cut:]
    if carry:
        yield carry + b"\n", consumed


def read_img2dataset_tsv(path: str | os.PathLike, key_format: Img2datasetKeys) -> BuiltIndex:
    """Index CC3M's ``caption<TAB>url`` file (the one img2dataset downloads from).

    Rows are the file's lines (ended by ``\\n``, ``\\r\\n`` or ``\\r``, as the csv module
    reads them); a first line naming
    the columns ``caption`` and ``url`` is the header (otherwise the caption is column 1 of
    2). A row with fewer columns than the header is skipped and recorded as
    ``bad_annotation``; a row whose caption is blank as ``empty_caption``. Skipped rows keep
    their number, so later rows keep their img2dataset keys. Captions are stored as written
    and cleaned (whitespace collapsed) when an entry is read.
    """
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    caption_col, width = 0, 2
    header_done = False
    parts: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    bad_rows: list[list[str]] = []
    blank_rows: list[list[str]] = []
    bad = empty = 0
    next_row = 0
    written = 0
    for chunk, consumed in _tsv_chunks(path):
        _check_utf8(chunk, path, decoder, consumed)
        if consumed == 0 and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8) :]
        if not header_done:
            header_done = True
            first_end = chunk.index(b"\n")
            first = chunk[:first_end].rstrip(b"\r").decode("utf-8")
            header = [c.strip().lower() for c in first.split("\t")]
            if "caption" in header and "url" in header:
                caption_col, width = header.index("caption"), len(header)
                chunk = chunk[first_end + 1 :]
        data = np.frombuffer(chunk, dtype=np.uint8)
        line_ends, starts = _lines(data)
        tabs = np.flatnonzero(data == _TAB)
        first_tab = np.searchsorted(tabs, starts)
        tab_count = np.searchsorted(tabs, line_ends) - first_tab
        number = next_row + np.arange(len(starts), dtype=np.int64)
        next_row += len(starts)
        ok = tab_count >= width - 1
        for r in number[~ok].tolist():
            bad_rows.append([f"{path} row {r}", f"fewer than {width} columns", "bad_annotation"])
        bad += int((~ok).sum())
        starts, line_ends, first_tab, tab_count, number = (
            a[ok] for a in (starts, line_ends, first_tab, tab_count, number)
        )
        if caption_col == 0:
            cap_start = starts
        else:
            cap_start = tabs[first_tab + caption_col - 1] + 1
        # the caption ends at the tab after it, or at the end of the line
        has_next_tab = tab_count > caption_col
        if len(tabs):
            after = tabs[np.minimum(first_tab + caption_col, len(tabs) - 1)]
            cap_end = np.where(has_next_tab, after, line_ends)
        else:
            cap_end = line_ends
        blank = _blank_spans(data, cap_start, cap_end)  # as str.split() sees them
        for r in number[blank].tolist():
            where = f"{path} [{key_format.key(r)}: {key_format.media(r)}]"
            blank_rows.append([where, "empty caption", "empty_caption"])
        empty += int(blank.sum())
        keep = ~blank
        cap_start, cap_end, number = cap_start[keep], cap_end[keep], number[keep]
        lengths = cap_end - cap_start
        parts.append(_gather_spans(data, cap_start, lengths))
        offsets.append(written + np.cumsum(lengths))
        written += int(lengths.sum())
        rows.append(number)
    caption_offsets = np.concatenate([np.zeros(1, np.int64), *offsets]).astype(np.int64)
    table = EntryTable(
        Strings(np.concatenate(parts) if parts else np.zeros(0, np.uint8), caption_offsets),
        np.arange(len(caption_offsets), dtype=np.int64),
        keys=np.concatenate(rows) if rows else np.zeros(0, np.int64),
        key_format=key_format,
    )
    if not header_done:
        raise ValueError(f"annotations={str(path)!r} is empty; pass CC3M's TSV")
    kept = len(table)
    return BuiltIndex(
        table,
        bad_rows + blank_rows,
        [[bad, max(1, kept + empty), f"{path} (rows)"], [empty, empty + kept, str(path)]],
    )


def _lines(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(end, start) of every line of ``data`` (which ends with a line break): a line ends at
    ``\\n``, ``\\r\\n`` or a lone ``\\r``, as Python's csv module reads them."""
    cr = data == _CR
    if not cr.any():
        ends = np.flatnonzero(data == _NEWLINE)
        return ends, np.concatenate(([0], ends[:-1] + 1))
    nl = data == _NEWLINE
    after_cr = np.zeros_like(nl)
    after_cr[1:] = cr[:-1]
    ends = np.flatnonzero(cr | (nl & ~after_cr))  # where each line break begins
    crlf = cr[ends] & np.append(nl[1:], False)[ends]
    starts = np.concatenate(([0], (ends + 1 + crlf)[:-1]))
    return ends, starts


def _gather_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of the ordered, disjoint spans ``[starts[i], starts[i] + lengths[i])``,
    concatenated (a mask made by repeating in/out flags over the gaps and spans)."""
    if len(starts) == 0:
        return np.zeros(0, np.uint8)
    ends = starts + lengths
    gaps = starts - np.concatenate(([0], ends[:-1]))
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0:-1:2] = gaps
    counts[1::2] = lengths
    counts[-1] = len(data) - ends[-1]
    flags = np.zeros(len(counts), dtype=bool)
    flags[1::2] = True
    return data[np.repeat(flags, counts)]


# ====================================================================== the JSON-lines reader
def _jsonl_slices(path: Path, slice_chars: int = 1 << 23) -> Iterator[list[Any]]:
    """The parsed values of the non-blank lines of ``path``, one list per slice of whole lines
    (about ``slice_chars`` characters): a slice is parsed by one ``json.loads`` call, and line
    by line only when it holds a blank line or an error (to name the line)."""
    first = 1
    carry = ""
    with open(path, encoding="utf-8-sig") as handle:
        while True:
            block = handle.read(slice_chars)
            text = carry + block
            if not block:
                if not text:
                    return
                text += "\n"
            cut = text.rfind("\n") + 1
            if cut == 0:  # no line break yet: read on
                carry = text
                continue
            text, carry = text[:cut], text[cut:]
            count = text.count("\n")
            values = None
            with contextlib.suppress(json.JSONDecodeError):
                values = json.loads("[" + text[:-1].replace("\n", ",") + "]")
            if values is None or len(values) != count:
                values = []
                for number, line in enumerate(text.split("\n")[:-1], first):
                    if not line.strip():
                        continue
                    try:
                        values.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(
                            f"annotations={str(path)!r} line {number} is not JSON ({err}); "
                            'each line must be one object like {"video": ..., "caption": ...}'
                        ) from err
            first += count
            yield values


def _stem(media: str) -> str:
    """``Path(media).stem``, without making a Path for the plain ``dir/name.ext`` case."""
    name = media.rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\\" in media:
        return Path(media).stem
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _stems(media: Strings) -> Strings:
    """``_stem`` of every string, computed over the bytes (``/`` and ``.`` are single bytes in
    UTF-8); the whole list is done in Python when one needs ``Path`` (a name that is empty,
    ``.`` or ``..``, or a backslash)."""
    data, offsets = media.data, media.offsets
    starts, ends = offsets[:-1], offsets[1:]
    slashes = np.flatnonzero(data == ord("/"))
    last = np.searchsorted(slashes, ends) - 1
    in_item = (last >= 0) & (slashes[np.maximum(last, 0)] >= starts) if len(slashes) else None
    name = starts if in_item is None else np.where(in_item, slashes[last] + 1, starts)
    name_length = ends - name
    through_path = bool((name_length == 0).any() or (data == ord("\\")).any())
    if not through_path:  # every name has a first and a last byte: is it "." or ".."?
        dot = ord(".")
        dotted = (name_length <= 2) & (data[name] == dot) & (data[ends - 1] == dot)
        through_path = bool(dotted.any())
    if through_path:
        return Strings.from_list([_stem(media[i]) for i in range(len(media))])
    dots = np.flatnonzero(data == ord("."))
    stop = ends
    if len(dots):
        last = np.searchsorted(dots, ends) - 1
        dot = dots[np.maximum(last, 0)]
        stop = np.where((last >= 0) & (dot > name) & (dot < ends - 1), dot, ends)
    lengths = stop - name
    return Strings(
        _gather_spans(data, name, lengths),
        _offsets(lengths),
    )


# a path that starts with whitespace (one of the "\0"-joined paths of a slice)
_LEADING_SPACE = re.compile(r"\0\s")


class _JsonlRows:
    """The rows of a JSON-lines manifest as columns (one item per row with a media path),
    gathered slice by slice for :func:`read_caption_jsonl`."""

    def __init__(self, path: Path, wanted: tuple[Any, Any, Any], keys: tuple[Any, Any, Any]):
        self.path, self.wanted, self.keys = path, wanted, keys
        self.m_key: str | None = None
        self.c_key: str | None = None
        self.i_key: str | None = None
        self.media: list[str] = []  # per kept row
        self.ids: list[str] | None = None  # per kept row ("": the media's stem); None: no column
        self.captions: list[str] = []
        self.caption_rows: list[int] = []  # the kept row each caption belongs to
        self.skipped: list[list[str]] = []
        self.rows = self.bad = 0

    def add(self, values: list[Any]) -> None:
        if not values:
            return
        if set(map(type, values)) != {dict}:
            at = next(i for i, v in enumerate(values) if not isinstance(v, dict))
            raise ValueError(
                f"annotations={str(self.path)!r} row {self.rows + at + 1} is "
                f"{type(values[at]).__name__}, not "
                'an object like {"video": ..., "caption": ...}'
            )
        if self.m_key is None:
            from perceiver_vl.data.datasets import _pick_key

            row = values[0]
            (media_key, caption_key, id_key), (media_keys, caption_keys, id_keys) = (
                self.wanted,
                self.keys,
            )
            self.m_key = _pick_key(row, media_key, media_keys, "media")
            self.c_key = _pick_key(row, caption_key, caption_keys, "caption")
            self.i_key = id_key or next((k for k in id_keys if k in row), None)
            self.ids = None if self.i_key is None else []
        if not self._add_columns(values):
            for row in values:
                self._add_row(row)

    def _add_columns(self, values: list[dict[str, Any]]) -> bool:
        """Add the slice column by column when every row has a media path (a string that does not
        start with whitespace), one caption string and a string id or no id column; False
        (nothing added) otherwise."""
        try:  # a row without one of the columns is added row by row
            media = list(map(operator.itemgetter(self.m_key), values))
            captions = list(map(operator.itemgetter(self.c_key), values))
            ids = None if self.ids is None else list(map(operator.itemgetter(self.i_key), values))
        except KeyError:
            return False
        if set(map(type, media)) != {str} or "" in media:
            return False
        if _LEADING_SPACE.search("\0" + "\0".join(media)):  # a blank path, or one to look at
            return False
        if set(map(type, captions)) != {str}:
            return False
        if ids is not None:
            if set(map(type, ids)) != {str}:
                return False
            self.ids.extend(ids)
        start = len(self.media)
        self.media.extend(media)
        self.captions.extend(captions)
        self.caption_rows.extend(range(start, start + len(values)))
        self.rows += len(values)
        return True

    def _add_row(self, row: dict[str, Any]) -> None:
        from perceiver_vl.data.datasets import _clean_captions

        self.rows += 1
        media = row.get(self.m_key)
        if not isinstance(media, str) or not media.strip():
            self.bad += 1
            self.skipped.append(
                [f"{self.path} row {self.rows - 1}", "no media path", "bad_annotation"]
            )
            return
        kept = len(self.media)
        self.media.append(media)
        if self.ids is not None:
            value = row.get(self.i_key)
            self.ids.append(str(value) if value is not None else "")
        cell = row.get(self.c_key)
        captions = [cell] if isinstance(cell, str) else _clean_captions(cell)
        self.captions.extend(captions)
        self.caption_rows.extend([kept] * len(captions))

    def table(self) -> tuple[EntryTable, np.ndarray]:
        """The entries (rows naming one media merged, first row first) and each entry's caption
        count (0: every caption was blank)."""
        media, n = self.media, len(self.media)
        caption_entry = np.asarray(self.caption_rows, dtype=np.int64)
        first_row: np.ndarray | None = None
        if len(set(media)) != n:  # media named by several rows
            unique = list(dict.fromkeys(media))
            entry_of = dict(zip(unique, range(len(unique))))
            row_entry = np.fromiter(map(entry_of.__getitem__, media), np.int64, count=n)
            first_row = np.unique(row_entry, return_index=True)[1]
            caption_entry = row_entry[caption_entry]
            media = unique
        media_strings = Strings.from_list(media)
        if self.ids is None:
            ids = _stems(media_strings)
        else:
            values = self.ids if first_row is None else [self.ids[i] for i in first_row.tolist()]
            if "" in values:
                values = [v or _stem(m) for v, m in zip(values, media)]
            ids = Strings.from_list(values)
        captions = Strings.from_list(self.captions)
        blank = _blank_spans(captions.data, captions.offsets[:-1], captions.offsets[1:])
        if blank.any():
            captions, caption_entry = captions.take(~blank), caption_entry[~blank]
        if len(caption_entry) > 1 and bool((caption_entry[1:] < caption_entry[:-1]).any()):
            order = np.argsort(caption_entry, kind="stable")
            captions, caption_entry = captions.take(order), caption_entry[order]
        counts = np.bincount(caption_entry, minlength=len(media))
        entry_captions = _offsets(counts)
        return EntryTable(captions, entry_captions, media=media_strings, ids=ids), counts


def read_caption_jsonl(
    path: str | os.PathLike,
    *,
    media_keys: Sequence[str],
    caption_keys: Sequence[str],
    id_keys: Sequence[str],
    media_key: str | None = None,
    caption_key: str | None = None,
    id_key: str | None = None,
) -> BuiltIndex:
    """Index a JSON-lines manifest, one ``{"<media>": ..., "<caption>": ...}`` per line.

    The columns are chosen from the first row (``media_key`` / ``caption_key`` / ``id_key``, or
    the first of ``media_keys`` / ``caption_keys`` / ``id_keys`` present); a caption cell may
    hold a list. Rows naming the same media are merged into one entry (first row's position,
    captions in file order); a row without a media path is skipped as ``bad_annotation``, a
    media left without captions as ``empty_caption``. The entry id is the id column's value,
    else the media file's stem. Captions are stored as written and cleaned (whitespace
    collapsed) when an entry is read.

    The file is parsed in slices of a few megabytes, one ``json.loads`` each; a slice of plain
    rows (a media path and one caption string each, a string id or none) is taken column by
    column, any other row by row, and the merging, ids and blank captions are then worked out
    with numpy over all rows at once.
    """
    path = Path(path)
    rows = _JsonlRows(path, (media_key, caption_key, id_key), (media_keys, caption_keys, id_keys))
    try:
        for values in _jsonl_slices(path):
            rows.add(values)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"annotations={str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "save it as UTF-8"
        ) from None
    if rows.rows == 0:
        raise ValueError(
            f"annotations={str(path)!r} holds no rows; an empty data set would train or "
            "evaluate on nothing. Check the file (or the split it was written for)"
        )
    table, counts = rows.table()
    skipped = rows.skipped
    captionless = np.flatnonzero(counts == 0)
    assert table.ids is not None and table.media is not None
    for e in captionless.tolist():
        skipped.append(
            [f"{path} [{table.ids[e]}: {table.media[e]}]", "empty caption", "empty_caption"]
        )
    kept = table.select(np.flatnonzero(counts > 0))
    return BuiltIndex(
        kept,
        skipped,
        [
            [rows.bad, max(1, rows.rows), f"{path} (rows)"],
            [len(captionless), len(counts), str(path)],
        ],
    )


# ====================================================================== the cache
def _cache_file(folder: Path, annotations: Path, reader: str, options: dict[str, Any]) -> Path:
    ident = json.dumps([str(annotations), reader, options], sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return folder / f"{annotations.name}.{reader}-{digest}.index.npz"


def _stamp(annotations: Path, reader: str, options: dict[str, Any]) -> dict[str, Any]:
    stat = annotations.stat()
    return {
        "version": CACHE_VERSION,
        "path": str(annotations),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "reader": reader,
        "options": options,
    }


def _load(file: Path, stamp: dict[str, Any], key_format: Img2datasetKeys | None):
    with np.load(file, allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        if meta.get("stamp") != stamp:
            return None
        arrays = {name: archive[name] for name in archive.files if name != "meta"}
    return BuiltIndex(EntryTable.from_arrays(arrays, key_format), meta["skipped"], meta["checks"])


def _save(file: Path, built: BuiltIndex, stamp: dict[str, Any]) -> None:
    meta = {"stamp": stamp, "skipped": built.skipped, "checks": built.checks}
    arrays = built.table.arrays()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_open(file, "wb") as handle:
        np.savez(handle, **arrays)


def cached_index(
    annotations: str | os.PathLike,
    reader: str,
    options: dict[str, Any],
    build: Callable[[], BuiltIndex],
    cache_dir: str | os.PathLike | None,
    *,
    key_format: Img2datasetKeys | None = None,
) -> tuple[BuiltIndex, str]:
    """The index of ``annotations`` from ``cache_dir``, or built by ``build()`` and saved there.

    Returns (index, how it was obtained: ``"built"``, ``"cached"``, or ``"uncached"`` when
    ``cache_dir`` is None). The cache holds for the same resolved path, reader and options as
    long as the file's size and modification time are unchanged; a cache that cannot be read
    is rebuilt with a warning, and one that cannot be written is skipped with a warning.
    """
    if cache_dir is None:
        return build(), "uncached"
    annotations = Path(annotations).resolve()
    stamp = _stamp(annotations, reader, options)
    file = _cache_file(Path(cache_dir), annotations, reader, options)
    if file.is_file():
        try:
            loaded = _load(file, stamp, key_format)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning(
                "index cache %s is unreadable (%s: %s); rebuilding it from %s",
                file,
                type(err).__name__,
                err,
                annotations,
            )
            loaded = None
        else:
            if loaded is None:
                logger.info("%s changed since %s was written; re-indexing", annotations, file)
        if loaded is not None:
            loaded.table.source = stamp
            return loaded, "cached"
    built = build()
    built.table.source = stamp
    try:
        _save(file, built, stamp)
    except OSError as err:
        logger.warning("could not write the index cache %s (%s); continuing without", file, err)
    return built, "built"


__all__ = [
    "BuiltIndex",
    "EntryTable",
    "Img2datasetKeys",
    "Strings",
    "cached_index",
    "normalize_caption",
    "read_caption_jsonl",
    "read_img2dataset_tsv",
]
