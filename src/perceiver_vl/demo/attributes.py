"""Which caption attributes a trained model reads: the built-in benchmark's per-attribute view.

Recall says how often the right video comes first; it does not say why the others fail. The
synthetic captions are made of attributes (size, colour, shape, two motion steps), so for each
caption we look at the video ranked first and ask which attributes it shares with the caption.
An attribute the model reads is matched near 100 %; one it ignores is matched at about its
chance rate (1 / number of values, for a near-uniform test split).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ATTRIBUTES = ("size", "colour", "shape", "first_step", "second_step", "motion")


def caption_attributes(record: dict[str, Any]) -> dict[str, str]:
    """The attribute values of one synthetic-benchmark record (a line of ``test.jsonl``)."""
    first, second = record["motion"]
    return {
        "size": record["size_name"],
        "colour": record["colour"],
        "shape": record["shape"],
        "first_step": first,
        "second_step": second,
        "motion": f"{first} then {second}",
    }


def load_attributes(annotations: str | Path, captions: Sequence[str]) -> list[dict[str, str]]:
    """Attributes for each of ``captions`` (looked up by caption in a benchmark JSONL file).

    Raises:
        ValueError: a caption is not in the file (not the synthetic benchmark's split).
    """
    by_caption = {}
    with Path(annotations).open() as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                if "colour" in record:
                    by_caption[record["caption"]] = caption_attributes(record)
    missing = [c for c in captions if c not in by_caption]
    if missing:
        raise ValueError(
            f"{annotations}: {len(missing)} captions have no attributes (e.g. {missing[0]!r}); "
            "the attribute study needs the synthetic benchmark's JSONL files"
        )
    return [by_caption[c] for c in captions]


def attribute_agreement(
    scores: Tensor,
    text_attributes: Sequence[dict[str, str]],
    video_attributes: Sequence[dict[str, str]],
) -> dict[str, dict[str, float]]:
    """For (num_texts, num_videos) ``scores``: the % of captions whose top-ranked video shares
    each attribute, and the chance rate (the % of (caption, video) pairs that share it)."""
    if scores.shape != (len(text_attributes), len(video_attributes)):
        raise ValueError(
            f"scores has shape {tuple(scores.shape)}, expected "
            f"({len(text_attributes)}, {len(video_attributes)})"
        )
    top = scores.float().argmax(dim=1).tolist()
    out: dict[str, dict[str, float]] = {}
    for name in ATTRIBUTES:
        texts = [a[name] for a in text_attributes]
        videos = [a[name] for a in video_attributes]
        hits = sum(texts[i] == videos[j] for i, j in enumerate(top))
        counts: dict[str, int] = {}
        for value in videos:
            counts[value] = counts.get(value, 0) + 1
        chance = sum(counts.get(value, 0) for value in texts) / (len(texts) * len(videos))
        out[name] = {
            "top1_agreement": round(100.0 * hits / len(texts), 2),
            "chance": round(100.0 * chance, 2),
        }
    return out


def attribute_study(
    model: Any, data: Any, attributes: Sequence[dict[str, str]], *, precision: str = "bf16"
) -> dict[str, dict[str, dict[str, float]]]:
    """Per stream mode (multi, mixed): :func:`attribute_agreement` of the t2v rankings. The
    test split has one video per caption, so captions and videos share ``attributes``."""
    from perceiver_vl.evaluation import encode_all

    model.eval()
    with torch.no_grad():
        visual, text, _, _ = encode_all(model, data, precision=precision)
        scores = {
            "multi": model.multi_stream_scores(visual, text),
            "mixed": model.mixed_stream_scores(visual, text),
        }
    videos = [attributes[int(i)] for i in data.text_to_video.argsort()]
    return {mode: attribute_agreement(s, attributes, videos) for mode, s in scores.items()}
