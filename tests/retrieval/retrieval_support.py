"""Helpers for the retrieval tests: the tiny config, synthetic clips, a tiny trainer, and the
index's default tokenizer / video decoder (no stand-ins: a broken tokenizer fails these tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model import preset_fields
from perceiver_vl.retrieval import media

#: The ``tiny`` preset at two layers on 16 px patches, 8 frames and the real vocabulary.
TINY = preset_fields(
    "tiny",
    num_self_attention_layers=2,
    cross_attention_before_layers=(0, 1),
    patch_size=16,
    max_frames=8,
    max_text_length=16,
    vocab_size=30522,
)

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 20),
}
DIRECTIONS = ("left", "right")


def make_tokenizer(max_length: int) -> media.TextTokenizer:
    """The index's default tokenizer (the shipped BERT-uncased vocabulary)."""
    return media.default_tokenizer(max_length)


def make_loader() -> media.VideoLoader:
    """The index's default video decoder."""
    return media.default_video_loader()


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
