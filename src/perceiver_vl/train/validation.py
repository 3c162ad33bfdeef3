"""Whole-set metrics of a validation (or test) epoch, Lightning-free.

Per-batch losses are logged by the training module as they come; the metrics that need the whole
set (retrieval ranks over every caption and visual item, QA accuracy / VQA score over every
question) are accumulated here batch by batch and computed at the end of the epoch, gathered
across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from perceiver_vl.data.collate import visual_inputs
from perceiver_vl.metrics import qa_accuracy, retrieval_metrics, vqa_score
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import StreamMode

from .objectives import gather_no_grad


class ValidationStore:
    """Per data loader: the QA predictions (``qa``) or the multi-stream latents of each visual
    item and caption (``eval_modes``) seen in an epoch; :meth:`metrics` scores them."""

    def __init__(self, *, qa: bool, eval_modes: Sequence[str]) -> None:
        self.qa = qa
        self.eval_modes = tuple(eval_modes)
        self._store: dict[int, dict[str, list[Tensor]]] = {}

    def clear(self) -> None:
        """Forget the epoch's batches."""
        self._store = {}

    @torch.no_grad()
    def add(
        self, model: PerceiverVL, batch: dict[str, Any], batch_idx: int, dataloader_idx: int
    ) -> None:
        """Keep what :meth:`metrics` needs of one batch of data loader ``dataloader_idx``. A
        batch without ``index`` gets indices unique to ``batch_idx``."""
        store = self._store.setdefault(dataloader_idx, {})
        if self.qa:
            logits = model(
                **visual_inputs(batch), text_ids=batch["text_ids"], text_mask=batch["text_mask"]
            ).answer_logits
            store.setdefault("pred", []).append(logits.argmax(1))
            if "answer_scores" in batch:
                store.setdefault("scores", []).append(batch["answer_scores"])
            if "answer_index" in batch:
                store.setdefault("answer", []).append(batch["answer_index"])
            return
        if self.eval_modes and "text_ids" in batch:
            store.setdefault("visual", []).append(model.encode(**visual_inputs(batch)))
            store.setdefault("text", []).append(
                model.encode(text_ids=batch["text_ids"], text_mask=batch.get("text_mask"))
            )
            index = batch.get("index")
            if not isinstance(index, Tensor):
                index = torch.arange(batch["text_ids"].shape[0]) + 1_000_000 * batch_idx
            store.setdefault("index", []).append(index.to(batch["text_ids"].device))

    def metrics(self, model: PerceiverVL, world: int = 1, rank: int = 0) -> dict[str, float]:
        """The epoch's metrics by name: ``vqa_score`` / ``qa_acc``, or ``<mode>_<metric>`` for
        each retrieval mode; data loaders after the first get a ``_<index>`` suffix. Under
        several ranks the stores are gathered and the text rows of the retrieval ranking are
        split across ranks (``world``, ``rank``)."""
        out: dict[str, float] = {}
        for dataloader_idx, store in sorted(self._store.items()):
            suffix = "" if dataloader_idx == 0 else f"_{dataloader_idx}"
            if "pred" in store:
                pred = gather_no_grad(torch.cat(store["pred"]))
                if "scores" in store:
                    scores = gather_no_grad(torch.cat(store["scores"]).float())
                    out[f"vqa_score{suffix}"] = vqa_score(pred, scores)
                if "answer" in store:
                    answer = gather_no_grad(torch.cat(store["answer"]))
                    out[f"qa_acc{suffix}"] = qa_accuracy(pred, answer)
                continue
            if "visual" not in store:
                continue
            visual = gather_no_grad(torch.cat(store["visual"]))
            text = gather_no_grad(torch.cat(store["text"]))
            index = gather_no_grad(torch.cat(store["index"]))
            # the distributed sampler pads with repeated samples: keep each index once
            order = torch.argsort(index, stable=True)
            first = torch.ones_like(order, dtype=torch.bool)
            first[1:] = index[order][1:] != index[order][:-1]
            keep = order[first]
            results = self.retrieval(model, visual[keep], text[keep], world, rank)
            for mode, values in results.items():
                for name, value in values.items():
                    out[f"{mode}_{name}{suffix}"] = value
        return out

    @torch.no_grad()
    def retrieval(
        self, model: PerceiverVL, visual: Tensor, text: Tensor, world: int = 1, rank: int = 0
    ) -> dict[str, dict[str, float]]:
        """Retrieval metrics of aligned (visual i, text i) latents, text rows sharded by rank."""
        rows = torch.arange(text.shape[0], device=text.device)[rank::world]
        out = {}
        for mode in self.eval_modes:
            if mode == StreamMode.MULTI:
                sim = model.multi_stream_scores(visual, text[rows])
            else:
                sim = model.mixed_stream_scores(visual, text[rows])
            out[mode] = retrieval_metrics(
                sim.float(), rows.cpu(), distributed=world > 1 and text.shape[0] > 0
            )
        return out


__all__ = ["ValidationStore"]
