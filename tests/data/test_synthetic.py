from __future__ import annotations

import json

import pytest
import torch

from perceiver_vl.data import load_image, load_video
from perceiver_vl.data.synthetic import (
    generate_benchmark,
    generate_image_benchmark,
    image_captions,
    video_captions,
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return generate_benchmark(
        out, num_train=40, num_val=8, num_test=24, frames=(8, 12), workers=2, progress=False
    )


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_layout_and_records(bench):
    meta = json.loads((bench / "meta.json").read_text())
    assert meta["counts"] == {"train": 40, "val": 8, "test": 24}
    assert meta["num_distinct_captions"] == len(video_captions()) >= 500
    for split, count in meta["counts"].items():
        rows = _read(bench / f"{split}.jsonl")
        assert len(rows) == count
        for row in rows:
            assert row["video"].startswith("videos/") and row["video"].endswith(".mp4")
            assert (bench / row["video"]).stat().st_size > 0
            words = row["caption"].split()
            assert words[0] == "a" and words[4] == "moves" and words[6] == "then"
            assert words[5] != words[7]  # two different directions
    test_captions = [r["caption"] for r in _read(bench / "test.jsonl")]
    assert len(set(test_captions)) == len(test_captions)


def test_clips_decode_with_declared_frames(bench):
    row = _read(bench / "test.jsonl")[0]
    video, mask = load_video(bench / row["video"], num_frames=16, size=64)
    assert video.shape == (16, 3, 64, 64)
    assert int(mask.sum()) == row["frames"]
    # the shape moves: consecutive real frames differ
    real = video[mask]
    assert (real[0] - real[-1]).abs().mean() > 0.01


def test_seeded_and_reused(bench, tmp_path):
    again = generate_benchmark(
        tmp_path / "b",
        num_train=40,
        num_val=8,
        num_test=24,
        frames=(8, 12),
        workers=1,
        progress=False,
    )
    assert (again / "test.jsonl").read_text() == (bench / "test.jsonl").read_text()
    first = load_video(bench / "videos/test_00003.mp4", 8, 64)[0]
    second = load_video(again / "videos/test_00003.mp4", 8, 64)[0]
    assert torch.equal(first, second)
    stamp = (again / "videos/test_00000.mp4").stat().st_mtime_ns
    generate_benchmark(again, num_train=40, num_val=8, num_test=24, frames=(8, 12), progress=False)
    assert (again / "videos/test_00000.mp4").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = generate_benchmark(
        tmp_path / "c",
        num_train=0,
        num_val=0,
        num_test=24,
        frames=(8, 12),
        seed=1,
        progress=False,
    )
    assert (other / "test.jsonl").read_text() != (bench / "test.jsonl").read_text()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_test"):
        generate_benchmark(tmp_path, num_train=0, num_val=0, num_test=10_000, progress=False)
    with pytest.raises(ValueError, match="size"):
        generate_benchmark(tmp_path, num_train=1, num_val=0, num_test=0, size=63, progress=False)
    with pytest.raises(ValueError, match="frames"):
        generate_benchmark(
            tmp_path, num_train=1, num_val=0, num_test=0, frames=(9, 3), progress=False
        )


def test_image_variant(tmp_path):
    out = generate_image_benchmark(
        tmp_path, num_train=10, num_val=2, num_test=12, progress=False, workers=1
    )
    rows = _read(out / "test.jsonl")
    assert len({r["caption"] for r in rows}) == 12
    assert len(image_captions()) >= 500
    for row in rows:
        assert " above " in row["caption"] or " to the left of " in row["caption"]
        assert load_image(out / row["image"], 64).shape == (3, 64, 64)


def test_cli_generate_synthetic(tmp_path, capsys):
    from perceiver_vl.cli import main

    code = main(
        [
            "generate-synthetic",
            "--out",
            str(tmp_path / "s"),
            "--num-train",
            "3",
            "--num-val",
            "1",
            "--num-test",
            "2",
            "--frames",
            "8",
            "9",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    assert len(_read(tmp_path / "s" / "train.jsonl")) == 3
    assert "wrote" in capsys.readouterr().out
    code = main(
        [
            "generate-synthetic",
            "--out",
            str(tmp_path / "i"),
            "--image",
            "--num-train",
            "2",
            "--num-val",
            "0",
            "--num-test",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0 and (tmp_path / "i" / "images").is_dir()
