"""Media and annotation faults: no file is ever replaced by another, a file's content must match
its extension, annotation files in the wrong encoding or without rows are named, and every run
that skipped samples reports them (stderr + skipped_samples.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perceiver_vl.data import CaptionDataset, MediaError, load_media
from perceiver_vl.data.datasets import read_annotations
from perceiver_vl.train.datamodule import PerceiverVLDataModule
from tests.data.helpers import write_image, write_video


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_video(root / "clip.mp4", 4, width=32, height=32)
    write_image(root / "still.png", width=32, height=32)
    write_image(root / "photo.jpg", width=32, height=32)
    return root


@pytest.mark.parametrize(
    ("source", "renamed", "phrase"),
    [
        ("still.png", "fake.mp4", "not what its extension '.mp4' says"),
        ("still.png", "fake.webm", "not what its extension '.webm' says"),
        ("photo.jpg", "fake.png", "not what its extension '.png' says"),
        ("still.png", "fake.jpg", "not what its extension '.jpg' says"),
    ],
)
def test_content_that_disagrees_with_the_extension_is_refused(
    media, tmp_path, source, renamed, phrase
):
    shutil.copy(media / source, tmp_path / renamed)
    with pytest.raises(MediaError, match=phrase) as caught:
        load_media(tmp_path / renamed, 2, 32)
    assert caught.value.kind == "wrong_format"


def test_a_video_renamed_png_is_refused(media, tmp_path):
    shutil.copy(media / "clip.mp4", tmp_path / "clip.png")
    with pytest.raises(MediaError, match="not a readable image"):
        load_media(tmp_path / "clip.png", 2, 32)


def test_a_text_file_named_mp4_is_refused(tmp_path):
    (tmp_path / "notes.mp4").write_text("just some words\n")
    with pytest.raises(MediaError, match="not a readable media file") as caught:
        load_media(tmp_path / "notes.mp4", 2, 32)
    assert caught.value.kind == "undecodable"


def test_matching_media_still_load(media):
    video, mask, is_image = load_media(media / "clip.mp4", 2, 32)
    assert video.shape == (2, 3, 32, 32) and mask.all() and not is_image
    assert load_media(media / "still.png", 2, 32)[2]


def _dataset(root: Path, rows: list[tuple[str, str]], **kwargs) -> CaptionDataset:
    path = root / "ann.jsonl"
    path.write_text("\n".join(json.dumps({"video": v, "caption": c}) for v, c in rows))
    return CaptionDataset(path, root, num_frames=2, size=32, **kwargs)


def test_a_missing_file_is_counted_never_replaced_by_a_sibling(media, tmp_path):
    shutil.copy(media / "still.png", tmp_path / "x.png")  # x.mp4 is missing, x.png is beside it
    dataset = _dataset(tmp_path, [("x.mp4", "a thing")], max_failure_fraction=1.0)
    assert dataset[0] is None
    assert dataset.tracker.counts["missing"] == 1 and dataset.tracker.counts["ok"] == 0
    assert "x.mp4" in dataset.tracker.summary()


def test_converted_media_are_named_explicitly(media, tmp_path):
    shutil.copy(media / "clip.mp4", tmp_path / "x.mp4")
    dataset = _dataset(tmp_path, [("x.mov", "a thing")], media_extension=".mp4")
    assert dataset[0] is not None
    with pytest.raises(ValueError, match="media_extension='mp4' must be an extension"):
        _dataset(tmp_path, [("x.mov", "a thing")], media_extension="mp4")


def test_a_renamed_file_in_a_data_set_is_a_wrong_format_skip(media, tmp_path):
    shutil.copy(media / "still.png", tmp_path / "y.mp4")
    dataset = _dataset(tmp_path, [("y.mp4", "a thing")], max_failure_fraction=1.0)
    assert dataset[0] is None and dataset.tracker.counts["wrong_format"] == 1


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        (
            "latin1.jsonl",
            '{"video": "a.mp4", "caption": "caf\u00e9"}\n'.encode("latin-1"),
            "is not UTF-8 text",
        ),
        ("latin1.csv", "video,caption\na.mp4,caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
        (
            "latin1.json",
            '[{"video": "a.mp4", "caption": "caf\u00e9"}]'.encode("latin-1"),
            "is not UTF-8 text",
        ),
        ("empty.jsonl", b"", "holds no rows"),
        ("blank.jsonl", b"\n\n  \n", "holds no rows"),
        ("header.csv", b"video,caption\n", "holds no rows"),
        ("strings.json", b'["a.mp4", "b.mp4"]', "row 1 is str, not an object"),
        ("broken.jsonl", b'{"video": "a.mp4", "caption": "x"}\n{"video": \n', "line 2 is not JSON"),
        ("table.xlsx", b"PK", "unknown extension '.xlsx'"),
    ],
)
def test_bad_annotation_files_are_named(tmp_path, name, content, phrase):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=phrase) as caught:
        read_annotations(path)
    assert name in str(caught.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_annotation_files_with_a_byte_order_mark_are_read(tmp_path, suffix):
    text = {
        ".jsonl": '{"video": "a.mp4", "caption": "a dog"}\n',
        ".csv": "video,caption\na.mp4,a dog\n",
        ".json": '[{"video": "a.mp4", "caption": "a dog"}]',
    }[suffix]
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_annotations(path) == [{"video": "a.mp4", "caption": "a dog"}]


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_annotations(tmp_path / "nothing.jsonl")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_that_skipped_samples_reports_them_beside_its_outputs(
    media, tmp_path, capsys, workers
):
    for i in range(3):
        shutil.copy(media / "clip.mp4", tmp_path / f"good{i}.mp4")
    rows = [{"video": f"good{i}.mp4", "caption": f"good clip {i}"} for i in range(3)]
    rows.append({"video": "gone.mp4", "caption": "a missing clip"})
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = PerceiverVLDataModule(
        train={
            "kind": "captions",
            "annotations": str(tmp_path / "ann.jsonl"),
            "media_root": str(tmp_path),
            "max_failure_fraction": 1.0,
        },
        batch_size=2,
        num_workers=workers,
        num_frames=2,
        image_size=32,
        max_text_length=16,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["video"].shape[0] for b in batches if b is not None) == 3
    written = dm.report_skipped(tmp_path / "run")
    report = json.loads(written.read_text())
    assert report[0]["skipped"] == 1 and report[0]["by_reason"] == {"missing": 1}
    assert report[0]["first_paths"][0]["path"].endswith("gone.mp4")
    assert "skipped samples" in capsys.readouterr().err


def test_a_run_without_skips_writes_no_report(tmp_path):
    dm = PerceiverVLDataModule(batch_size=2, num_workers=0)
    assert dm.report_skipped(tmp_path) is None and not (tmp_path / "skipped_samples.json").exists()


def test_an_annotation_row_without_a_needed_field_is_named(tmp_path):
    root = tmp_path / "didemo"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "test_data.json").write_text(json.dumps([{"description": "x"}]))
    dm = PerceiverVLDataModule(test={"kind": "didemo", "root": str(root), "split": "test"})
    with pytest.raises(ValueError, match="has an entry without 'video'"):
        dm.dataset("test")
