"""Video and image loading: PyAV decoding, frame sampling, resize + crop, normalisation.

Videos come back as ``video: (T, 3, H, W)`` float in [-1, 1] plus ``frame_mask: (T,)`` bool
(True = real frame). A clip shorter than T frames is padded with zero frames that are masked out,
never with silent black frames. Images come back as ``(3, H, W)`` (or as 1-frame clips).
"""

from __future__ import annotations

import io
import math
import os
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from perceiver_vl.data.failures import MediaError

Source = str | os.PathLike | bytes | BinaryIO
Size = int | Sequence[int]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"})
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError, MemoryError)
# Jumping to a keyframe (flush + restart) is only worth it when it saves more than this many
# packets of sequential decoding.
SEEK_MARGIN = 8


# What a file's extension promises, as the container / image format names FFmpeg and Pillow
# report: a file whose content is another format (a PNG renamed .mp4) is refused, not decoded.
_VIDEO_CONTAINERS = {
    ".mp4": ("mp4", "mov"),
    ".m4v": ("mp4", "mov", "m4v"),
    ".mov": ("mov", "mp4"),
    ".webm": ("webm", "matroska"),
    ".mkv": ("matroska", "webm"),
    ".avi": ("avi",),
    ".mpg": ("mpeg",),
    ".mpeg": ("mpeg",),
}
_IMAGE_FORMATS = {
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".png": ("PNG",),
    ".webp": ("WEBP",),
    ".bmp": ("BMP", "DIB"),
    ".gif": ("GIF",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
}


def _check_format(name: str, found: str, table: dict[str, tuple[str, ...]]) -> None:
    """Raise `MediaError` (``wrong_format``) when ``found`` is not what ``name``'s extension
    promises (unknown extensions and names without one are not checked)."""
    suffix = Path(name.rsplit(":", 1)[-1]).suffix.lower()
    expected = table.get(suffix)
    if expected is None:
        return
    parts = {part.strip().lower() for part in found.split(",")}
    if not parts & {e.lower() for e in expected}:
        raise MediaError(
            name,
            f"the file's content is {found!r}, not what its extension {suffix!r} says; rename "
            "or re-encode it",
            "wrong_format",
        )


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file extension names an image format Pillow reads."""
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        height = width = size
    else:
        values = list(size)
        if len(values) != 2:
            raise ValueError(f"size={size!r} must be an int or a (height, width) pair, e.g. 224")
        height, width = int(values[0]), int(values[1])
    if height < 1 or width < 1:
        raise ValueError(f"size={size!r} must be positive, e.g. size=224")
    return height, width


def sample_frame_indices(
    num_available: int,
    num_frames: int,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Choose ``num_frames`` frame indices out of ``num_available``.

    The clip is cut into ``num_frames`` equal segments; evaluation takes the middle frame of each,
    training a uniformly random frame of each. With fewer frames than ``num_frames`` every frame is
    returned once (the caller pads and masks).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be >= 1")
    if num_available <= 0:
        return []
    if num_available <= num_frames:
        return list(range(num_available))
    edges = [k * num_available / num_frames for k in range(num_frames + 1)]
    if not train:
        return [
            min(num_available - 1, int((edges[k] + edges[k + 1]) / 2)) for k in range(num_frames)
        ]
    indices = []
    for k in range(num_frames):
        low = math.ceil(edges[k]) if k else 0
        high = max(low, math.ceil(edges[k + 1]) - 1)
        span = high - low + 1
        offset = int(torch.randint(span, (1,), generator=generator)) if span > 1 else 0
        indices.append(low + offset)
    return indices


def _resize_geometry(
    src_h: int, src_w: int, out_h: int, out_w: int, train: bool, generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """Resized (h, w) with the shorter side matching the crop, plus the crop's (top, left)."""
    scale = max(out_h / src_h, out_w / src_w)
    new_h = max(out_h, round(src_h * scale))
    new_w = max(out_w, round(src_w * scale))
    if train:
        top = int(torch.randint(new_h - out_h + 1, (1,), generator=generator))
        left = int(torch.randint(new_w - out_w + 1, (1,), generator=generator))
    else:
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return new_h, new_w, top, left


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)


