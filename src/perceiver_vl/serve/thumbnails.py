"""One JPEG thumbnail per indexed video, made on first request and cached outside the index.

The cache key is the video's SHA-256 from the index manifest (or, for videos added without one,
a hash of the path, size and modification time), so a re-encoded video gets a new thumbnail and
the index directory itself is never written.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from perceiver_vl.fileio import atomic_write_bytes

#: Frames decoded at most when looking for the middle frame of a clip whose length is unknown.
_MAX_FRAMES_SCANNED = 300


class ThumbnailError(ValueError):
    """The video could not be decoded into a thumbnail."""


def cache_key(path: Path, entry: dict[str, Any], width: int) -> str:
    """A file name for the thumbnail of ``path`` at ``width`` pixels."""
    digest = entry.get("sha256")
    if not digest:
        stat = path.stat()
        digest = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{digest}-w{width}.jpg"


def cached_thumbnail(path: Path, entry: dict[str, Any], cache_dir: Path, *, width: int) -> Path:
    """The thumbnail file of ``path`` in ``cache_dir``, written (atomically) when missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / cache_key(path, entry, width)
    if not target.is_file():
        data = make_thumbnail(path, width=width)
        atomic_write_bytes(target, data)
    return target


def make_thumbnail(path: Path, *, width: int = 320, quality: int = 85) -> bytes:
    """JPEG bytes of the middle frame of ``path``, ``width`` pixels wide.

    Raises:
        ThumbnailError: the file cannot be decoded or holds no video frame.
    """
    import av
    from PIL import Image

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ThumbnailError(f"{str(path)!r} holds no video stream")
            stream = container.streams.video[0]
            frame = _middle_frame(container, stream)
    except av.error.FFmpegError as err:
        raise ThumbnailError(f"cannot decode {str(path)!r}: {err}") from err
    if frame is None:
        raise ThumbnailError(f"{str(path)!r} holds no decodable frame")
    image: Image.Image = frame.to_image()
    height = max(1, round(image.height * width / image.width))
    # Tiny clips (the synthetic benchmark is 32-64 px) are enlarged without smoothing, so their
    # shapes stay crisp; real videos are reduced with a proper filter.
    resample = Image.NEAREST if width > image.width else Image.BILINEAR
    image = image.convert("RGB").resize((width, height), resample)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _middle_frame(container: Any, stream: Any) -> Any:
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    if duration and duration > 4:
        # Long video: seek near the middle instead of decoding everything before it.
        container.seek(int(duration / 2 / stream.time_base), stream=stream)
        for frame in container.decode(stream):
            return frame
        return None
    frames = []
    for frame in container.decode(stream):
        frames.append(frame)
        if len(frames) >= _MAX_FRAMES_SCANNED:
            break
    return frames[len(frames) // 2] if frames else None
