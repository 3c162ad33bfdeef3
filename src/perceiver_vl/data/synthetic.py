"""The built-in synthetic video-text benchmark: real mp4 files plus captions, made offline.

A clip shows one coloured shape (small or large) moving in two steps over a noisy background;
its caption names size, colour, shape and both steps, e.g. "a small red circle moves left then
up". The start position is random, so no single frame tells captions apart: the motion must be
seen. 8 colours x 4 shapes x 2 sizes x 12 two-step motions give 768 distinct captions; the test
(and validation) split draws distinct captions, so every test caption is unique within the split.

The still variant (`generate_image_benchmark`) draws two shapes in a spatial relation,
"a red circle above a blue square", for image-text training.

Everything is seeded: the same arguments write the same captions and pixels, whatever the number
of worker processes.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from perceiver_vl.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger("perceiver_vl.data")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 215),
    "orange": (255, 140, 0),
    "white": (250, 250, 250),
    "pink": (255, 125, 195),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (12, 16), "large": (24, 28)}  # side in pixels at size=64 (scaled with size)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS = tuple((a, b) for a in DIRECTIONS for b in DIRECTIONS if a != b)
RELATIONS = ("above", "to the left of")
FPS = 10
FORMAT_VERSION = 1


def video_captions() -> list[tuple[str, str, str, tuple[str, str]]]:
    """Every (size, colour, shape, motion) combination, in a fixed order (768 of them)."""
    return list(itertools.product(SIZES, COLOURS, SHAPES, MOTIONS))


def video_caption(size: str, colour: str, shape: str, motion: tuple[str, str]) -> str:
    return f"a {size} {colour} {shape} moves {motion[0]} then {motion[1]}"


def image_captions() -> list[tuple[str, str, str, str, str]]:
    """Every (colour1, shape1, relation, colour2, shape2) with two different objects."""
    objects = list(itertools.product(COLOURS, SHAPES))
    return [
        (c1, s1, rel, c2, s2)
        for (c1, s1), (c2, s2) in itertools.permutations(objects, 2)
        for rel in RELATIONS
    ]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def image_caption(c1: str, s1: str, relation: str, c2: str, s2: str) -> str:
    return f"{_article(c1)} {c1} {s1} {relation} {_article(c2)} {c2} {s2}"


# ----------------------------------------------------------------------------------- rendering
def shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) bool mask of ``shape``."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    centre = side / 2
    if shape == "circle":
        return (x - centre) ** 2 + (y - centre) ** 2 <= (side / 2) ** 2
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "triangle":  # apex up
        return np.abs(x - centre) <= y / 2
    if shape == "cross":
        arm = side / 6
        return (np.abs(x - centre) <= arm) | (np.abs(y - centre) <= arm)
    raise ValueError(f"shape={shape!r} is unknown; choose one of {SHAPES}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 noisy background: a dim grey with a tint and static texture."""
    base = rng.uniform(50, 120) + rng.uniform(-12, 12, size=3)
    texture = rng.normal(0, 18, size=(size, size, 1)) + rng.normal(0, 6, size=(size, size, 3))
    return (base + texture).astype(np.float32)


def _paste(frame: np.ndarray, mask: np.ndarray, colour: np.ndarray, top: int, left: int) -> None:
    side = mask.shape[0]
    region = frame[top : top + side, left : left + side]
    region[mask[: region.shape[0], : region.shape[1]]] = colour


