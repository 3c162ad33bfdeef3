"""Helpers for the retrieval tests: the tiny config, synthetic clips, a tiny trainer, and the
tokenizer / video decoder (the data package's when it is importable, small stand-ins otherwise).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.retrieval import media

TINY = dict(
    hidden_size=32,
    num_heads=2,
    num_self_attention_layers=2,
    cross_attention_before_layers=(0, 1),
    num_latents=8,
    patch_size=16,
    image_size=32,
    max_frames=8,
    max_text_length=16,
    vocab_size=30522,
    contrastive_dim=16,
)

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 20),
}
DIRECTIONS = ("left", "right")


# ----------------------------------------------------------------------------------------------
# Stand-ins for perceiver_vl.data (used only while the data package is not importable)
# ----------------------------------------------------------------------------------------------
class StandInTokenizer:
    """Words hashed into the BERT id range; [CLS]=101, [SEP]=102, [PAD]=0."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = [1000 + zlib.crc32(w.encode()) % 29000 for w in text.lower().split()]
            row = [101, *words[: self.max_length - 2], 102]
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != 0


def stand_in_load_video(
    path: Path, num_frames: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode with PyAV, sample ``num_frames`` evenly, resize, scale to [-1, 1]."""
    import av
    from PIL import Image

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode {str(path)!r}: {err}") from err
    if not frames:
        raise ValueError(f"{str(path)!r} has no frames")
    count = min(num_frames, len(frames))
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    video = torch.zeros(num_frames, 3, size, size)
    for t, i in enumerate(picks):
        image = Image.fromarray(frames[i]).resize((size, size), Image.BILINEAR)
        video[t] = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[:count] = True
    return video, mask


def _data_package():
    try:
        from perceiver_vl.data import Tokenizer, load_video  # noqa: F401

        Tokenizer.default(max_length=16)
        return True
    except Exception:  # noqa: BLE001 - not built yet, or no vocabulary: use the stand-ins
        return False


HAVE_DATA = _data_package()


def make_tokenizer(max_length: int):
    return media.default_tokenizer(max_length) if HAVE_DATA else StandInTokenizer(max_length)


def make_loader():
    return media.default_video_loader() if HAVE_DATA else stand_in_load_video


# ----------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------
def write_clip(
    path: Path,
    color: tuple[int, int, int],
    direction: str,
    frames: int = 8,
    size: int = 32,
    seed: int = 0,
) -> None:
    """An H.264 clip of a coloured square sliding left or right over a dark background."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        side = size // 3
        y0 = int(rng.integers(0, size - side))
        for t in range(frames):
            frac = t / max(1, frames - 1)
            x0 = int(round((size - side) * (frac if direction == "right" else 1 - frac)))
            image = np.full((size, size, 3), 20, dtype=np.uint8)
            image[y0 : y0 + side, x0 : x0 + side] = color
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_collection(root: Path) -> list[dict[str, str]]:
    """8 clips (4 colours x 2 directions) + ``test.jsonl``; returns the records."""
    records = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        for j, direction in enumerate(DIRECTIONS):
            video = f"videos/{name}_{direction}.mp4"
            write_clip(root / video, rgb, direction, frames=6 + 2 * j, seed=i * 2 + j)
            records.append({"video": video, "caption": f"a {name} square moves {direction}"})
    with open(root / "test.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return records


# ----------------------------------------------------------------------------------------------
# A tiny model trained at test time to tell the collection's clips apart
# ----------------------------------------------------------------------------------------------
def train_tiny_model(
    videos: torch.Tensor,
    masks: torch.Tensor,
    captions: list[str],
    *,
    pair_batch: int | None = None,
) -> PerceiverVL:
    """Two short phases on one batch of clips: the encoder and multi-stream head with a symmetric
    contrastive loss, then the decoder and matching head (mixed stream) on the frozen latents with
    a symmetric ranking loss + balanced matching BCE over every (text, video) pair, or, with
    ``pair_batch``, over the pairs of ``pair_batch`` clips drawn afresh each step (a collection of
    hundreds of clips would make every step score their squared number of pairs).
    Deterministic (seed 0, one thread); about 6 s for 8 clips.

    The standard pre-LN residual is used because the released "normalized" residual starts with
    latents that barely depend on the input, which a few hundred steps cannot get out of.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is several times faster on a busy machine
    try:
        return _train(videos, masks, captions, pair_batch)
    finally:
        torch.set_num_threads(threads)


def _train(
    videos: torch.Tensor, masks: torch.Tensor, captions: list[str], pair_batch: int | None
) -> PerceiverVL:
    torch.manual_seed(0)
    config = PerceiverVLConfig(
        **TINY, dropout=0.0, layerdrop=0.0, cross_attention_residual="standard"
    )
    model = PerceiverVL(config).train()
    ids, text_mask = make_tokenizer(TINY["max_text_length"])(captions)

    def symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    for _ in range(120):
        z_v = model.encode(video=videos, video_mask=masks)
        z_t = model.encode(text_ids=ids, text_mask=text_mask)
        scale = model.contrastive_head.logit_scale.exp()
        loss = symmetric_ce(scale * (model.embed(z_t, "text") @ model.embed(z_v, "visual").T))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z_v = model.encode(video=videos, video_mask=masks)
        z_t = model.encode(text_ids=ids, text_mask=text_mask)
    head = [
        p for name, p in model.named_parameters() if name.startswith(("decoder.", "matching_head."))
    ]
    optimizer = torch.optim.AdamW(head, lr=1e-3, weight_decay=0.0)
    count = len(captions) if pair_batch is None else min(pair_batch, len(captions))
    target = torch.eye(count)
    weight = target * (count - 1) + (1 - target)  # positives and negatives balanced
    draws = torch.Generator().manual_seed(0)
    for _ in range(1200):
        if count < len(captions):
            pick = torch.randperm(len(captions), generator=draws)[:count]
            pair_logits = model.mixed_stream_scores(z_v[pick], z_t[pick])
        else:
            pair_logits = model.mixed_stream_scores(z_v, z_t)
        loss = symmetric_ce(pair_logits) + F.binary_cross_entropy_with_logits(
            pair_logits, target, weight=weight / weight.mean()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