def _name(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "<bytes>"


def _check_file(source: Source, name: str) -> None:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise MediaError(name, "file does not exist", "missing")
        if path.stat().st_size == 0:
            raise MediaError(name, "file is empty (0 bytes)", "empty_file")
    elif isinstance(source, (bytes, bytearray)) and len(source) == 0:
        raise MediaError(name, "no bytes (empty member)", "empty_file")


class VideoReader:
    """Decode T frames of a video, resized and cropped to ``size``.

    Args:
        num_frames: T, frames per clip.
        size: output frame size, an int (square) or (H, W).
        train: random frame per segment and random crop; else segment middles and centre crop.
        threads: decoder threads (1 suits data-loader workers; 0 = FFmpeg's choice).

    Call it as ``reader(source, generator=None) -> (video (T, 3, H, W), frame_mask (T,))``.
    """

    def __init__(self, num_frames: int, size: Size, train: bool = False, threads: int = 1) -> None:
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} must be a positive int, e.g. 8")
        self.num_frames = num_frames
        self.height, self.width = _hw(size)
        self.train = train
        self.threads = threads

    def __call__(
        self, source: Source, generator: torch.Generator | None = None, name: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``source`` (a path, bytes or a binary file object).

        Returns:
            video: (T, 3, H, W) float in [-1, 1]; padding frames are zeros.
            frame_mask: (T,) bool, True = real frame.

        Raises:
            MediaError: missing, empty, truncated or non-video file, undecodable frames.
        """
        name = _name(source, name)
        _check_file(source, name)
        opened: str | BinaryIO
        if isinstance(source, (bytes, bytearray)):
            opened = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            opened = str(source)
        else:
            opened = source
        try:
            container = av.open(opened, metadata_errors="ignore")
        except _DECODE_ERRORS as err:
            raise MediaError(name, f"not a readable media file ({err})", "undecodable") from err
        try:
            _check_format(name, container.format.name, _VIDEO_CONTAINERS)
            frames = self._decode(container, name, generator)
        finally:
            container.close()
        count = frames.shape[0]
        video = torch.zeros(self.num_frames, 3, self.height, self.width)
        video[:count] = _to_tensor(frames)
        mask = torch.zeros(self.num_frames, dtype=torch.bool)
        mask[:count] = True
        return video, mask

    def _decode(self, container, name: str, generator: torch.Generator | None) -> np.ndarray:
        if not container.streams.video:
            raise MediaError(name, "no video stream", "undecodable")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if self.threads != 1 else "SLICE"
        stream.thread_count = self.threads
        try:
            packets = [p for p in container.demux(stream) if p.size > 0]
        except _DECODE_ERRORS as err:
            raise MediaError(
                name, f"truncated or corrupt container ({err})", "undecodable"
            ) from err
        if not packets:
            raise MediaError(name, "the video stream has no frames", "no_frames")
        if any(p.pts is None for p in packets):
            return self._decode_counting(stream, packets, name, generator)
        sorted_pts = sorted({p.pts for p in packets})
        indices = sample_frame_indices(len(sorted_pts), self.num_frames, self.train, generator)
        wanted = {sorted_pts[i]: None for i in indices}
        codec = stream.codec_context
        geometry: tuple[int, int, int, int] | None = None
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe] or [0]
        decode_pos = {p.pts: i for i, p in enumerate(packets)}
        next_packet = 0  # the packet the decoder would take next

        def convert(frame) -> np.ndarray:
            nonlocal geometry
            if geometry is None:
                geometry = _resize_geometry(
                    frame.height, frame.width, self.height, self.width, self.train, generator
                )
            new_h, new_w, top, left = geometry
            rgb = frame.reformat(
                width=new_w, height=new_h, format="rgb24", interpolation="BILINEAR"
            ).to_ndarray()
            return rgb[top : top + self.height, left : left + self.width]

        try:
            for target in sorted(wanted):
                if wanted[target] is not None:
                    continue
                target_packet = decode_pos[target]
                keyframe = keyframes[max(0, bisect_right(keyframes, target_packet) - 1)]
                if next_packet == 0 or keyframe > next_packet + SEEK_MARGIN:
                    codec.flush_buffers()
                    next_packet = keyframe
                while wanted[target] is None:
                    if next_packet < len(packets):
                        out = codec.decode(packets[next_packet])
                        next_packet += 1
                    elif next_packet == len(packets):
                        out = codec.decode(None)  # drain delayed frames
                        next_packet += 1
                    else:
                        break
                    for frame in out:
                        if frame.pts in wanted and wanted[frame.pts] is None:
                            wanted[frame.pts] = convert(frame)
        except _DECODE_ERRORS as err:
            raise MediaError(name, f"undecodable frames ({err})", "undecodable") from err
        missing = [sorted_pts.index(pts) for pts, value in wanted.items() if value is None]
        if missing:
            raise MediaError(name, f"frames {missing} could not be decoded", "undecodable")
        return np.stack([wanted[sorted_pts[i]] for i in indices])

    def _decode_counting(self, stream, packets, name, generator) -> np.ndarray:
        """Fallback for streams without timestamps: decode everything, keep frames by count."""
        try:
            decoded = []
            for packet in [*packets, None]:
                decoded.extend(stream.codec_context.decode(packet))
        except _DECODE_ERRORS as err:
            raise MediaError(name, f"undecodable frames ({err})", "undecodable") from err
        if not decoded:
            raise MediaError(name, "no frame could be decoded", "no_frames")
        indices = sample_frame_indices(len(decoded), self.num_frames, self.train, generator)
        first = decoded[0]
        new_h, new_w, top, left = _resize_geometry(
            first.height, first.width, self.height, self.width, self.train, generator
        )
        out = []
        for i in indices:
            rgb = decoded[i].reformat(width=new_w, height=new_h, format="rgb24").to_ndarray()
            out.append(rgb[top : top + self.height, left : left + self.width])
        return np.stack(out)


def load_video(
    path: Source,
    num_frames: int,
    size: Size,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``num_frames`` frames of a video; see `VideoReader`.

    Returns:
        video: (T, 3, H, W) float in [-1, 1]; frame_mask: (T,) bool, True = real frame.
    """
    return VideoReader(num_frames, size, train=train)(path, generator=generator)


# --------------------------------------------------------------------------------------- images
_ORIENTATION_TAG = 0x0112


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / high * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, ...
    return image


def load_image(
    path: Source,
    size: Size,
    train: bool = False,
    generator: torch.Generator | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """Load an image (JPEG, PNG, WebP, ...; any mode; EXIF orientation applied).

    The shorter side is resized to the crop, then centre-cropped (or randomly cropped in training).
    Transparent images are composited on white; CMYK and 16-bit images are converted to RGB.

    Returns:
        image: (3, H, W) float in [-1, 1].

    Raises:
        MediaError: missing, empty, truncated or non-image file.
    """
    out_h, out_w = _hw(size)
    name = _name(path, name)
    _check_file(path, name)
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
    try:
        with Image.open(source) as image:
            _check_format(name, image.format or "unknown", _IMAGE_FORMATS)
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            width, height = image.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            scale = max(out_h / height, out_w / width)
            if image.format == "JPEG" and scale < 1:
                # Let libjpeg decode at a reduced scale (still >= the resize target).
                want = (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale))
                image.draft("RGB", want)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise MediaError(name, f"not a readable image ({err})", "undecodable") from err
    new_h, new_w, top, left = _resize_geometry(
        image.height, image.width, out_h, out_w, train, generator
    )
    if (image.width, image.height) != (new_w, new_h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    array = np.array(image)[top : top + out_h, left : left + out_w]
    return _to_tensor(array[None])[0]


def load_media(
    path: Source,
    num_frames: int,
    size: Size,
    train: bool = False,
    generator: torch.Generator | None = None,
    is_image: bool | None = None,
    name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Load a video or an image as a clip.

    Images become 1-frame clips (T = 1), videos T = ``num_frames`` clips.

    Returns:
        video: (T, 3, H, W); frame_mask: (T,) bool; is_image: whether the source was an image.
    """
    if is_image is None:
        if name is not None:
            is_image = is_image_path(name)
        else:
            is_image = isinstance(path, (str, os.PathLike)) and is_image_path(path)
    if is_image:
        image = load_image(path, size, train=train, generator=generator, name=name)
        return image[None], torch.ones(1, dtype=torch.bool), True
    video, mask = VideoReader(num_frames, size, train=train)(path, generator=generator, name=name)
    return video, mask, False
