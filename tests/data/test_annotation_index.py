"""The compact annotation indexes (CC3M's TSV, JSON-lines manifests) and their on-disk cache."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from perceiver_vl.data import CC3M, CaptionDataset
from perceiver_vl.data import annotation_index as ai
from perceiver_vl.train.datamodule import PerceiverVLDataModule


def _reference_tsv(path, per_shard=10000, shard_digits=5):
    """(media, captions, id) of each usable row and the skipped row numbers, read row by row
    with the csv module (the reading the numpy parser must reproduce)."""
    digits = len(str(per_shard - 1))
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    col, width = 0, 2
    header = [c.strip().lower() for c in rows[0]]
    if "caption" in header and "url" in header:
        col, width, rows = header.index("caption"), len(header), rows[1:]
    kept, bad, blank = [], [], []
    for i, row in enumerate(rows):
        if len(row) < width:
            bad.append(i)
            continue
        caption = " ".join(row[col].split())
        if not caption:
            blank.append(i)
            continue
        shard, pos = divmod(i, per_shard)
        key = f"{shard * 10**digits + pos:0{shard_digits + digits}d}"
        kept.append((f"{key[:-digits]}/{key}.jpg", [caption], key))
    return kept, bad, blank


@pytest.mark.parametrize("header", ["", "caption\turl\n", "url\tcaption\n"])
def test_tsv_index_reads_rows_as_the_csv_module(tmp_path, header):
    rng = np.random.default_rng(0)
    words = ["a", "dog", "café", "ünï", "  ", "\u3000", "x\u00a0y"]
    lines = []
    for i in range(400):
        caption = " ".join(rng.choice(words, size=int(rng.integers(0, 5))))
        url = f"http://a/{i}.jpg"
        line = f"{url}\t{caption}" if header.startswith("url") else f"{caption}\t{url}"
        kind = rng.random()
        if kind < 0.05:
            line = caption  # one column: a bad row
        elif kind < 0.08:
            line = ""
        elif kind < 0.15:
            line += "\r"  # a \r\n line ending
        lines.append(line)
    path = tmp_path / "cc3m.tsv"
    path.write_text(header + "\n".join(lines) + "\n\r", encoding="utf-8")
    ds = CC3M(path, tmp_path, samples_per_shard=7, shard_digits=3, max_failure_fraction=1.0)
    kept, bad, blank = _reference_tsv(path, 7, 3)
    assert [(e.media, e.captions, e.id) for e in ds.entries] == kept
    assert ds.tracker.counts["bad_annotation"] == len(bad) > 0
    assert ds.tracker.counts["empty_caption"] == len(blank) > 0


def test_tsv_index_spans_several_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(ai, "_CHUNK_BYTES", 64)  # many slices, lines cut across them
    path = tmp_path / "cc3m.tsv"
    path.write_text("".join(f"caption number {i}\thttp://a/{i}.jpg\n" for i in range(50)))
    ds = CC3M(path, tmp_path)
    assert [e.captions[0] for e in ds.entries] == [f"caption number {i}" for i in range(50)]
    assert ds.entries[49].id == "000000049"


def test_tsv_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("caf\u00e9\thttp://a/0.jpg\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.tsv.*not UTF-8"):
        CC3M(path, tmp_path)


def test_jsonl_index_merges_media_and_counts_bad_rows(tmp_path):
    rows = [
        {"video": "a.mp4", "caption": "first  caption", "id": "A"},
        {"video": "b.mp4", "caption": ["one", "two"]},
        {"video": "", "caption": "no media"},
        {"video": "a.mp4", "caption": "second caption"},
        {"video": "c.mp4", "caption": "   "},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    ds = CaptionDataset(path, max_failure_fraction=1.0, pairs=True)
    entries = [(e.media, e.captions, e.id) for e in ds.entries]
    assert entries == [
        ("a.mp4", ["first caption", "second caption"], "A"),
        ("b.mp4", ["one", "two"], "b"),
    ]
    assert len(ds) == 4 and ds._pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]
    counts = ds.tracker.counts
    assert counts["bad_annotation"] == 1 and counts["empty_caption"] == 1
    (tmp_path / "broken.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl.*line 2 is not JSON"):
        CaptionDataset(tmp_path / "broken.jsonl")


def _reference_jsonl(path):
    """(media, captions, id) of each entry, the bad row numbers and the captionless media of a
    JSON-lines manifest with ``video``/``caption``/(``id``) columns, read row by row as
    read_caption_jsonl documents it (the column-wise reader must reproduce it)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with_id = "id" in rows[0]
    entries, bad = {}, []
    for number, row in enumerate(rows):
        media = row.get("video")
        if not isinstance(media, str) or not media.strip():
            bad.append(number)
            continue
        if media not in entries:
            value = row.get("id") if with_id else None
            ident = (str(value) if value is not None else "") or Path(media).stem
            entries[media] = (ident, [])
        cell = row.get("caption")
        cells = cell if isinstance(cell, list) else [cell]
        entries[media][1].extend(
            " ".join(str(c).split()) for c in cells if c is not None and not isinstance(c, dict)
        )
    kept = [(m, [c for c in caps if c], i) for m, (i, caps) in entries.items()]
    return [k for k in kept if k[1]], bad, [k[0] for k in kept if not k[1]]


