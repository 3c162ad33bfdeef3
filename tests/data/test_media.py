from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver_vl.data import (
    MediaError,
    VideoReader,
    load_image,
    load_media,
    load_video,
    sample_frame_indices,
)
from perceiver_vl.data import media as media_module

from .helpers import decode_pattern, write_image, write_video


def _indices_of(video: torch.Tensor, mask: torch.Tensor) -> list[int]:
    frames = ((video[mask] + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return [decode_pattern(f) for f in frames]


def test_sample_indices_eval_and_train():
    assert sample_frame_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(0, 8) == []
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        picks = sample_frame_indices(37, 8, train=True, generator=gen)
        assert len(picks) == 8
        for k, index in enumerate(picks):
            assert k * 37 / 8 <= index < (k + 1) * 37 / 8
    a = sample_frame_indices(100, 4, True, torch.Generator().manual_seed(1))
    b = sample_frame_indices(100, 4, True, torch.Generator().manual_seed(1))
    assert a == b
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(10, 0)


def test_video_eval_frames_shape_and_range(tmp_path):
    path = write_video(tmp_path / "v.mp4", 40, width=64, height=48)
    video, mask = load_video(path, num_frames=8, size=32)
    assert video.shape == (8, 3, 32, 32) and video.dtype == torch.float32
    assert mask.shape == (8,) and mask.all()
    assert video.min() >= -1 and video.max() <= 1
    assert _indices_of(video, mask) == sample_frame_indices(40, 8)


def test_short_clip_is_padded_and_masked(tmp_path):
    path = write_video(tmp_path / "short.mp4", 3)
    video, mask = load_video(path, num_frames=8, size=16)
    assert mask.tolist() == [True] * 3 + [False] * 5
    assert (video[3:] == 0).all()
    assert _indices_of(video, mask) == [0, 1, 2]


@pytest.mark.parametrize("bframes", [False, True])
def test_keyframe_jumps_match_sequential_decoding(tmp_path, monkeypatch, bframes):
    path = write_video(tmp_path / "long.mp4", 200, keyint=10, bframes=bframes)
    fast, fast_mask = load_video(path, num_frames=6, size=24)
    monkeypatch.setattr(media_module, "SEEK_MARGIN", 10**9)  # never jump: pure sequential
    slow, slow_mask = load_video(path, num_frames=6, size=24)
    assert torch.equal(fast_mask, slow_mask)
    assert torch.allclose(fast, slow)
    assert _indices_of(fast, fast_mask) == sample_frame_indices(200, 6)


def test_train_sampling_is_seeded_and_random_crop(tmp_path):
    path = write_video(tmp_path / "v.mp4", 64, width=96, height=48)
    reader = VideoReader(8, 32, train=True)
    a, _ = reader(path, generator=torch.Generator().manual_seed(5))
    b, _ = reader(path, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    seen = set()
    for seed in range(6):
        video, mask = reader(path, generator=torch.Generator().manual_seed(seed))
        seen.add(tuple(_indices_of(video, mask)))
    assert len(seen) > 1


def test_crop_geometry_keeps_aspect(tmp_path):
    # 96x48 -> shorter side 32 -> 64x32 -> crop 32x32: centre crop sees the boundary in the middle.
    path = write_video(tmp_path / "wide.mp4", 4, width=96, height=48)
    video, _ = load_video(path, num_frames=1, size=32)
    assert video.shape == (1, 3, 32, 32)
    video, _ = load_video(path, num_frames=1, size=(16, 40))
    assert video.shape == (1, 3, 16, 40)


def test_bytes_source(tmp_path):
    path = write_video(tmp_path / "v.mp4", 10)
    video, mask = VideoReader(4, 16)(path.read_bytes(), name="shard.tar:v.mp4")
    assert mask.all() and video.shape == (4, 3, 16, 16)


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: p, "missing"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty_file"),
        (lambda p: (p.write_bytes(b"this is not a video at all" * 10), p)[1], "undecodable"),
    ],
)
def test_bad_videos_raise_media_error(tmp_path, make, kind):
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(MediaError) as info:
        load_video(path, 4, 16)
    assert info.value.kind == kind and info.value.path == str(path)


def test_truncated_video(tmp_path):
    good = write_video(tmp_path / "good.mp4", 30)
    data = good.read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        load_video(bad, 4, 16)
    assert "truncated.mp4" in str(info.value)


# ------------------------------------------------------------------------------------ images
def _rgb(image: torch.Tensor, y: int, x: int) -> list[int]:
    return [round(v) for v in ((image[:, y, x] + 1) * 127.5).tolist()]


@pytest.mark.parametrize(
    "name, mode",
    [("a.jpg", "RGB"), ("b.png", "RGB"), ("c.webp", "RGB"), ("d.jpg", "CMYK"), ("e.png", "RGBA")],
)
def test_image_formats(tmp_path, name, mode):
    path = write_image(tmp_path / name, width=40, height=30, mode=mode)
    image = load_image(path, 24)
    assert image.shape == (3, 24, 24)
    left, right = _rgb(image, 12, 3), _rgb(image, 12, 20)
    assert left[0] > 150 and left[2] < 90  # red half
    assert right[2] > 150 and right[0] < 90  # blue half


def test_grayscale_and_transparency(tmp_path):
    gray = write_image(tmp_path / "g.png", mode="L")
    image = load_image(gray, 16)
    assert torch.allclose(image[0], image[1]) and torch.allclose(image[1], image[2])
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent -> composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert torch.allclose(load_image(tmp_path / "t.png", 8), torch.ones(3, 8, 8))
    Image.fromarray((np.arange(400).reshape(20, 20) * 150).astype(np.uint16)).save(
        tmp_path / "i16.png"
    )
    assert load_image(tmp_path / "i16.png", 8).shape == (3, 8, 8)


def test_exif_orientation(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (220, 20, 20)  # stored: red left, blue right
    array[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(array).save(tmp_path / "o.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "o.jpg", (40, 20))  # displayed: 20 wide, 40 tall
    assert image.shape == (3, 40, 20)
    top, bottom = _rgb(image, 5, 10), _rgb(image, 35, 10)
    assert top[0] > 150 and bottom[2] > 150  # red now on top


def test_bad_images(tmp_path):
    with pytest.raises(MediaError) as info:
        load_image(tmp_path / "none.jpg", 8)
    assert info.value.kind == "missing"
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(MediaError, match="text.jpg"):
        load_image(tmp_path / "text.jpg", 8)
    good = write_image(tmp_path / "big.jpg", 200, 200, quality=90)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(MediaError):
        load_image(tmp_path / "cut.jpg", 8)


def test_load_media_dispatch(tmp_path):
    image = write_image(tmp_path / "a.png")
    video, mask, is_image = load_media(image, 8, 16)
    assert is_image and video.shape == (1, 3, 16, 16) and mask.tolist() == [True]
    clip = write_video(tmp_path / "a.mp4", 12)
    video, mask, is_image = load_media(clip, 8, 16)
    assert not is_image and video.shape == (8, 3, 16, 16)
