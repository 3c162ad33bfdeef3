"""QA evaluation: open-ended answers (accuracy, VQA score) and multiple choice (TGIF-QA)."""

from __future__ import annotations

import time
from typing import Any

import torch

from perceiver_vl.data.collate import visual_inputs
from perceiver_vl.metrics import qa_accuracy, vqa_score
from perceiver_vl.model import PerceiverVL

from .encoding import precision_autocast


@torch.no_grad()
def evaluate_qa(
    model: PerceiverVL,
    loader: Any,
    *,
    precision: str = "32",
    cross_attention_layers: Any = None,
) -> dict[str, float]:
    """QA accuracy (``answer_index`` batches) and VQA score (``answer_scores``) over a loader of
    collated batches; also the wall time in ``seconds``."""
    if model.qa_head is None:
        raise ValueError("the model has no QA head (config.num_answers=0); fine-tune it for QA")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, indices, soft = [], [], []
    start = time.perf_counter()
    try:
        with precision_autocast(device, precision):
            for batch in loader:
                if batch is None:
                    continue
                vis = {
                    k: None if v is None else v.to(device) for k, v in visual_inputs(batch).items()
                }
                logits = model(
                    **vis,
                    text_ids=batch["text_ids"].to(device),
                    text_mask=batch["text_mask"].to(device),
                    cross_attention_layers=cross_attention_layers,
                ).answer_logits
                preds.append(logits.float().argmax(1).cpu())
                if "answer_index" in batch:
                    indices.append(batch["answer_index"])
                if "answer_scores" in batch:
                    soft.append(batch["answer_scores"])
    finally:
        model.train(was_training)
    out: dict[str, float] = {"num_questions": float(sum(len(p) for p in preds))}
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    if indices:
        out["qa_acc"] = qa_accuracy(pred, torch.cat(indices))
    if soft:
        out["vqa_score"] = vqa_score(pred, torch.cat(soft))
    out["seconds"] = time.perf_counter() - start
    return out


@torch.no_grad()
def evaluate_multiple_choice(
    model: PerceiverVL,
    loader: Any,
    *,
    precision: str = "32",
    cross_attention_layers: Any = None,
) -> dict[str, float]:
    """Multiple-choice accuracy (TGIF-QA action / transition) over a loader of collated batches
    with ``choices_ids`` (B, C, L): every candidate is encoded jointly with the video and scored
    by the matching head; the highest-scoring candidate is the answer."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    start = time.perf_counter()
    try:
        with precision_autocast(device, precision):
            for batch in loader:
                if batch is None:
                    continue
                ids, mask = batch["choices_ids"], batch["choices_mask"]
                size, num_choices = ids.shape[:2]
                owner = torch.arange(size).repeat_interleave(num_choices)
                vis = {
                    k: None if v is None else v.to(device)
                    for k, v in visual_inputs(batch, owner).items()
                }
                logits = model(
                    **vis,
                    text_ids=ids.flatten(0, 1).to(device),
                    text_mask=mask.flatten(0, 1).to(device),
                    cross_attention_layers=cross_attention_layers,
                ).matching_logits
                pred = logits.float().view(size, num_choices).argmax(1).cpu()
                correct += int((pred == batch["answer_index"]).sum())
                total += size
    finally:
        model.train(was_training)
    return {
        "num_questions": float(total),
        "mc_acc": 100.0 * correct / max(1, total),
        "seconds": time.perf_counter() - start,
    }


__all__ = ["evaluate_multiple_choice", "evaluate_qa"]
