"""Fixture builders: every media file the data tests use is written here at test time."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """A frame whose left half encodes ``index % 16`` and right half ``index // 16`` as grey."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : width // 2] = (index % 16) * 16 + 8
    frame[:, width // 2 :] = (index // 16) * 16 + 8
    return frame


def decode_pattern(frame: np.ndarray) -> int:
    """Inverse of `frame_pattern` for a (H, W, 3) uint8 frame (any size)."""
    height, width = frame.shape[:2]
    left = frame[height // 4 : 3 * height // 4, width // 8 : 3 * width // 8].mean()
    right = frame[height // 4 : 3 * height // 4, 5 * width // 8 : 7 * width // 8].mean()
    return int(round((left - 8) / 16)) + 16 * int(round((right - 8) / 16))


def write_video(
    path: Path,
    num_frames: int,
    width: int = 64,
    height: int = 48,
    fps: int = 25,
    keyint: int | None = None,
    bframes: bool = False,
    container: str = "mp4",
) -> Path:
    """Write an H.264 video (``container``: mp4, avi, ...) whose frame i shows
    `frame_pattern(i)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"preset": "ultrafast", "crf": "10"}
    if keyint is not None:
        options["g"] = str(keyint)
    if bframes:
        options.update({"preset": "fast", "bf": "2"})
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def write_image(path: Path, width: int = 40, height: int = 30, mode: str = "RGB", **save) -> Path:
    """Write an image with a red left half and a blue right half, in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (220, 20, 20)
    array[:, width // 2 :] = (20, 20, 220)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save)
    return path
