"""Encoding every caption and every media of a retrieval set once (the shared first pass of the
multi, mixed and rerank modes), and the evaluation precision."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from perceiver_vl.model import PerceiverVL

from .inputs import RetrievalInputs, StreamedRetrievalInputs


def precision_autocast(device: torch.device, precision: str) -> torch.autocast:
    """Autocast to bfloat16 for ``precision`` ``"bf16"`` / ``"bf16-mixed"``; disabled otherwise."""
    if precision in ("bf16", "bf16-mixed"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def encode_all(
    model: PerceiverVL,
    data: RetrievalInputs | StreamedRetrievalInputs,
    *,
    batch_size: int = 64,
    cross_attention_layers: Any = None,
    precision: str = "32",
) -> tuple[Tensor, Tensor, float, float]:
    """(visual latents (V, N, D), text latents (N_t, N, D), visual seconds, text seconds).

    ``data`` is :class:`RetrievalInputs` or :class:`StreamedRetrievalInputs`; media are encoded
    batch by batch as they come, and only the latents are kept, in float32 (the parameters'
    precision; under bf16 autocast the outputs are widened back). Streamed inputs with
    ``progress`` show a bar with an ETA for the media and one for the captions."""
    device = next(model.parameters()).device
    with precision_autocast(device, precision):
        start = time.perf_counter()
        visual = []
        for _, inputs in data.visual_batches(batch_size, desc="encoding media"):
            kwargs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
            visual.append(
                model.encode(**kwargs, cross_attention_layers=cross_attention_layers).float()
            )
        visual_seconds = time.perf_counter() - start
        start = time.perf_counter()
        text = []
        num_texts = data.text_ids.shape[0]
        # streamed inputs with progress on: a bar (with ETA) for the captions as for the media
        bar = tqdm(
            total=num_texts,
            desc="encoding captions",
            unit="caption",
            disable=not getattr(data, "progress", False),
        )
        for s in range(0, num_texts, batch_size):
            text.append(
                model.encode(
                    text_ids=data.text_ids[s : s + batch_size].to(device),
                    text_mask=data.text_mask[s : s + batch_size].to(device),
                    cross_attention_layers=cross_attention_layers,
                ).float()
            )
            bar.update(text[-1].shape[0])
        bar.close()
        text_seconds = time.perf_counter() - start
    return _concat_releasing(visual), _concat_releasing(text), visual_seconds, text_seconds


def _concat_releasing(chunks: list[Tensor]) -> Tensor:
    """``torch.cat(chunks)``, emptying the list as it copies, so that the chunks and their
    concatenation are not all held at once (a ``cat`` of the list would peak at twice the
    latents)."""
    if len(chunks) <= 1:
        return torch.cat(chunks)
    first = chunks[0]
    out = first.new_empty((sum(c.shape[0] for c in chunks), *first.shape[1:]))
    del first
    row = 0
    while chunks:
        chunk = chunks.pop(0)
        out[row : row + chunk.shape[0]] = chunk
        row += chunk.shape[0]
    return out


__all__ = ["encode_all", "precision_autocast"]
