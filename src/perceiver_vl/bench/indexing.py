"""Indexing throughput: videos per second through ``perceiver-vl index`` (decode + encode).

The work timed is :meth:`perceiver_vl.retrieval.RetrievalIndex.build` on clips written to a
temporary folder: per video, evaluation-mode decoding (``num_frames`` frames resized to the
model's frame size), the file's SHA-256 and probe, and, per batch of ``batch_size`` videos, the
encoder forward, the fp16 latents, the multi-stream embedding and the mixed-stream summary, then
the shard written to disk. Decoding time is also reported on its own (``decode_ms_per_video``).
The clips are the synthetic benchmark's (one coloured shape over a noisy background, H.264), so
decoding costs what a short real clip of that size costs; they are written before the clock
starts. The index encodes with the model's own parameters (fp32 here), so the row's dtype is
fp32.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig


def indexing_row(
    config: PerceiverVLConfig,
    *,
    num_videos: int = 32,
    frames: int = 8,
    image_size: int | None = None,
    batch_size: int = 8,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build an index of ``num_videos`` generated clips with a randomly initialised model of
    ``config`` and return one bench row (``mode: "index"``).

    ``samples_per_s`` is videos per second of wall time over the whole build;
    ``videos_per_cpu_s`` the same per second of the process's CPU time (all its threads: on a
    machine shared with other jobs, with one thread, the rate one free core would give);
    ``latency_ms_median`` is the wall time per batch of ``batch_size`` videos (the build's
    mean); ``decode_ms_per_video`` the decoding part of it per video (wall time). One untimed forward of one batch comes first (allocator and
    oneDNN warm-up).
    """
    from perceiver_vl.data import load_video
    from perceiver_vl.data.synthetic import generate_benchmark
    from perceiver_vl.retrieval import RetrievalIndex

    for name, value in (("num_videos", num_videos), ("frames", frames), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    size = image_size or config.image_size
    if size % config.patch_size or size % 2:
        raise ValueError(
            f"image_size={size} must be an even multiple of the patch size {config.patch_size}"
        )
    torch.manual_seed(seed)
    model = PerceiverVL(config).eval()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="pvl-index-bench-") as tmp:
        data = generate_benchmark(
            Path(tmp) / "clips",
            num_train=num_videos,
            num_val=0,
            num_test=0,
            frames=(frames, frames),
            size=size,
            seed=seed,
            workers=1,
            progress=False,
        )
        decode_seconds = 0.0

        def timed_loader(path: Path, num_frames: int, frame_size: int):
            nonlocal decode_seconds
            start = time.perf_counter()
            out = load_video(path, num_frames, frame_size, train=False)
            decode_seconds += time.perf_counter() - start
            return out

        warm = torch.zeros(min(batch_size, num_videos), frames, 3, size, size)
        with torch.inference_mode():
            model.encode(video=warm, video_mask=torch.ones(warm.shape[:2], dtype=torch.bool))
        start, cpu_start = time.perf_counter(), time.process_time()
        RetrievalIndex.build(
            Path(tmp) / "index",
            model,
            data / "videos",
            num_frames=frames,
            image_size=size,
            batch_size=batch_size,
            video_loader=timed_loader,
            progress=False,
            verify=False,
        )
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    batches = -(-num_videos // batch_size)
    layers = config.inference_cross_attention_blocks
    blocks = list(range(len(config.cross_attention_before_layers))) if layers is None else layers
    return {
        "model": "perceiver-vl",
        "mode": "index",
        "sweep": "indexing",
        "frames": frames,
        "image_size": size,
        "latents": config.num_latents,
        "cross_attention_layers": list(blocks),
        "dtype": "fp32",
        "batch": batch_size,
        "videos": num_videos,
        "seconds": seconds,
        "samples_per_s": num_videos / seconds,
        "cpu_seconds": cpu_seconds,
        "videos_per_cpu_s": num_videos / cpu_seconds if cpu_seconds > 0 else None,
        "latency_ms_median": 1000.0 * seconds / batches,
        "decode_ms_per_video": 1000.0 * decode_seconds / num_videos,
        "threads": torch.get_num_threads(),
        "repeats": 1,
        "status": "ok",
        # the keys of a forward row that a whole build does not have
        "gflops": None,
        "gmacs": None,
        "latency_ms_p10": None,
        "latency_ms_p90": None,
        "peak_mem_mb": None,
        "text_length": None,
        "pairs": None,
        "gflops_per_s": None,
        "matmul_gflops_per_s": None,
        "fraction_of_matmul_peak": None,
        "compiled": False,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


__all__ = ["indexing_row"]
