"""The losses of one training batch, per objective (Lightning-free).

:class:`ObjectiveLosses` turns a collated batch into the named losses of the configured
objectives (``matching``, ``mlm``, ``contrastive``, ``locked_text``, ``retrieval``, ``qa``,
``multiple_choice``) and the statistics logged beside them. The sampling helpers it composes
(negatives, InfoNCE, retrieval candidates) are in :mod:`perceiver_vl.train.objectives`; the
options it reads are :class:`~perceiver_vl.train.options.ObjectiveOptions` and the locked-text
part of :class:`~perceiver_vl.train.options.FreezingOptions`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from perceiver_vl.data.collate import visual_inputs
from perceiver_vl.metrics import qa_accuracy, vqa_score
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.streams import StreamMode

from .locked_text import build_locked_text
from .objectives import (
    caption_similarity,
    contrastive_loss,
    in_batch_mixed_loss,
    matching_pairs,
    retrieval_candidates,
    text_keys,
)
from .options import TrainingOptions


class ObjectiveLosses:
    """Computes the objectives of :class:`~perceiver_vl.train.options.TrainingOptions` on a
    model.

    A plain object, not a module: it holds a reference to ``model`` (whose parameters belong to
    whoever owns the model) and the locked phase's fixed text features, built on first use from
    ``options.seed`` (identical on every rank, never optimised nor saved).
    """

    def __init__(self, model: PerceiverVL, options: TrainingOptions) -> None:
        self.model = model
        self.options = options
        self.objective = options.objective
        self.freezing = options.freezing
        self.objectives = list(options.objective.objectives)
        self.retrieval_streams: tuple[str, ...] = options.objective.retrieval_streams
        self._locked_text: Any = None

    def compute_losses(
        self,
        batch: dict[str, Any],
        layerdrop_step: int | None,
        generator: torch.Generator,
        global_step: int = 0,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The objectives of one collated batch -> (losses by name, logged statistics).

        ``layerdrop_step`` picks the LayerDrop draw (None: every block, as in evaluation),
        ``generator`` draws the negatives, ``global_step`` (the optimiser step) decides whether
        the locked-text phase is on. ``stats["_blocks"]`` holds the cross-attention blocks the
        step used."""
        model, objectives = self.model, self.objectives
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        vis = visual_inputs(batch)
        ids, mask = batch["text_ids"], batch.get("text_mask")
        size = ids.shape[0]
        keys = text_keys(batch["text"], ids.device) if "text" in batch else None
        blocks = None

        visual_latents = text_latents = similarity = None
        if "contrastive" in objectives or "retrieval" in objectives:
            need_latents = "contrastive" in objectives or StreamMode.MIXED in self.retrieval_streams
            need_latents = need_latents or self.objective.hard_negatives
            locked = global_step < self.freezing.locked_text_steps
            if need_latents:
                visual_latents = model.encode(**vis, layerdrop_step=layerdrop_step)
                if not locked or "retrieval" in objectives:
                    text_latents = model.encode(
                        text_ids=ids, text_mask=mask, layerdrop_step=layerdrop_step
                    )
            if "contrastive" in objectives:
                visual_embedding = model.embed(visual_latents, "visual")
                scale = model.contrastive_head.logit_scale
                text_embedding = (
                    self._locked_text_embedding(ids, mask)
                    if locked
                    else model.embed(text_latents, "text")
                )
                loss, logits = contrastive_loss(visual_embedding, text_embedding, scale, keys=keys)
                losses["contrastive"] = loss
                if not locked and self.freezing.locked_text_anchor > 0:
                    losses["locked_text"], _ = contrastive_loss(
                        visual_embedding, self._locked_text_embedding(ids, mask), scale, keys=keys
                    )
                stats["temperature"] = 1.0 / scale.detach().exp()
            if "retrieval" in objectives:
                if self.objective.hard_negatives:
                    similarity = self._similarity(
                        batch, visual_latents, text_latents, layerdrop_step
                    )
                per_stream = {
                    stream: self._retrieval_loss(
                        stream,
                        batch,
                        visual_latents,
                        text_latents,
                        similarity,
                        keys,
                        layerdrop_step,
                        generator,
                    )
                    for stream in self.retrieval_streams
                }
                weights = self.objective.retrieval_stream_weights
                losses["retrieval"] = sum(
                    weights[stream] * loss for stream, (loss, _) in per_stream.items()
                ) / sum(weights.values())
                stats["retrieval_acc"] = sum(acc for _, acc in per_stream.values()) / len(
                    per_stream
                )
                if len(per_stream) > 1:
                    for stream, (loss, acc) in per_stream.items():
                        stats[f"retrieval_{stream}_loss"] = loss.detach()
                        stats[f"retrieval_{stream}_acc"] = acc

        if "matching" in objectives or "mlm" in objectives:
            joint_pass = (
                self.objective.matching_text == "corrupted"
                and "matching" in objectives
                and "mlm" in objectives
            )
            if "mlm" in objectives and "mlm_labels" not in batch:
                raise ValueError(
                    "the 'mlm' objective needs masked-LM inputs: set data.mlm_probability > 0"
                )
            if "matching" in objectives:
                index, labels = matching_pairs(
                    size,
                    generator,
                    keys=keys,
                    negative_fraction=self.objective.matching_negative_fraction,
                    scores=self._matching_scores(
                        batch, visual_latents, text_latents, similarity, layerdrop_step
                    ),
                )
                index, matching_labels = index.to(ids.device), labels.to(ids.device)
            if "matching" in objectives and "mlm" in objectives and not joint_pass:
                # the released semantics, matching on the clean caption and masked LM on the
                # corrupted copy, as one call over 2B pairs: each video is embedded and its
                # keys/values projected once for both (equal to two forwards, at less cost)
                out = self._clean_matching_and_mlm(
                    batch, vis, index, matching_labels, layerdrop_step
                )
                blocks = out.cross_attention_blocks
                losses["matching"] = out.matching_loss
                pred = (out.matching_logits.detach()[:size] > 0).long()
                stats["matching_acc"] = (pred == matching_labels).float().mean()
                self._mlm_stats(out, batch["mlm_labels"], losses, stats)
            elif "matching" in objectives and not joint_pass:
                out = model(
                    **visual_inputs(batch, index),
                    text_ids=ids,
                    text_mask=mask,
                    matching_labels=matching_labels,
                    layerdrop_step=layerdrop_step,
                )
                blocks = out.cross_attention_blocks
                self._matching_stats(out, matching_labels, losses, stats)
            elif joint_pass:
                # one encoder call: matching on the corrupted text, MLM on the matched pairs
                mlm_labels = batch["mlm_labels"]
                if not self.objective.mlm_on_negatives:
                    mlm_labels = mlm_labels.masked_fill(matching_labels[:, None] == 0, -100)
                out = model(
                    **visual_inputs(batch, index),
                    text_ids=batch["mlm_ids"],
                    text_mask=mask,
                    mlm_labels=mlm_labels,
                    matching_labels=matching_labels,
                    layerdrop_step=layerdrop_step,
                )
                blocks = out.cross_attention_blocks
                self._matching_stats(out, matching_labels, losses, stats)
                self._mlm_stats(out, mlm_labels, losses, stats)
            else:  # masked LM alone: each sample's own visual input with its corrupted text
                out = model(
                    **vis,
                    text_ids=batch["mlm_ids"],
                    text_mask=mask,
                    mlm_labels=batch["mlm_labels"],
                    layerdrop_step=layerdrop_step,
                )
                blocks = out.cross_attention_blocks
                self._mlm_stats(out, batch["mlm_labels"], losses, stats)

        if "qa" in objectives:
            if model.config.qa_loss == "bce":
                if "answer_scores" not in batch:
                    raise ValueError("qa_loss='bce' needs batches with answer_scores (VQA data)")
                targets = batch["answer_scores"]
            else:
                if "answer_index" not in batch:
                    raise ValueError("qa_loss='ce' needs batches with answer_index (MSRVTT-QA)")
                targets = batch["answer_index"].masked_fill(batch["answer_index"] < 0, -100)
            out = model(
                **vis,
                text_ids=ids,
                text_mask=mask,
                answer_targets=targets,
                layerdrop_step=layerdrop_step,
            )
            losses["qa"] = out.qa_loss
            blocks = out.cross_attention_blocks
            if model.config.qa_loss == "bce":
                stats["vqa_score"] = torch.tensor(vqa_score(out.answer_logits.detach(), targets))
            else:
                stats["qa_acc"] = torch.tensor(qa_accuracy(out.answer_logits.detach(), targets))
        if "multiple_choice" in objectives:
            if "choices_ids" not in batch or "answer_index" not in batch:
                raise ValueError(
                    "the 'multiple_choice' objective needs batches with choices and answer_index "
                    "(TGIF-QA action / transition: kind: tgif_qa, task: action)"
                )
            choice_ids, choice_mask = batch["choices_ids"], batch["choices_mask"]  # (B, C, L)
            num_choices = choice_ids.shape[1]
            owner = torch.arange(size, device=ids.device).repeat_interleave(num_choices)
            out = model(
                **visual_inputs(batch, owner),
                text_ids=choice_ids.flatten(0, 1),
                text_mask=choice_mask.flatten(0, 1),
                layerdrop_step=layerdrop_step,
            )
            logits = out.matching_logits.float().view(size, num_choices)
            target = batch["answer_index"]
            losses["multiple_choice"] = F.cross_entropy(logits, target)
            stats["mc_acc"] = (logits.detach().argmax(1) == target).float().mean()
            blocks = out.cross_attention_blocks
        if blocks is None:
            blocks = model.select_cross_attention_blocks(None, layerdrop_step)
        stats["_blocks"] = torch.tensor(blocks)
        return losses, stats

    @torch.no_grad()
    def _similarity(
        self,
        batch: dict[str, Any],
        visual_latents: Tensor | None,
        text_latents: Tensor | None,
        layerdrop_step: int | None,
    ) -> Tensor:
        """This batch's multi-stream similarity (text x visual, no gradient), from the step's
        latents when an objective encoded them (else encoded here with the step's LayerDrop
        decision); hard negatives of every kind are drawn from it."""
        model = self.model
        if visual_latents is None:
            visual_latents = model.encode(**visual_inputs(batch), layerdrop_step=layerdrop_step)
        if text_latents is None:
            text_latents = model.encode(
                text_ids=batch["text_ids"],
                text_mask=batch.get("text_mask"),
                layerdrop_step=layerdrop_step,
            )
        return model.multi_stream_scores(visual_latents.detach(), text_latents.detach())

    def _matching_scores(
        self,
        batch: dict[str, Any],
        visual_latents: Tensor | None,
        text_latents: Tensor | None,
        similarity: Tensor | None,
        layerdrop_step: int | None,
    ) -> Tensor | None:
        """The logits hard matching negatives are drawn by (text x visual), or None (random):
        ``hard``, the multi-stream similarity at the contrastive temperature; ``caption``, the
        captions' word overlap over a temperature of 0.1."""
        kind = self.objective.matching_negatives
        if kind == "random":
            return None
        if kind == "caption":
            if "text" not in batch:
                raise ValueError(
                    "matching_negatives: caption needs the batch's caption strings ('text')"
                )
            return caption_similarity(batch["text"]) / 0.1
        if similarity is None:
            similarity = self._similarity(batch, visual_latents, text_latents, layerdrop_step)
        scale = self.model.contrastive_head.logit_scale.detach().float().exp().clamp(max=100.0)
        return scale * similarity

    @staticmethod
    def _matching_stats(
        out: Any, labels: Tensor, losses: dict[str, Tensor], stats: dict[str, Tensor]
    ) -> None:
        losses["matching"] = out.matching_loss
        pred = (out.matching_logits.detach() > 0).long()
        stats["matching_acc"] = (pred == labels).float().mean()

    def _clean_matching_and_mlm(
        self,
        batch: dict[str, Any],
        vis: dict[str, Any],
        index: Tensor,
        matching_labels: Tensor,
        layerdrop_step: int | None,
    ) -> Any:
        """Pretraining's two passes in one forward over 2B pairs: rows 0..B-1 pair video
        ``index[i]`` with clean caption i (matching, ``matching_labels``), rows B..2B-1 pair
        video i with its corrupted caption (masked LM). Texts and videos are items of the
        model's paired forward, so every video is embedded once."""
        ids, mask = batch["text_ids"], batch.get("text_mask")
        size = ids.shape[0]
        own = torch.arange(size, device=ids.device)
        mlm_labels = batch["mlm_labels"]
        return self.model(
            **vis,
            text_ids=torch.cat([ids, batch["mlm_ids"]]),
            text_mask=None if mask is None else torch.cat([mask, mask]),
            visual_index=torch.cat([index, own]),
            text_index=torch.arange(2 * size, device=ids.device),
            mlm_labels=torch.cat([torch.full_like(mlm_labels, -100), mlm_labels]),
            matching_labels=torch.cat([matching_labels, torch.full_like(matching_labels, -100)]),
            layerdrop_step=layerdrop_step,
        )

    @staticmethod
    def _mlm_stats(
        out: Any, mlm_labels: Tensor, losses: dict[str, Tensor], stats: dict[str, Tensor]
    ) -> None:
        losses["mlm"] = out.mlm_loss
        target = mlm_labels != -100
        if bool(target.any()):
            hit = out.mlm_target_logits.detach().argmax(-1) == mlm_labels[target]
            stats["mlm_acc"] = hit.float().mean()

    @torch.no_grad()
    def _locked_text_embedding(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        """The locked phase's fixed text targets
        (:func:`~perceiver_vl.train.locked_text.build_locked_text`), built on first use from
        ``seed`` (the same on every rank); a plain attribute, so neither optimised nor saved."""
        if self._locked_text is None:
            self._locked_text = build_locked_text(
                self.freezing.locked_text_features,
                self.model.config,
                seed=self.options.seed,
            )
        return self._locked_text(ids, mask)

    def _retrieval_loss(
        self,
        stream: str,
        batch: dict[str, Any],
        visual_latents: Tensor | None,
        text_latents: Tensor | None,
        scores: Tensor | None,
        keys: Tensor | None,
        layerdrop_step: int | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        model = self.model
        num_negatives = self.objective.retrieval_negatives
        if stream == StreamMode.SINGLE and self.objective.single_stream_negatives:
            num_negatives = self.objective.single_stream_negatives
        if num_negatives == "all":
            return in_batch_mixed_loss(
                model,
                visual_latents,
                text_latents,
                keys,
                self.objective.retrieval_directions,
            )
        ids, mask = batch["text_ids"], batch.get("text_mask")
        size = ids.shape[0]
        total, correct, count = 0.0, 0.0, 0
        for direction in self.objective.retrieval_directions:
            direction_scores = (
                None if scores is None else (scores if direction == "t2v" else scores.T)
            )
            cand = retrieval_candidates(
                size,
                num_negatives,
                generator,
                scores=direction_scores,
                keys=keys,
                hard_fraction=self.objective.hard_negative_fraction,
            ).to(ids.device)
            queries = torch.arange(size, device=ids.device)
            wanted = self.objective.single_stream_queries
            if stream == StreamMode.SINGLE and wanted is not None and wanted < size:
                queries = torch.randperm(size, generator=generator)[:wanted].to(ids.device)
                cand = cand[queries]
            k1 = cand.shape[1]
            num_queries = queries.shape[0]
            query = queries[:, None].expand(-1, k1).reshape(-1)
            item = cand.reshape(-1)
            v_idx, t_idx = (item, query) if direction == "t2v" else (query, item)
            if stream == StreamMode.MIXED:
                logits = model.mixed_stream_logits(visual_latents[v_idx], text_latents[t_idx])
            else:
                logits = model.single_stream_pair_logits(
                    **visual_inputs(batch),
                    text_ids=ids,
                    text_mask=mask,
                    visual_index=v_idx,
                    text_index=t_idx,
                    layerdrop_step=layerdrop_step,
                )
            logits = logits.float().view(num_queries, k1)
            target = torch.zeros(num_queries, dtype=torch.long, device=ids.device)
            total = total + F.cross_entropy(logits, target)
            correct += float((logits.detach().argmax(1) == 0).float().sum())
            count += num_queries
        n = len(self.objective.retrieval_directions)
        return total / n, torch.tensor(correct / max(count, 1))
