"""CachedClips: one decoding pass, identical items, skipped samples stay skipped."""

import torch

from perceiver_vl.data import CachedClips, CaptionDataset
from perceiver_vl.data.synthetic import generate_benchmark


def test_cached_items_equal_decoded_items(tmp_path):
    root = generate_benchmark(
        tmp_path / "b", num_train=6, num_val=1, num_test=1, frames=(4, 6), size=32, progress=False
    )
    data = CaptionDataset(root / "train.jsonl", root, num_frames=4, size=32)
    cached = CachedClips(data, progress=False)
    assert len(cached) == len(data) == 6
    for i in range(6):
        a, b = data[i], cached[i]
        assert a["text"] == b["text"] and torch.equal(a["video_mask"], b["video_mask"])
        # clips come from 8-bit pixels: uint8 storage is within half a grey level
        assert (a["video"] - b["video"]).abs().max() <= 1 / 255 + 1e-6
    assert cached.nbytes() == 6 * 4 * 3 * 32 * 32


def test_bad_clips_are_skipped_and_counted(tmp_path):
    root = generate_benchmark(
        tmp_path / "b", num_train=4, num_val=1, num_test=1, frames=(4, 6), size=32, progress=False
    )
    first = (root / "train.jsonl").read_text().splitlines()[0]
    import json

    (root / json.loads(first)["video"]).write_bytes(b"not a video")
    data = CaptionDataset(
        root / "train.jsonl", root, num_frames=4, size=32, max_failure_fraction=0.5
    )
    cached = CachedClips(data, progress=False)
    assert len(cached) == 3 and cached.skipped == 1
    assert cached.tracker.failed == 1 and "1 skipped" in cached.tracker.summary()
