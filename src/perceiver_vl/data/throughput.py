"""Measure data-loading throughput: video clips per second and tokenised texts per second.

``python -m perceiver_vl.data.throughput`` writes 10-s 320x240 H.264 test clips (30 fps,
x264 defaults: 250-frame GOPs, B-frames) into a temporary folder, then times loading 8 frames
per clip through `CaptionDataset` + `Collator` with 1 and 2 loader workers, and the tokenizer
on batches of captions. Optionally (``--synthetic``) it times `generate_benchmark` for 2,000 clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from perceiver_vl.data.collate import Collator
from perceiver_vl.data.datasets import CaptionDataset
from perceiver_vl.data.tokenizer import Tokenizer


def write_test_clip(
    path: Path,
    seconds: float = 10.0,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    seed: int = 0,
) -> Path:
    """An H.264 mp4 with moving textured content (x264 'veryfast', default GOP and B-frames)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height * 2, width * 2, 3), dtype=np.uint8)
    texture = texture // 4 + np.linspace(0, 190, width * 2, dtype=np.uint8)[None, :, None]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(int(seconds * fps)):
            dy, dx = (t * 2) % height, (t * 3) % width
            frame = np.ascontiguousarray(texture[dy : dy + height, dx : dx + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _time_loader(dataset: CaptionDataset, workers: int, batch_size: int, epochs: int) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=Collator(Tokenizer.default()),
        persistent_workers=workers > 0,
    )
    next(iter(loader))  # start the workers before timing
    clips = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            clips += batch["video"].shape[0]
    return clips / (time.perf_counter() - start)


def measure_throughput(
    workdir: str | os.PathLike | None = None,
    *,
    num_clips: int = 16,
    num_frames: int = 8,
    size: int = 224,
    workers: Sequence[int] = (1, 2),
    epochs: int = 3,
    batch_size: int = 4,
    num_texts: int = 20_000,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Run the measurements and return them as a dict (clips/s per worker count, texts/s, ...)."""
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "torch_threads": torch.get_num_threads(),
        "clip": "10 s, 320x240, 30 fps, H.264 (x264 veryfast, GOP 250, B-frames)",
        "num_frames": num_frames,
        "size": size,
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        rows = []
        for i in tqdm(range(num_clips), desc="writing test clips", unit="clip"):
            write_test_clip(root / f"clip{i}.mp4", seed=i)
            rows.append(json.dumps({"video": f"clip{i}.mp4", "caption": f"test clip {i}"}))
        (root / "ann.jsonl").write_text("\n".join(rows) + "\n")
        for train in (False, True):
            dataset = CaptionDataset(
                root / "ann.jsonl", num_frames=num_frames, size=size, train=train
            )
            for count in workers:
                key = f"clips_per_s_{'train' if train else 'eval'}_{count}_workers"
                results[key] = round(_time_loader(dataset, count, batch_size, epochs), 1)
        if synthetic:
            from perceiver_vl.data.synthetic import generate_benchmark

            start = time.perf_counter()
            generate_benchmark(
                root / "synthetic", num_train=1500, num_val=0, num_test=500, progress=True
            )
            results["synthetic_2000_clips_s"] = round(time.perf_counter() - start, 1)

    tokenizer = Tokenizer.default()
    words = [
        "a",
        "man",
        "is",
        "playing",
        "a",
        "guitar",
        "while",
        "the",
        "small",
        "red",
        "circle",
        "moves",
        "left",
        "then",
        "up",
    ]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(5, 20))) for _ in range(num_texts)]
    tokenizer(texts[:256])
    start = time.perf_counter()
    for i in range(0, len(texts), 256):
        tokenizer(texts[i : i + 256])
    results["texts_per_s_batch_256"] = round(len(texts) / (time.perf_counter() - start))
    start = time.perf_counter()
    for text in texts[:5000]:
        tokenizer([text])
    results["texts_per_s_one_by_one"] = round(5000 / (time.perf_counter() - start))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="also time the generator")
    args = parser.parse_args(argv)
    results = measure_throughput(
        num_clips=args.num_clips,
        num_frames=args.num_frames,
        size=args.size,
        workers=args.workers,
        epochs=args.epochs,
        synthetic=args.synthetic,
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
