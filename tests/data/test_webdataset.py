from __future__ import annotations

import io
import json
import tarfile

import pytest
from torch.utils.data import DataLoader

from perceiver_vl.data import Collator
from perceiver_vl.data.webdataset import WebDatasetShards, expand_urls, iter_tar_samples

from .helpers import write_image, write_video

SIZE = 24


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards x 4 samples as video2dataset / img2dataset write them (+ 1 bad sample)."""
    root = tmp_path_factory.mktemp("wds")
    video = write_video(root / "src.mp4", 10, width=32, height=32).read_bytes()
    image = write_image(root / "src.jpg").read_bytes()
    keys = []
    for s in range(3):
        with tarfile.open(root / f"shard-{s:05d}.tar", "w") as archive:
            for i in range(4):
                key = f"{s:05d}{i:04d}"
                keys.append(key)
                media, ext = (image, "jpg") if i == 3 else (video, "mp4")
                _add(archive, f"{key}.{ext}", media)
                _add(archive, f"{key}.txt", f"sample {key}".encode())
                _add(archive, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
            if s == 2:
                _add(archive, "bad0001.mp4", b"garbage" * 20)  # undecodable
                _add(archive, "bad0001.txt", b"broken video")
    return root, keys


def _keys(ds):
    return [item["video_id"] for item in ds]


def test_expand_urls(shards, tmp_path):
    root, _ = shards
    assert expand_urls(f"{root}/shard-{{00000..00002}}.tar") == [
        f"{root}/shard-0000{i}.tar" for i in range(3)
    ]
    assert len(expand_urls(str(root))) == 3
    assert expand_urls("a.tar::b.tar") == ["a.tar", "b.tar"]


def test_stream_all_samples_and_skip_bad(shards):
    root, keys = shards
    ds = WebDatasetShards(
        f"{root}/shard-{{00000..00002}}.tar", num_frames=4, size=SIZE, max_failure_fraction=0.5
    )
    items = list(ds)
    assert [i["video_id"] for i in items] == keys
    video_item, image_item = items[0], items[3]
    assert video_item["video"].shape == (4, 3, SIZE, SIZE) and video_item["video_mask"].all()
    assert image_item["is_image"] and image_item["video"].shape == (1, 3, SIZE, SIZE)
    assert video_item["text"] == f"sample {keys[0]}" and video_item["meta"]["status"] == "success"
    assert ds.tracker.counts["undecodable"] == 1 and ds.tracker.counts["ok"] == 12
    assert "bad0001" in ds.tracker.summary()


def test_split_across_ranks_and_workers(shards):
    root, keys = shards
    urls = f"{root}/shard-{{00000..00002}}.tar"
    parts = [
        _keys(
            WebDatasetShards(
                urls, num_frames=2, size=SIZE, rank=r, world_size=2, max_failure_fraction=1
            )
        )
        for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(keys)
    # 4 consumers > 3 shards: sample-level split
    parts = [
        _keys(
            WebDatasetShards(
                urls, num_frames=2, size=SIZE, rank=r, world_size=4, max_failure_fraction=1
            )
        )
        for r in range(4)
    ]
    assert sum(len(p) for p in parts) == len(keys) and len(set().union(*parts)) == len(keys)
    ds = WebDatasetShards(urls, num_frames=2, size=SIZE, max_failure_fraction=1)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=Collator())
    seen = [vid for batch in loader for vid in batch["video_id"]]
    assert sorted(seen) == sorted(keys)
    assert ds.tracker.counts["ok"] == 12  # counted in the workers, read here


def test_train_shuffle_is_seeded(shards):
    root, keys = shards
    urls = str(root)

    def order(epoch, seed=0):
        ds = WebDatasetShards(
            urls,
            num_frames=1,
            size=8,
            train=True,
            shuffle_buffer=5,
            seed=seed,
            max_failure_fraction=1,
        )
        ds.set_epoch(epoch)
        return _keys(ds)

    first = order(0)
    assert sorted(first) == sorted(keys) and first != keys
    assert order(0) == first and order(1) != first


def test_resampled_epochs(shards):
    root, keys = shards
    ds = WebDatasetShards(
        str(root),
        num_frames=1,
        size=8,
        resample=True,
        samples_per_epoch=20,
        world_size=2,
        rank=0,
        max_failure_fraction=1,
    )
    assert len(ds) == 10
    got = _keys(ds)
    assert len(got) == 10 and set(got) <= set(keys)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collator())
    assert sum(len(b["video_id"]) for b in loader) == 10
    with pytest.raises(TypeError, match="samples_per_epoch"):
        len(WebDatasetShards(str(root)))


def test_truncated_and_missing_shards(shards, tmp_path):
    root, keys = shards
    data = (root / "shard-00000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    ds = WebDatasetShards(
        [str(cut), str(tmp_path / "gone.tar")], num_frames=1, size=8, max_failure_fraction=1
    )
    got = _keys(ds)
    assert 0 < len(got) < 4 and got == keys[: len(got)]
    counts = ds.tracker.counts
    assert counts["missing"] == 1 and counts["undecodable"] == 1
    with pytest.raises(Exception, match="gone.tar"):
        list(iter_tar_samples(str(tmp_path / "gone.tar")))
    strict = WebDatasetShards(str(tmp_path / "gone.tar"), strict=True)
    with pytest.raises(Exception, match="does not exist"):
        list(strict)