@pytest.mark.parametrize("seed", range(6))
def test_jsonl_index_reads_rows_as_documented(tmp_path, monkeypatch, seed):
    """Plain slices (taken column by column) and irregular ones (row by row), slices cut
    anywhere, merged media across slices, blank and Unicode-space captions, ids."""
    rng = np.random.default_rng(seed)
    odd_media = [
        "   ",
        "",
        None,
        5,
        " lead.mp4",
        "x\\y.mp4",
        "dir/",
        "..",
        "k/.",
        "é/ü.mp4",
        "d.",
        ".hidden",
        "e.x.y",
    ]
    words = ["a", "dog", "café", "  ", "\u3000", "x\u00a0y", "\t", ""]
    with_id = seed % 2 == 1
    rows = []
    for i in range(300):
        plain = (i // 40) % 2 == 0  # runs of plain rows between irregular ones
        if plain:
            media = f"v{int(rng.integers(0, 400 if seed < 3 else 10**9))}/{i}.mp4"
            caption = " ".join(rng.choice(words, size=int(rng.integers(0, 4))))
        else:
            media = odd_media[int(rng.integers(len(odd_media)))] if rng.random() < 0.5 else "a.mp4"
            caption = [["one", "  ", None, {}], None, 3, "  two  words ", {"x": 1}][
                int(rng.integers(5))
            ]
        row = {"video": media, "caption": caption}
        if with_id:
            row["id"] = f"id{i}" if plain else [f"id{i}", "", None, 7][int(rng.integers(4))]
        rows.append(row)
    path = tmp_path / "manifest.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=bool(seed % 3)) + "\n" for r in rows)
    path.write_text(text + ("\n" if seed % 2 else ""), encoding="utf-8")
    slices = ai._jsonl_slices
    monkeypatch.setattr(ai, "_jsonl_slices", lambda p: slices(p, [50, 300, 4000][seed % 3]))
    ds = CaptionDataset(path, max_failure_fraction=1.0)
    kept, bad, captionless = _reference_jsonl(path)
    assert [(e.media, e.captions, e.id) for e in ds.entries] == kept
    assert ds.tracker.counts["bad_annotation"] == len(bad) > 0
    assert ds.tracker.counts["empty_caption"] == len(captionless)


def test_jsonl_slices_name_the_bad_line_and_skip_blank_ones(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\r\n{"a": 3}')  # blank lines, CRLF, no final break
    for size in (1, 7, 1 << 20):
        assert [v for s in ai._jsonl_slices(path, size) for v in s] == [
            {"a": 1},
            {"a": 2},
            {"a": 3},
        ]
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}, {"a": 4}\n')  # two values on line 3
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        list(ai._jsonl_slices(path, 1 << 20))


def test_strings_take_and_stems():
    values = ["dir/a.mp4", "b", "é/ü.x.mp4", "c.", ".d", "", "e/f/g.jpg"]
    strings = ai.Strings.from_list(values)
    assert [strings.take(np.array([6, 0, 2]))[i] for i in range(3)] == [
        values[6],
        values[0],
        values[2],
    ]
    mask = np.array([True, False, True, False, False, True, True])
    assert [strings.take(mask)[i] for i in range(4)] == ["dir/a.mp4", "é/ü.x.mp4", "", "e/f/g.jpg"]
    plain = ai.Strings.from_list(["dir/a.mp4", "b", "é/ü.x.mp4", "c.", ".d", "e/f/g.jpg", "h/i."])
    stems = ai._stems(plain)
    assert [stems[i] for i in range(len(stems))] == ["a", "b", "ü.x", "c.", ".d", "g", "i."]
    odd = ["a/..", "b\\c.mp4", "d/", "k/."]  # these go through Path
    assert [ai._stems(ai.Strings.from_list(odd))[i] for i in range(4)] == [
        Path(p).stem for p in odd
    ]
    spans = ai.Strings.from_list(["a", "", "  ", "\u3000", " b ", "\u00a0x"])
    blank = ai._blank_spans(spans.data, spans.offsets[:-1], spans.offsets[1:])
    assert blank.tolist() == [False, True, True, True, False, False]


def _tsv(path, rows):
    path.write_text(
        "caption\turl\n" + "".join(f"{c}\thttp://a/{i}.jpg\n" for i, c in enumerate(rows))
    )
    return path


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    path = _tsv(tmp_path / "cc3m.tsv", ["a cat", "", "a dog", "a bird"])
    cache = tmp_path / "cache"
    first = CC3M(path, tmp_path, index_cache=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    written = files[0].stat().st_mtime_ns

    def no_parse(*args, **kwargs):
        raise AssertionError("the annotation file was parsed again")

    monkeypatch.setattr(ai, "read_img2dataset_tsv", no_parse)
    monkeypatch.setattr("perceiver_vl.data.datasets.read_img2dataset_tsv", no_parse)
    again = CC3M(path, tmp_path, index_cache=cache)
    assert [(e.media, e.captions, e.id) for e in again.entries] == [
        (e.media, e.captions, e.id) for e in first.entries
    ]
    # what the build skipped is still recorded by a data set loaded from the cache
    assert again.tracker.counts["empty_caption"] == first.tracker.counts["empty_caption"] == 1
    assert files[0].stat().st_mtime_ns == written and list(cache.iterdir()) == files


def test_changed_annotation_file_is_reindexed(tmp_path):
    path = _tsv(tmp_path / "cc3m.tsv", ["a cat", "a dog"])
    cache = tmp_path / "cache"
    assert len(CC3M(path, tmp_path, index_cache=cache)) == 2
    _tsv(path, ["a cat", "a dog", "a bird"])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    ds = CC3M(path, tmp_path, index_cache=cache)
    assert [e.captions[0] for e in ds.entries] == ["a cat", "a dog", "a bird"]
    assert len(list(cache.iterdir())) == 1  # replaced, not piled up
    # other reader options are another index of the same file
    CC3M(path, tmp_path, index_cache=cache, samples_per_shard=2)
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", [b"not a zip file", b""])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    rows = [{"image": f"{i}.jpg", "caption": f"caption {i}"} for i in range(3)]
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    CaptionDataset(path, index_cache=cache)
    (file,) = cache.iterdir()
    file.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="perceiver_vl.data"):
        ds = CaptionDataset(path, index_cache=cache)
    assert "unreadable" in caplog.text and file.name in caplog.text
    assert [e.captions for e in ds.entries] == [[f"caption {i}"] for i in range(3)]
    with np.load(file, allow_pickle=False) as archive:  # rewritten whole
        assert "meta" in archive.files


def test_data_module_builds_the_index_once_for_every_rank(tmp_path, monkeypatch):
    path = _tsv(tmp_path / "cc3m.tsv", [f"caption {i}" for i in range(20)])
    spec = {"kind": "cc3m", "annotations": str(path), "image_root": str(tmp_path)}
    cache = tmp_path / "run" / "index_cache"
    first = PerceiverVLDataModule(train=spec, index_cache=str(cache), num_workers=0)
    first.prepare_data()  # local rank 0; Lightning keeps the other ranks at a barrier meanwhile
    assert len(list(cache.iterdir())) == 1
    # another rank: setup loads the index and never parses the file
    monkeypatch.setattr(
        "perceiver_vl.data.datasets.read_img2dataset_tsv",
        lambda *a, **k: pytest.fail("a second process parsed the annotation file"),
    )
    other = PerceiverVLDataModule(train=spec, index_cache=str(cache), num_workers=0)
    other.setup("fit")
    ((name, dataset),) = other.datasets["train"]
    assert len(dataset) == 20 and dataset.entries[19].captions == ["caption 19"]
    # without a Trainer and with the default, there is no cache folder; false turns it off
    assert PerceiverVLDataModule(train=spec).index_cache_dir is None
    assert PerceiverVLDataModule(train=spec, index_cache=False).index_cache_dir is None
    with pytest.raises(ValueError, match="data.index_cache"):
        PerceiverVLDataModule(train=spec, index_cache=3)


def test_holdout_on_a_compact_index(tmp_path):
    path = _tsv(tmp_path / "cc3m.tsv", [f"caption {i}" for i in range(40)])
    spec = {"kind": "cc3m", "annotations": str(path), "image_root": str(tmp_path)}
    dm = PerceiverVLDataModule(
        train={**spec, "holdout": {"size": 5, "seed": 0}}, val="holdout", num_workers=0
    )
    dm.setup("fit")
    ((_, train),) = dm.datasets["train"]
    ((_, val),) = dm.datasets["val"]
    train_ids = {e.id for e in train.entries}
    val_ids = {e.id for e in val.entries}
    assert len(val_ids) == 5 and len(train_ids) == 35 and not train_ids & val_ids


def test_holdout_ids_are_the_lowest_keyed_hashes():
    from perceiver_vl.data.splits import _rank_key, holdout_ids

    ids = [f"{i:09d}" for i in range(500)] + ["video7", "video7"]
    for seed in (0, 3):
        ranked = sorted(sorted(set(ids)), key=lambda item: _rank_key(seed, item))
        assert holdout_ids(ids, 20, seed) == set(ranked[:20])
        assert holdout_ids(reversed(ids), 0.1, seed) == set(ranked[:50])


def test_held_out_ids_are_cached_beside_the_index(tmp_path, monkeypatch):
    path = _tsv(tmp_path / "cc3m.tsv", [f"caption {i}" for i in range(40)])
    spec = {"kind": "cc3m", "annotations": str(path), "image_root": str(tmp_path)}
    options = dict(
        train={**spec, "holdout": {"size": 5, "seed": 1}},
        val="holdout",
        num_workers=0,
        index_cache=str(tmp_path / "cache"),
    )
    first = PerceiverVLDataModule(**options)
    first.prepare_data()
    assert len(list((tmp_path / "cache").glob("holdout-*.json"))) == 1
    first.setup("fit")
    ((_, val),) = first.datasets["val"]
    # another rank draws nothing: the ids come from the cache
    monkeypatch.setattr(
        ai.EntryTable, "id_list", lambda self: pytest.fail("the held-out ids were drawn again")
    )
    other = PerceiverVLDataModule(**options)
    other.setup("fit")
    ((_, val_again),) = other.datasets["val"]
    ((_, train),) = other.datasets["train"]
    assert {e.id for e in val_again.entries} == {e.id for e in val.entries}
    assert len(train) == 35 and not {e.id for e in train.entries} & {e.id for e in val.entries}