def _render_clip(spec: dict[str, Any]) -> list[np.ndarray]:
    rng = np.random.default_rng(spec["entropy"])
    size, frames = spec["size"], spec["frames"]
    scale = size / 64
    lo, hi = SIZES[spec["shape_size"]]
    side = max(3, int(round(rng.integers(lo, hi + 1) * scale)))
    mask = shape_mask(spec["shape"], side)
    colour = np.array(COLOURS[spec["colour"]], np.float32)
    first, second = (np.array(DIRECTIONS[d], np.float32) for d in spec["motion"])
    step = rng.uniform(14, 20) * scale
    turn = (frames - 1) // 2  # frames 0..turn: first step, turn..frames-1: second step
    offsets = []
    for t in range(frames):
        if t <= turn:
            offsets.append(first * step * t / max(turn, 1))
        else:
            offsets.append(first * step + second * step * (t - turn) / max(frames - 1 - turn, 1))
    offsets = np.stack(offsets)  # (T, 2) as (x, y)
    free = size - side
    low = -offsets.min(axis=0)
    high = free - offsets.max(axis=0)
    start = np.array([rng.uniform(low[i], max(low[i], high[i])) for i in range(2)])
    background = _background(rng, size)
    out = []
    for t in range(frames):
        frame = background + rng.normal(0, 6, size=background.shape).astype(np.float32)
        x, y = np.clip(np.round(start + offsets[t]), 0, free).astype(int)
        _paste(frame, mask, colour, int(y), int(x))
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def _write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=FPS, options={"preset": "ultrafast", "crf": "18", "threads": "1"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_clip(spec: dict[str, Any]) -> str:
    _write_mp4(Path(spec["path"]), _render_clip(spec))
    return spec["path"]


def _render_still(spec: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(spec["entropy"])
    size = spec["size"]
    scale = size / 64
    frame = _background(rng, size)
    sides = [max(3, int(round(rng.integers(16, 21) * scale))) for _ in range(2)]
    gap = max(2, int(round(4 * scale)))
    first, second = sides
    # Along the relation's axis the first object comes before the second with a gap; across it
    # the two are offset by at most a quarter of a shape so the relation is unambiguous.
    along_total = first + gap + second
    a0 = int(rng.integers(0, size - along_total + 1))
    a1 = a0 + first + gap + int(rng.integers(0, size - along_total - a0 + 1))
    cross_max = size - max(first, second)
    c0 = int(rng.integers(0, cross_max + 1))
    shift = int(rng.integers(-(min(first, second) // 4), min(first, second) // 4 + 1))
    c1 = int(np.clip(c0 + shift, 0, cross_max))
    if spec["relation"] == "above":
        positions = [(a0, c0), (a1, c1)]  # (top, left)
    else:
        positions = [(c0, a0), (c1, a1)]
    for (top, left), side, colour, shape in zip(
        positions, sides, (spec["c1"], spec["c2"]), (spec["s1"], spec["s2"])
    ):
        _paste(frame, shape_mask(shape, side), np.array(COLOURS[colour], np.float32), top, left)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _make_still(spec: dict[str, Any]) -> str:
    Image.fromarray(_render_still(spec)).save(spec["path"], compress_level=1)
    return spec["path"]


# ----------------------------------------------------------------------------------- driving
def _split_choices(
    rng: np.random.Generator, count: int, num_combos: int, unique: bool, split: str
) -> np.ndarray:
    if count < 0:
        raise ValueError(f"num_{split}={count!r} must be >= 0")
    if unique:
        if count > num_combos:
            raise ValueError(
                f"num_{split}={count} exceeds the {num_combos} distinct captions; the {split} "
                f"split needs unique captions, so use num_{split} <= {num_combos}"
            )
        return rng.permutation(num_combos)[:count]
    return rng.integers(0, num_combos, size=count)


def _run(
    fn: Callable[[dict[str, Any]], str],
    specs: list[dict[str, Any]],
    workers: int | None,
    progress: bool,
    desc: str,
) -> None:
    workers = os.cpu_count() or 1 if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1 (or None for all cores)")
    bar = tqdm(total=len(specs), desc=desc, unit="file", disable=not progress)
    try:
        if workers == 1 or len(specs) < 32:
            for spec in specs:
                fn(spec)
                bar.update()
        else:
            with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(fn, specs, chunksize=16):
                    bar.update()
    finally:
        bar.close()


def _existing(out_dir: Path, config: dict[str, Any]) -> bool:
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("config") != config:
        return False
    for split in ("train", "val", "test"):
        path = out_dir / f"{split}.jsonl"
        if not path.is_file():
            return False
        for line in path.read_text().splitlines():
            record = json.loads(line)
            media = out_dir / record.get("video", record.get("image", ""))
            if not media.is_file() or media.stat().st_size == 0:
                return False
    return True


def _write_split_files(out_dir: Path, records: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in records.items():
        atomic_write_text(
            out_dir / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows)
        )


def _validate(num: dict[str, int], size: int, seed: int) -> None:
    for split, count in num.items():
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"num_{split}={count!r} must be an int >= 0")
    if not isinstance(size, int) or size < 16 or size % 2:
        raise ValueError(f"size={size!r} must be an even int >= 16 (H.264 needs even sizes)")
    if not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an int")


def generate_benchmark(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: int = 500,
    frames: tuple[int, int] = (8, 16),
    size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic video-text benchmark.

    Layout: ``out_dir/videos/{split}_{i:05d}.mp4``; ``out_dir/{train,val,test}.jsonl`` with one
    ``{"video": "videos/...", "caption": "...", ...}`` per line (the generic JSONL format, plus
    the attributes ``size_name``, ``colour``, ``shape``, ``motion``, ``frames``); ``meta.json``.
    Train captions are drawn with replacement; val and test captions are distinct within the split.
    Calling it again with the same arguments reuses a complete earlier output.

    Args:
        out_dir: output directory (created).
        num_train, num_val, num_test: clips per split (val/test at most 768).
        frames: (min, max) frames per clip, inclusive.
        size: frame side in pixels (even).
        seed: everything derives from it.
        workers: processes (None = all cores).
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    num = {"train": num_train, "val": num_val, "test": num_test}
    _validate(num, size, seed)
    frames = tuple(int(f) for f in frames)  # type: ignore[assignment]
    if len(frames) != 2 or not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames={frames!r} must be (min, max) with 1 <= min <= max, e.g. (8, 16)")
    config = {"kind": "video", "num": num, "frames": list(frames), "size": size, "seed": seed}
    config["version"] = FORMAT_VERSION
    if _existing(out_dir, config):
        logger.info("reusing the synthetic benchmark in %s", out_dir)
        return out_dir
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    combos = video_captions()
    rng = np.random.default_rng([seed, 1])
    specs: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for split_id, split in enumerate(("train", "val", "test")):
        choices = _split_choices(rng, num[split], len(combos), split != "train", split)
        records[split] = []
        for i, choice in enumerate(choices):
            shape_size, colour, shape, motion = combos[int(choice)]
            entropy = [seed, split_id, i]
            count = int(np.random.default_rng([*entropy, 7]).integers(frames[0], frames[1] + 1))
            rel = f"videos/{split}_{i:05d}.mp4"
            specs.append(
                {
                    "path": str(out_dir / rel),
                    "entropy": entropy,
                    "size": size,
                    "frames": count,
                    "shape_size": shape_size,
                    "colour": colour,
                    "shape": shape,
                    "motion": motion,
                }
            )
            records[split].append(
                {
                    "video": rel,
                    "caption": video_caption(shape_size, colour, shape, motion),
                    "id": f"{split}_{i:05d}",
                    "size_name": shape_size,
                    "colour": colour,
                    "shape": shape,
                    "motion": list(motion),
                    "frames": count,
                }
            )
    _run(_make_clip, specs, workers, progress, "synthetic videos")
    _write_split_files(out_dir, records)
    meta = {
        "name": "perceiver-vl synthetic video-text benchmark",
        "config": config,
        "fps": FPS,
        "counts": num,
        "num_distinct_captions": len(combos),
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "motions": [list(m) for m in MOTIONS],
        "caption_template": "a {size} {colour} {shape} moves {direction} then {direction}",
    }
    atomic_write_json(out_dir / "meta.json", meta, indent=2)
    return out_dir


def generate_image_benchmark(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: int = 500,
    size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the still-image variant: two shapes in a relation ("a red circle above a blue square").

    Layout: ``out_dir/images/{split}_{i:05d}.png``, ``out_dir/{train,val,test}.jsonl`` with
    ``{"image": "images/...", "caption": "..."}`` lines, ``meta.json``. 1,984 distinct captions;
    val and test captions are distinct within their split. Arguments as in `generate_benchmark`.
    """
    out_dir = Path(out_dir)
    num = {"train": num_train, "val": num_val, "test": num_test}
    _validate(num, size, seed)
    config = {"kind": "image", "num": num, "size": size, "seed": seed, "version": FORMAT_VERSION}
    if _existing(out_dir, config):
        logger.info("reusing the synthetic image benchmark in %s", out_dir)
        return out_dir
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    combos = image_captions()
    rng = np.random.default_rng([seed, 2])
    specs: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for split_id, split in enumerate(("train", "val", "test")):
        choices = _split_choices(rng, num[split], len(combos), split != "train", split)
        records[split] = []
        for i, choice in enumerate(choices):
            c1, s1, relation, c2, s2 = combos[int(choice)]
            rel = f"images/{split}_{i:05d}.png"
            specs.append(
                {
                    "path": str(out_dir / rel),
                    "entropy": [seed, 100 + split_id, i],
                    "size": size,
                    "c1": c1,
                    "s1": s1,
                    "relation": relation,
                    "c2": c2,
                    "s2": s2,
                }
            )
            records[split].append(
                {"image": rel, "caption": image_caption(c1, s1, relation, c2, s2)}
                | {"id": f"{split}_{i:05d}"}
            )
    _run(_make_still, specs, workers, progress, "synthetic images")
    _write_split_files(out_dir, records)
    meta = {
        "name": "perceiver-vl synthetic image-text benchmark",
        "config": config,
        "counts": num,
        "num_distinct_captions": len(combos),
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "relations": list(RELATIONS),
        "caption_template": "a {colour} {shape} {relation} a {colour} {shape}",
    }
    atomic_write_json(out_dir / "meta.json", meta, indent=2)
    return out_dir


def iter_records(out_dir: str | os.PathLike, split: str) -> Iterable[dict[str, Any]]:
    """The records of one split of a generated benchmark."""
    path = Path(out_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"split={split!r}: {path} does not exist; run generate_benchmark(out_dir=...) first"
        )
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
