"""LightningModule around :class:`~perceiver_vl.PerceiverVL`: objectives, optimisation, freezing,
LayerDrop steps shared by every rank, and validation metrics."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from perceiver_vl.data.collate import visual_inputs
from perceiver_vl.fileio import atomic_write_json
from perceiver_vl.metrics import qa_accuracy, retrieval_metrics, vqa_score
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig

from .locked_text import KINDS as LOCKED_TEXT_KINDS
from .locked_text import build_locked_text
from .objectives import (
    caption_similarity,
    contrastive_loss,
    gather_no_grad,
    in_batch_mixed_loss,
    matching_pairs,
    retrieval_candidates,
    text_keys,
)

OBJECTIVES = ("matching", "mlm", "contrastive", "retrieval", "qa", "multiple_choice")
Trainable = Literal[
    "all", "cross_attention", "cross_attention_and_heads", "decoder_and_heads", "heads"
]

_NO_DECAY = ("bias", "norm", "embed", "latents", "query", "queries", "logit_scale", "pos", "token")


def no_weight_decay(name: str, param: Tensor) -> bool:
    """Whether a parameter is exempt from weight decay: biases, norms, embeddings, latents,
    queries, the temperature (and any other parameter below two dimensions)."""
    return param.dim() < 2 or any(tag in name.lower() for tag in _NO_DECAY)


class PerceiverVLModule(pl.LightningModule):
    """Trains and validates a Perceiver-VL model.

    Args:
        model: :class:`~perceiver_vl.PerceiverVLConfig` fields (ignored when ``pretrained``).
        pretrained: a folder written by ``save_pretrained`` / ``perceiver-vl export`` to start
            from; ``model`` entries still override ``dropout``, ``layerdrop``, ``num_answers``
            and ``qa_loss`` (a new QA head is created when the answer count differs) and
            ``max_frames`` (the temporal embedding is resampled linearly to the new length).
        vit_weights: a ViT checkpoint to initialise from (see ``load_vit_weights``; the
            paper's pretraining starts from ViT-B/32 at 384). A missing file, or a file from
            which nothing loads, is an error; what loaded and what stayed random is logged and
            written to ``<default_root_dir>/checkpoints/vit_init_report.json``.
        objectives: any of ``matching`` (vision-text matching, BCE, half of the pairs get another
            sample's visual input), ``mlm`` (masked LM through decoder queries; with matching in
            the same decoder call), ``contrastive`` (multi-stream symmetric InfoNCE, features
            gathered across ranks), ``retrieval`` (cross-entropy over 1 positive + k negatives,
            ``retrieval_stream``), ``qa`` (VQA soft-score BCE or MSRVTT-QA cross-entropy),
            ``multiple_choice`` (TGIF-QA action / transition: each of a question's candidate
            texts is encoded jointly with the video, single stream, and scored by the matching
            head; cross-entropy over the candidates).
        loss_weights: per objective multiplier (default 1).
        matching_negative_fraction: share of matching pairs with another sample's visual input.
        matching_negatives: ``random`` (the paper: the other sample is drawn uniformly) or
            ``hard``: drawn with probability softmax(multi-stream similarity), so negatives
            look like the caption (ALBEF's hard negatives; ours, not the paper's). Needs the
            multi-stream embeddings to mean something, i.e. the ``contrastive`` objective
            trained alongside or before. ``caption``: drawn with probability
            softmax(word overlap of the two captions / 0.1), so the negative's caption reads
            like the positive's (ours; needs no trained embedding, so it works in pretraining).
            With random negatives, matching is mostly solved by what differs most often between
            two random captions; negatives alike in most words make it learn the rest.
        matching_text: ``clean`` (the released code): matching is scored on the uncorrupted
            text, and masked LM on the corrupted copy with each sample's own visual input (one
            paired forward over 2B pairs, equal to the released code's two passes, each video
            embedded once). ``corrupted``: one pass over B pairs for both (half the latent
            work): matching is scored on the MLM-corrupted text, and masked LM on the matched
            pairs of that pass (``mlm_on_negatives`` adds the mismatched ones).
        mlm_on_negatives: with ``matching_text: corrupted``, also compute masked LM on
            mismatched pairs (default: matched only).
        retrieval_stream: ``mixed`` (encode each modality once, score with the decoder),
            ``single`` (joint encoding of every candidate pair), or a list of both (the two
            cross-entropies are averaged; they share the decoder and the matching head). Each
            stream's loss is also logged as ``retrieval_<stream>``.
        retrieval_negatives: k negatives per query, or ``"all"``: every other item of the batch
            (mixed stream only). With ``"all"`` the mixed-stream logits of all B x B pairs come
            from the factorised scorer (:meth:`~perceiver_vl.model.PerceiverVL.mixed_stream_scores`:
            one decoder MLP per pair, keys and values projected once per item), so B - 1
            negatives cost little more than 7; the loss is the cross-entropy of each query over
            the batch, per rank (not gathered across ranks).
        single_stream_negatives: with both streams in ``retrieval_stream``, the single stream's
            k (default: ``retrieval_negatives``; needed when that is ``all``, which only the
            mixed stream can score). A single-stream caption costs k + 1 joint encodings.
        hard_negatives: negatives are the k hardest under the multi-stream similarity (not with
            ``retrieval_negatives: all``, which takes every item).
        hard_negative_fraction: with ``hard_negatives``, only this share of the k negatives is
            the hardest; the rest are random in-batch items. Hardest-only negatives under the
            multi-stream similarity share what that similarity already sees, so the mixed
            stream never learns it; mixing in random ones keeps both.
        retrieval_directions: ``t2v``, ``v2t`` or both (queries are texts / videos).
        optimizer: ``adamw`` or ``adam``; lr, weight_decay, betas, eps as usual. The defaults
            (AdamW, lr 1e-4, weight decay 0.01, 10 % warm-up then linear decay) are ours, for
            small runs. The paper and the released code use Adam (PyTorch's, weight decay as an
            L2 term) with betas (0.9, 0.98), eps 1e-8, weight decay 0.001 on every parameter
            and a constant learning rate (1e-5 pretraining and video tasks, 1e-4 image tasks);
            the configs under configs/ set those (docs/reproducing.md).
        weight_decay_exempt: biases, norms, embeddings, latents, queries and the temperature
            get no weight decay (ours, the usual practice); False decays every parameter, as
            the released code does.
        head_lr_multiplier: learning-rate multiplier for a freshly created QA head.
        warmup: linear warm-up, a fraction of the schedule (< 1) or a step count (>= 1).
        schedule: after warm-up, ``linear`` decay to ``end_lr_ratio * lr``, ``cosine`` or
            ``constant``.
        max_schedule_steps: schedule length (default: the trainer's estimated optimiser steps).
        effective_batch_size: accumulate gradients to reach this many samples per optimiser
            step, counted over every training set of a step and every rank (WebVid + CC3M at
            per-device batch b on w ranks see 2 b w samples per micro-step); overrides
            ``trainer.accumulate_grad_batches``. The accumulation is rounded up, and the
            samples per step it gives are logged.
        trainable: what trains at first: ``all``, ``cross_attention`` (the cross-attention
            blocks alone, the paper's first stage), ``cross_attention_and_heads``,
            ``decoder_and_heads`` (the query decoder and the heads on fixed latents) or ``heads``.
        unfreeze_at_step: optimiser step from which everything trains (None = never).
        two_stage: the paper's two-stage transfer (§4.2) as one switch: the cross-attention
            blocks alone train (everything else frozen) for this many optimiser steps (>= 1) or
            this fraction of the schedule (< 1), then everything trains. The same as
            ``trainable: cross_attention`` + ``unfreeze_at_step``; leave those at their defaults.
        locked_text_steps: for this many optimiser steps, the contrastive loss compares the
            visual embeddings with fixed text features (``locked_text_features``) instead of the
            live text side; afterwards both sides train as usual. When both sides of a shared
            encoder learn from scratch together, the text side settles on what is easiest to
            see (colour, size) and the visual side never gets a signal for the rest (motion);
            fixed features keep every caption distinct, so the visual side learns all of it
            first (see docs/analyses.md). 0 = off.
        locked_text_features: the locked phase's text targets (seeded from ``seed``, identical
            on every rank, centred on the batch mean; see :mod:`perceiver_vl.train.locked_text`):
            ``ngram``, random unigram + ordered-bigram features, which tell word order apart;
            or ``model``, the text embeddings of a frozen, freshly initialised copy of the
            model, which are nearly a bag of words.
        locked_text_anchor: after the locked phase (or without one), the visual embeddings
            keep being compared with the same fixed text features, as an extra loss
            ``locked_text`` of this weight, while the contrastive loss trains both sides
            against each other. It keeps what a locked phase taught the visual side (motion,
            word order) while the live text side catches up (docs/analyses.md). 0 = off.
        eval_modes: retrieval modes computed at validation (``multi``, ``mixed``).
        training_attention: the attention kernel of training steps (validation and inference
            keep PyTorch's choice): ``math`` (PyTorch's composite scaled-dot-product attention,
            whose backward is plain matmuls), ``default`` (PyTorch's choice: the flash kernel on
            the CPU, fused kernels on GPUs) or ``auto``: ``math`` on the CPU, ``default``
            elsewhere, because on CPUs the composite backward is the faster one for small
            models, while for inference the flash kernel is (measurements in
            docs/performance.md).
        seed: seeds the objectives' sampling (negatives).
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        pretrained: str | None = None,
        vit_weights: str | None = None,
        objectives: Sequence[str] = ("matching", "mlm"),
        loss_weights: dict[str, float] | None = None,
        matching_negative_fraction: float = 0.5,
        matching_negatives: Literal["random", "hard", "caption"] = "random",
        matching_text: Literal["clean", "corrupted"] = "clean",
        mlm_on_negatives: bool = False,
        retrieval_stream: Literal["mixed", "single"] | Sequence[str] = "mixed",
        retrieval_negatives: int | Literal["all"] = 7,
        single_stream_negatives: int | None = None,
        hard_negatives: bool = False,
        hard_negative_fraction: float = 1.0,
        retrieval_directions: Sequence[str] = ("t2v", "v2t"),
        optimizer: Literal["adamw", "adam"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        weight_decay_exempt: bool = True,
        head_lr_multiplier: float = 1.0,
        warmup: float = 0.1,
        schedule: Literal["linear", "cosine", "constant"] = "linear",
        end_lr_ratio: float = 0.0,
        max_schedule_steps: int | None = None,
        effective_batch_size: int | None = None,
        trainable: Trainable = "all",
        unfreeze_at_step: int | None = None,
        two_stage: float | None = None,
        locked_text_steps: int = 0,
        locked_text_features: Literal["ngram", "model"] = "ngram",
        locked_text_anchor: float = 0.0,
        eval_modes: Sequence[str] = ("multi", "mixed"),
        training_attention: Literal["auto", "math", "default"] = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        objectives = [str(o) for o in objectives]
        bad = sorted(set(objectives) - set(OBJECTIVES))
        if bad or not objectives:
            raise ValueError(
                f"model.objectives={objectives} has unknown entries {bad}; choose from "
                f"{list(OBJECTIVES)}"
            )
        for name, value, allowed in (
            ("matching_text", matching_text, ("clean", "corrupted")),
            ("matching_negatives", matching_negatives, ("random", "hard", "caption")),
            ("optimizer", optimizer, ("adamw", "adam")),
            ("locked_text_features", locked_text_features, LOCKED_TEXT_KINDS),
            ("training_attention", training_attention, ("auto", "math", "default")),
            ("schedule", schedule, ("linear", "cosine", "constant")),
            (
                "trainable",
                trainable,
                (
                    "all",
                    "cross_attention",
                    "cross_attention_and_heads",
                    "decoder_and_heads",
                    "heads",
                ),
            ),
        ):
            if value not in allowed:
                raise ValueError(f"model.{name}={value!r} must be one of {list(allowed)}")
        streams = (
            [retrieval_stream] if isinstance(retrieval_stream, str) else list(retrieval_stream)
        )
        if not streams or set(streams) - {"mixed", "single"} or len(set(streams)) != len(streams):
            raise ValueError(
                f"model.retrieval_stream={retrieval_stream!r} must be 'mixed', 'single' or a list "
                "of both"
            )
        if set(retrieval_directions) - {"t2v", "v2t"} or not retrieval_directions:
            raise ValueError(
                f"model.retrieval_directions={list(retrieval_directions)} must be a non-empty "
                "subset of ['t2v', 'v2t']"
            )
        if set(eval_modes) - {"multi", "mixed"}:
            raise ValueError(
                f"model.eval_modes={list(eval_modes)} must be a subset of ['multi', 'mixed'] "
                "(single and rerank run in `perceiver-vl evaluate`)"
            )
        if two_stage is not None:
            if not two_stage > 0:
                raise ValueError(
                    f"model.two_stage={two_stage!r} must be a step count (>= 1) or a fraction of "
                    "the schedule (0 < x < 1), e.g. 0.1"
                )
            if trainable != "all" or unfreeze_at_step is not None:
                raise ValueError(
                    "model.two_stage already sets the freezing schedule; leave model.trainable "
                    f"('{trainable}') at 'all' and model.unfreeze_at_step ({unfreeze_at_step}) "
                    "unset, or drop two_stage"
                )
        if single_stream_negatives is not None and (
            isinstance(single_stream_negatives, bool)
            or not isinstance(single_stream_negatives, int)
            or single_stream_negatives < 1
        ):
            raise ValueError(
                f"model.single_stream_negatives={single_stream_negatives!r} must be a number of "
                "negatives per query (>= 1)"
            )
        if retrieval_negatives == "all":
            # only the mixed stream can score every pair; a single stream needs its own k
            if "single" in streams and single_stream_negatives is None:
                raise ValueError(
                    "model.retrieval_negatives='all' scores every pair of the batch with the "
                    "factorised mixed-stream scorer; set model.retrieval_stream: mixed, or give "
                    "the single stream its own number (model.single_stream_negatives)"
                )
            if hard_negatives and "single" not in streams:
                raise ValueError(
                    "model.retrieval_negatives='all' already uses every item of the batch as a "
                    "negative; set model.hard_negatives: false"
                )
        elif isinstance(retrieval_negatives, bool) or not (
            isinstance(retrieval_negatives, int) and retrieval_negatives >= 1
        ):
            raise ValueError(
                f"model.retrieval_negatives={retrieval_negatives!r} must be a number of negatives "
                "per query (>= 1) or 'all' (every other item of the batch, mixed stream)"
            )
        if not 0.0 <= hard_negative_fraction <= 1.0:
            raise ValueError(
                f"model.hard_negative_fraction={hard_negative_fraction!r} must be in [0, 1] "
                "(the share of the k negatives that are the hardest; the rest are random)"
            )
        for name, value in (
            ("locked_text_steps", locked_text_steps),
            ("locked_text_anchor", locked_text_anchor),
        ):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
            if value and "contrastive" not in objectives:
                raise ValueError(
                    f"model.{name} only acts on the 'contrastive' objective; add it to "
                    f"model.objectives or set {name}: 0"
                )
        if warmup < 0:
            raise ValueError(f"model.warmup must be >= 0 (fraction or steps), got {warmup}")
        if effective_batch_size is not None and effective_batch_size < 1:
            raise ValueError(f"model.effective_batch_size must be >= 1, got {effective_batch_size}")
        self.save_hyperparameters()
        self.objectives = objectives
        self.retrieval_streams: tuple[str, ...] = tuple(streams)
        # The freezing schedule in force: (what trains first, the step everything trains from).
        self.freeze_mode: str = "cross_attention" if two_stage is not None else trainable
        self.unfreeze_step: int | None = (
            int(two_stage) if two_stage is not None and two_stage >= 1 else unfreeze_at_step
        )
        self.vit_report: dict[str, Any] | None = None
        self.model = self._build_model(model, pretrained, vit_weights)
        if "qa" in objectives and self.model.qa_head is None:
            raise ValueError(
                "the 'qa' objective needs a QA head: set model.model.num_answers to the answer "
                "vocabulary size (e.g. 3129 for VQAv2, 1500 for MSRVTT-QA)"
            )
        self.loss_weights = {o: 1.0 for o in OBJECTIVES} | {"locked_text": locked_text_anchor}
        self.loss_weights |= dict(loss_weights or {})
        self.layerdrop_log: list[tuple[int, tuple[int, ...]]] = []
        self._val_store: dict[int, dict[str, list[Any]]] = {}
        self._new_head_names: set[str] = set()
        # The locked phase's fixed text features: built on first use, never saved.
        self._locked_text: Any = None

    # ------------------------------------------------------------------ model construction
    def _build_model(
        self, fields: dict[str, Any] | None, pretrained: str | None, vit_weights: str | None
    ) -> PerceiverVL:
        fields = dict(fields or {})
        if pretrained:
            model = PerceiverVL.from_pretrained(pretrained)
            overrides = {
                k: fields[k]
                for k in ("dropout", "attention_dropout", "layerdrop", "layerdrop_seed", "qa_loss")
                if k in fields
            }
            if overrides:
                model.config = model.config.replace(**overrides)
                for module in model.modules():
                    if isinstance(module, torch.nn.Dropout) and "dropout" in overrides:
                        module.p = overrides["dropout"]
            frames = fields.get("max_frames")
            if frames is not None and frames != model.config.max_frames:
                # more (or fewer) frames than pretraining, e.g. 16 for ActivityNet after 8: the
                # temporal table is resampled linearly over the frame index (ours; the paper
                # does not say how it extended it)
                state = model.state_dict()
                key = "visual_embed.temporal_embed"
                state[key] = F.interpolate(
                    state[key].transpose(1, 2), size=frames, mode="linear", align_corners=True
                ).transpose(1, 2)
                model = PerceiverVL(model.config.replace(max_frames=frames))
                model.load_state_dict(state)
            answers = fields.get("num_answers")
            if answers is not None and answers != model.config.num_answers:
                fresh = PerceiverVL(model.config.replace(num_answers=answers))
                state = {k: v for k, v in model.state_dict().items() if not k.startswith("qa_head")}
                fresh.load_state_dict(state, strict=False)
                model = fresh
            # from_pretrained returns an inference model (eval mode), and Lightning keeps each
            # submodule's mode when fitting: without this, training from a checkpoint would run
            # with LayerDrop and dropout off
            return model.train()
        config = PerceiverVLConfig.from_dict(fields)
        model = PerceiverVL(config)
        if vit_weights:
            self.vit_report = _load_vit_strict(model, vit_weights)
        return model

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "tokenizer"):
            vocab = dm.tokenizer.vocab_size
            if vocab > self.model.config.vocab_size:
                raise ValueError(
                    f"the tokenizer has {vocab} tokens but model.model.vocab_size="
                    f"{self.model.config.vocab_size}; set model.model.vocab_size: {vocab}"
                )
            if dm.max_text_length > self.model.config.max_text_length:
                raise ValueError(
                    f"data.max_text_length={dm.max_text_length} exceeds model.model."
                    f"max_text_length={self.model.config.max_text_length}; lower one of them"
                )
            if dm.num_frames > self.model.config.max_frames:
                raise ValueError(
                    f"data.num_frames={dm.num_frames} exceeds model.model.max_frames="
                    f"{self.model.config.max_frames}"
                )
        if stage == "fit" and self.vit_report is not None and self.trainer.is_global_zero:
            folder = Path(self.trainer.default_root_dir) / "checkpoints"
            atomic_write_json(folder / "vit_init_report.json", self.vit_report, indent=1)
        if stage == "fit" and self.hparams.effective_batch_size and dm is not None:
            num_sets = max(1, len(getattr(dm, "specs", {}).get("train") or [None]))
            accumulate, samples = accumulation_steps(
                self.hparams.effective_batch_size,
                dm.batch_size,
                num_sets,
                max(1, self.trainer.world_size),
            )
            self.trainer.accumulate_grad_batches = accumulate
            rank_zero_info(
                f"effective batch: {samples} samples per optimiser step = {dm.batch_size} per "
                f"device x {num_sets} training set(s) x {max(1, self.trainer.world_size)} rank(s)"
                f" x {accumulate} accumulated (requested {self.hparams.effective_batch_size})"
            )

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["perceiver_vl_config"] = self.model.config.to_dict()

    def configure_callbacks(self) -> list[pl.Callback]:
        """Training-time reliability: per-step seeding of the global RNGs (exact resumption,
        :mod:`~perceiver_vl.train.resume`)."""
        from .resume import StepSeeding

        return [StepSeeding()]

    # ------------------------------------------------------------------ steps
    def _layerdrop_step(self, batch_idx: int) -> int:
        """One LayerDrop draw per micro-batch, identical on every rank and continued on resume."""
        accumulate = max(1, int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1))
        return self.global_step * accumulate + batch_idx % accumulate

    def _generator(self, step: int, salt: int = 0) -> torch.Generator:
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator().manual_seed(
            (self.hparams.seed * 1_000_003 + step * 7919 + rank * 104_729 + salt) % (2**63)
        )

    def _subbatches(self, batch: Any) -> list[tuple[str, dict[str, Any]]]:
        if batch is None:
            return []
        if isinstance(batch, dict) and ("text_ids" in batch or "video" in batch):
            return [("", batch)]
        if isinstance(batch, dict):
            return [(f"{name}/", b) for name, b in batch.items() if b is not None]
        raise TypeError(f"unexpected batch type {type(batch).__name__}")

    def compute_losses(
        self, batch: dict[str, Any], layerdrop_step: int | None, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The weighted objectives of one collated batch -> (losses, logged statistics)."""
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
            need_latents = "contrastive" in objectives or "mixed" in self.retrieval_streams
            need_latents = need_latents or self.hparams.hard_negatives
            locked = self.global_step < self.hparams.locked_text_steps
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
                if not locked and self.hparams.locked_text_anchor > 0:
                    losses["locked_text"], _ = contrastive_loss(
                        visual_embedding, self._locked_text_embedding(ids, mask), scale, keys=keys
                    )
                stats["temperature"] = 1.0 / scale.detach().exp()
            if "retrieval" in objectives:
                if self.hparams.hard_negatives:
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
                losses["retrieval"] = sum(loss for loss, _ in per_stream.values()) / len(per_stream)
                stats["retrieval_acc"] = sum(acc for _, acc in per_stream.values()) / len(
                    per_stream
                )
                if len(per_stream) > 1:
                    for stream, (loss, acc) in per_stream.items():
                        stats[f"retrieval_{stream}_loss"] = loss.detach()
                        stats[f"retrieval_{stream}_acc"] = acc

        if "matching" in objectives or "mlm" in objectives:
            joint_pass = (
                self.hparams.matching_text == "corrupted"
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
                    negative_fraction=self.hparams.matching_negative_fraction,
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
                if not self.hparams.mlm_on_negatives:
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
        kind = self.hparams.matching_negatives
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
                self.hparams.locked_text_features, self.model.config, seed=self.hparams.seed
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
        num_negatives = self.hparams.retrieval_negatives
        if stream == "single" and self.hparams.single_stream_negatives:
            num_negatives = self.hparams.single_stream_negatives
        if num_negatives == "all":
            return in_batch_mixed_loss(
                model, visual_latents, text_latents, keys, self.hparams.retrieval_directions
            )
        ids, mask = batch["text_ids"], batch.get("text_mask")
        size = ids.shape[0]
        total, correct, count = 0.0, 0.0, 0
        for direction in self.hparams.retrieval_directions:
            direction_scores = (
                None if scores is None else (scores if direction == "t2v" else scores.T)
            )
            cand = retrieval_candidates(
                size,
                num_negatives,
                generator,
                scores=direction_scores,
                keys=keys,
                hard_fraction=self.hparams.hard_negative_fraction,
            ).to(ids.device)
            k1 = cand.shape[1]
            query = torch.arange(size, device=ids.device)[:, None].expand(-1, k1).reshape(-1)
            item = cand.reshape(-1)
            v_idx, t_idx = (item, query) if direction == "t2v" else (query, item)
            if stream == "mixed":
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
            logits = logits.float().view(size, k1)
            target = torch.zeros(size, dtype=torch.long, device=ids.device)
            total = total + F.cross_entropy(logits, target)
            correct += float((logits.detach().argmax(1) == 0).float().sum())
            count += size
        n = len(self.hparams.retrieval_directions)
        return total / n, torch.tensor(correct / max(count, 1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        step = self._layerdrop_step(batch_idx)
        generator = self._generator(step)
        parts = self._subbatches(batch)
        total: Tensor | None = None
        for salt, (prefix, sub) in enumerate(parts):
            if salt:
                generator = self._generator(step, salt)
            with self._training_attention():
                losses, stats = self.compute_losses(sub, step, generator)
            blocks = tuple(int(b) for b in stats.pop("_blocks").tolist())
            if salt == 0:
                self.layerdrop_log.append((step, blocks))
            for name, loss in losses.items():
                weighted = self.loss_weights.get(name, 1.0) * loss
                total = weighted if total is None else total + weighted
                self.log(f"train/{prefix}{name}_loss", loss.detach(), batch_size=_bs(sub))
            for name, value in stats.items():
                self.log(f"train/{prefix}{name}", value.float(), batch_size=_bs(sub))
        if total is None:  # every sample of the batch failed to load: a zero step
            total = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=self._batch_size(parts))
        return total

    def _training_attention(self) -> contextlib.AbstractContextManager:
        """The attention kernel of a training step (``training_attention``). The choice is made
        in the forward; the backward follows the graph the forward built."""
        choice = self.hparams.training_attention
        if choice == "math" or (choice == "auto" and self.device.type == "cpu"):
            return sdpa_kernel([SDPBackend.MATH])
        return contextlib.nullcontext()

    @staticmethod
    def _batch_size(parts: list[tuple[str, dict[str, Any]]]) -> int:
        return max(1, sum(_bs(b) for _, b in parts))

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        if batch is None:
            return
        generator = self._generator(batch_idx, salt=1000 + dataloader_idx)
        losses, stats = self.compute_losses(batch, None, generator)
        stats.pop("_blocks", None)
        suffix = "" if dataloader_idx == 0 else f"_{dataloader_idx}"
        bs = _bs(batch)
        if losses:
            total = sum(self.loss_weights.get(k, 1.0) * v for k, v in losses.items())
            self.log(f"{stage}/loss{suffix}", total, batch_size=bs, add_dataloader_idx=False)
        for name, loss in losses.items():
            self.log(f"{stage}/{name}_loss{suffix}", loss, batch_size=bs, add_dataloader_idx=False)
        for name, value in stats.items():  # matching_acc, mlm_acc, ...: what trains
            if name in ("qa_acc", "vqa_score"):  # logged over the whole epoch below
                continue
            self.log(
                f"{stage}/{name}{suffix}", value.float(), batch_size=bs, add_dataloader_idx=False
            )
        store = self._val_store.setdefault(dataloader_idx, {})
        model = self.model
        if "qa" in self.objectives:
            with torch.no_grad():
                logits = model(
                    **visual_inputs(batch), text_ids=batch["text_ids"], text_mask=batch["text_mask"]
                ).answer_logits
            store.setdefault("pred", []).append(logits.argmax(1))
            if "answer_scores" in batch:
                store.setdefault("scores", []).append(batch["answer_scores"])
            if "answer_index" in batch:
                store.setdefault("answer", []).append(batch["answer_index"])
            return
        if self.hparams.eval_modes and "text_ids" in batch:
            with torch.no_grad():
                store.setdefault("visual", []).append(model.encode(**visual_inputs(batch)))
                store.setdefault("text", []).append(
                    model.encode(text_ids=batch["text_ids"], text_mask=batch.get("text_mask"))
                )
            index = batch.get("index")
            if not isinstance(index, Tensor):
                index = torch.arange(batch["text_ids"].shape[0]) + 1_000_000 * batch_idx
            store.setdefault("index", []).append(index.to(self.device))

    def _eval_epoch_end(self, stage: str) -> None:
        for dataloader_idx, store in sorted(self._val_store.items()):
            suffix = "" if dataloader_idx == 0 else f"_{dataloader_idx}"
            if "pred" in store:
                pred = gather_no_grad(torch.cat(store["pred"]))
                if "scores" in store:
                    scores = gather_no_grad(torch.cat(store["scores"]).float())
                    self.log(f"{stage}/vqa_score{suffix}", vqa_score(pred, scores), sync_dist=False)
                if "answer" in store:
                    answer = gather_no_grad(torch.cat(store["answer"]))
                    self.log(f"{stage}/qa_acc{suffix}", qa_accuracy(pred, answer), sync_dist=False)
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
            visual, text = visual[keep], text[keep]
            results = self._retrieval_eval(visual, text)
            for mode, metrics in results.items():
                for name, value in metrics.items():
                    self.log(f"{stage}/{mode}_{name}{suffix}", value, sync_dist=False)
        self._val_store = {}

    @torch.no_grad()
    def _retrieval_eval(self, visual: Tensor, text: Tensor) -> dict[str, dict[str, float]]:
        """Retrieval metrics of aligned (visual i, text i) latents, text rows sharded by rank."""
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        rows = torch.arange(text.shape[0], device=text.device)[rank::world]
        out = {}
        for mode in self.hparams.eval_modes:
            if mode == "multi":
                sim = self.model.multi_stream_scores(visual, text[rows])
            else:
                sim = self.model.mixed_stream_scores(visual, text[rows])
            out[mode] = retrieval_metrics(
                sim.float(), rows.cpu(), distributed=world > 1 and text.shape[0] > 0
            )
        return out

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def on_validation_epoch_start(self) -> None:
        self._val_store = {}

    def on_test_epoch_start(self) -> None:
        self._val_store = {}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimisation
    def _trainable_now(self, name: str) -> bool:
        mode = self.freeze_mode
        unfreeze = self.unfreeze_step
        if mode == "all" or (unfreeze is not None and self.global_step >= unfreeze):
            return True
        is_cross = name.startswith("model.encoder.cross_attention_blocks")
        is_head = name.startswith(
            ("model.matching_head", "model.mlm_head", "model.contrastive_head", "model.qa_head")
        )
        if mode == "cross_attention":
            return is_cross
        if mode == "cross_attention_and_heads":
            return is_cross or is_head
        if mode == "decoder_and_heads":
            return is_head or name.startswith("model.decoder")
        return is_head

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Freezing: drop the gradients of parameters outside the trainable set (the optimiser
        then skips them; ``requires_grad`` stays on so DDP's reducer is unchanged on unfreeze)."""
        if self.freeze_mode == "all":
            return
        for name, param in self.named_parameters():
            if param.grad is not None and not self._trainable_now(name):
                param.grad = None

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay, head = [], [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if hp.head_lr_multiplier != 1.0 and name.startswith("model.qa_head"):
                head.append(param)
            elif hp.get("weight_decay_exempt", True) and no_weight_decay(name, param):
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if head:
            groups.append(
                {
                    "params": head,
                    "weight_decay": hp.weight_decay,
                    "lr": hp.lr * hp.head_lr_multiplier,
                }
            )
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = hp.max_schedule_steps
        if total is None:
            try:
                total = int(self.trainer.estimated_stepping_batches)
            except Exception:  # no trainer/infinite loader: a constant schedule after warm-up
                total = 0
            if not math.isfinite(total) or total <= 0:
                total = 0
        warmup = hp.warmup if hp.warmup >= 1 else hp.warmup * total
        if hp.two_stage is not None and hp.two_stage < 1:
            if total <= 0:
                raise ValueError(
                    f"model.two_stage={hp.two_stage} is a fraction of the schedule, whose length "
                    "is unknown here; give a step count or model.max_schedule_steps"
                )
            self.unfreeze_step = max(1, round(hp.two_stage * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda=lr_lambda(int(warmup), total, hp.schedule, hp.end_lr_ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


class _LRLambda:
    """Picklable LR multiplier: linear warm-up to 1, then linear/cosine decay or constant."""

    def __init__(self, warmup: int, total: int, schedule: str, end_ratio: float) -> None:
        self.warmup, self.total, self.schedule, self.end_ratio = warmup, total, schedule, end_ratio

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant" or self.total <= self.warmup:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.end_ratio + (1.0 - self.end_ratio) * factor


def _load_vit_strict(model: PerceiverVL, vit_weights: str) -> dict[str, Any]:
    """Initialise ``model`` from a ViT checkpoint; refuse a missing file or an empty load, warn
    about a partial one, and return the load report (logged here, saved by ``setup``)."""
    from perceiver_vl.model.weights import load_vit_weights

    if not Path(vit_weights).is_file():
        raise FileNotFoundError(
            f"model.vit_weights={vit_weights!r} does not exist. The paper's pretraining starts "
            "from a ViT-B/32 (384) checkpoint: download timm's vit_base_patch32_384 weights "
            "(.safetensors, .pth or the original .npz) and set model.vit_weights to the file, or "
            "set model.vit_weights: null to start from random weights on purpose"
        )
    report = load_vit_weights(model, vit_weights)
    if not report.loaded:
        raise ValueError(
            f"model.vit_weights={vit_weights!r}: no tensor matched the model (source keys: "
            f"{len(report.ignored)} ignored, e.g. {report.ignored[:3]}); pass a timm-layout ViT "
            "whose hidden size, patch size and depth match model.model"
        )
    rank_zero_info(f"ViT initialisation from {vit_weights}: {report.summary()}")
    if report.not_loaded:
        warnings.warn(
            f"model.vit_weights={vit_weights!r} loaded only partly: {len(report.not_loaded)} "
            f"tensors stay random ({', '.join(report.not_loaded[:6])}, ...); check the patch "
            "size and width of the checkpoint against model.model",
            stacklevel=2,
        )
    return {
        "source": str(vit_weights),
        "loaded": report.loaded,
        "not_loaded": report.not_loaded,
        "ignored": report.ignored,
    }


def accumulation_steps(
    effective_batch_size: int, batch_size: int, num_train_sets: int, world_size: int
) -> tuple[int, int]:
    """(micro-batches to accumulate, samples per optimiser step) for ``effective_batch_size``
    samples per optimiser step, when every micro-step takes ``batch_size`` samples from each of
    ``num_train_sets`` training sets on each of ``world_size`` ranks. Rounded up, so a step
    never has fewer samples than asked."""
    per_micro_step = batch_size * num_train_sets * world_size
    accumulate = max(1, math.ceil(effective_batch_size / per_micro_step))
    return accumulate, accumulate * per_micro_step


def lr_lambda(warmup: int, total: int, schedule: str, end_ratio: float) -> _LRLambda:
    """The learning-rate multiplier of optimiser step ``step`` (see :class:`_LRLambda`)."""
    return _LRLambda(warmup, total, schedule, end_ratio)


def _bs(batch: dict[str, Any]) -> int:
    ids = batch.get("text_ids")
    return int(ids.shape[0]) if isinstance(ids, Tensor) else 1


__all__ = [
    "OBJECTIVES",
    "PerceiverVLModule",
    "accumulation_steps",
    "lr_lambda",
    "visual_inputs",
]
