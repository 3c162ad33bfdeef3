"""LightningModule around :class:`~perceiver_vl.PerceiverVL`: a thin composition of the typed
options (:mod:`~perceiver_vl.train.options`), the model builder (:mod:`~perceiver_vl.train.build`),
the per-objective losses (:mod:`~perceiver_vl.train.losses`), the optimiser, schedule and
freezing rules (:mod:`~perceiver_vl.train.optim`) and the validation store
(:mod:`~perceiver_vl.train.validation`). What stays here is what needs the trainer: LayerDrop
steps and negative sampling seeded identically on every rank, logging, and the hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from perceiver_vl.data.collate import visual_inputs
from perceiver_vl.fileio import atomic_write_json
from perceiver_vl.model.attention import explicit_attention

from .build import build_model, check_data_fits
from .losses import ObjectiveLosses
from .optim import (
    accumulation_steps,
    build_optimizer,
    lr_lambda,
    resolve_unfreeze_step,
    schedule_length,
    trainable_now,
)
from .options import OBJECTIVES, Trainable, TrainingOptions
from .validation import ValidationStore


class PerceiverVLModule(pl.LightningModule):
    """Trains and validates a Perceiver-VL model.

    The arguments are flat so that a YAML config (``model:`` section) and LightningCLI spell
    them directly; they are sorted into :class:`~perceiver_vl.train.options.TrainingOptions`,
    whose groups document and validate each of them in full.

    Args:
        model: :class:`~perceiver_vl.PerceiverVLConfig` fields (ignored when ``pretrained``).
        pretrained: a ``save_pretrained`` / ``perceiver-vl export`` folder to start from;
            ``model`` entries still override ``dropout``, ``attention_dropout``, ``layerdrop``,
            ``layerdrop_seed``, ``qa_loss``, ``num_answers`` (a new QA head) and ``max_frames``
            (the temporal embedding resampled linearly).
        vit_weights: a ViT checkpoint to initialise from (missing file or empty load: error;
            the load report goes to ``<default_root_dir>/checkpoints/vit_init_report.json``).
        objectives: ``matching``, ``mlm``, ``contrastive``, ``retrieval``, ``qa``,
            ``multiple_choice`` (:class:`~perceiver_vl.train.options.ObjectiveOptions`).
        loss_weights: per-loss multiplier (default 1).
        matching_negative_fraction: share of matching pairs with another sample's visual input.
        matching_negatives: ``random``, ``hard`` or ``caption``.
        matching_text: ``clean`` (matching and MLM in separate passes) or ``corrupted`` (one).
        mlm_on_negatives: with ``matching_text: corrupted``, MLM also on mismatched pairs.
        retrieval_stream: ``mixed``, ``single`` or a list of both.
        retrieval_stream_weights: each stream's weight in the retrieval loss (a weighted mean;
            default equal).
        retrieval_negatives: k negatives per query, or ``all`` (mixed stream).
        single_stream_negatives: the single stream's k when both streams train.
        single_stream_queries: queries per batch the single stream scores (None: all).
        hard_negatives: negatives are the hardest under the multi-stream similarity.
        hard_negative_fraction: share of the k negatives that are the hardest.
        retrieval_directions: ``t2v``, ``v2t`` or both.
        optimizer: ``adamw`` or ``adam``
            (:class:`~perceiver_vl.train.options.OptimizationOptions`).
        lr: learning rate.
        weight_decay: weight decay of the decayed parameters.
        betas: the optimiser's betas.
        eps: the optimiser's epsilon.
        weight_decay_exempt: True: no decay on biases, norms, embeddings and declared
            exemptions (:func:`~perceiver_vl.train.optim.decays`); False: every parameter decays.
        head_lr_multiplier: learning-rate multiplier of the QA head.
        warmup: linear warm-up, a fraction of the schedule (< 1) or a step count (>= 1).
        schedule: ``linear``, ``cosine`` or ``constant`` after warm-up.
        end_lr_ratio: final learning rate of a decaying schedule, as a share of ``lr``.
        max_schedule_steps: schedule length (default: the trainer's estimated optimiser steps).
        effective_batch_size: samples per optimiser step over every training set and rank
            (gradients accumulated; overrides ``trainer.accumulate_grad_batches``).
        trainable: what trains at first
            (:class:`~perceiver_vl.train.options.FreezingOptions`).
        unfreeze_at_step: optimiser step from which everything trains (None = never).
        two_stage: cross-attention blocks alone for this many steps (>= 1) or this fraction
            of the schedule (< 1), then everything.
        locked_text_steps: steps during which the contrastive loss uses fixed text features.
        locked_text_features: those features: ``ngram`` or ``model``.
        locked_text_anchor: weight of the ``locked_text`` loss after the locked phase.
        eval_modes: retrieval modes computed at validation (``multi``, ``mixed``).
        training_attention: attention kernel of training steps: ``auto``, ``explicit``, ``math``,
            ``default``.
        seed: seeds the objectives' sampling (negatives) and the locked-text features.
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
        retrieval_stream_weights: dict[str, float] | None = None,
        retrieval_negatives: int | Literal["all"] = 7,
        single_stream_negatives: int | None = None,
        single_stream_queries: int | None = None,
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
        training_attention: Literal["auto", "explicit", "math", "default"] = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.options = TrainingOptions.from_flat(
            **{k: v for k, v in self.hparams.items() if k in TrainingOptions.flat_names()}
        )
        self.objectives = list(self.options.objective.objectives)
        self.retrieval_streams = self.options.objective.retrieval_streams
        # The freezing schedule in force: (what trains first, the step everything trains from).
        self.freeze_mode: str = self.options.freezing.first_mode
        self.unfreeze_step: int | None = self.options.freezing.unfreeze_step
        self.model, self.vit_report = build_model(model, pretrained, vit_weights, rank_zero_info)
        if "qa" in self.objectives and self.model.qa_head is None:
            raise ValueError(
                "the 'qa' objective needs a QA head: set model.model.num_answers to the answer "
                "vocabulary size (e.g. 3129 for VQAv2, 1500 for MSRVTT-QA)"
            )
        self.loss_weights = self.options.loss_weights
        self.losses = ObjectiveLosses(self.model, self.options)
        self.layerdrop_log: list[tuple[int, tuple[int, ...]]] = []
        self._val_store = ValidationStore(
            qa="qa" in self.objectives, eval_modes=self.options.evaluation.eval_modes
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "tokenizer"):
            check_data_fits(self.model.config, dm)
        if stage == "fit" and self.vit_report is not None and self.trainer.is_global_zero:
            folder = Path(self.trainer.default_root_dir) / "checkpoints"
            atomic_write_json(folder / "vit_init_report.json", self.vit_report, indent=1)
        requested = self.options.optimization.effective_batch_size
        if stage == "fit" and requested and dm is not None:
            num_sets = max(1, len(getattr(dm, "specs", {}).get("train") or [None]))
            world = max(1, self.trainer.world_size)
            accumulate, samples = accumulation_steps(requested, dm.batch_size, num_sets, world)
            self.trainer.accumulate_grad_batches = accumulate
            rank_zero_info(
                f"effective batch: {samples} samples per optimiser step = {dm.batch_size} per "
                f"device x {num_sets} training set(s) x {world} rank(s) x {accumulate} "
                f"accumulated (requested {requested})"
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
            (self.options.seed * 1_000_003 + step * 7919 + rank * 104_729 + salt) % (2**63)
        )

    @staticmethod
    def _subbatches(batch: Any) -> list[tuple[str, dict[str, Any]]]:
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
        """The objectives of one collated batch -> (losses, logged statistics)
        (:meth:`~perceiver_vl.train.losses.ObjectiveLosses.compute_losses` at this step)."""
        # a strategy may wrap the model in place (FSDP): the losses use it as it is now
        self.losses.model = self.model
        return self.losses.compute_losses(batch, layerdrop_step, generator, self.global_step)

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
        batch_size = max(1, sum(_bs(b) for _, b in parts))
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        return total

    def _training_attention(self) -> contextlib.AbstractContextManager:
        """The attention kernel of a training step (``training_attention``). The choice is made
        in the forward; the backward follows the graph the forward built."""
        choice = self.options.training_attention
        if choice == "explicit" or (choice == "auto" and self.device.type == "cpu"):
            return explicit_attention()
        if choice == "math":
            return sdpa_kernel([SDPBackend.MATH])
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        if batch is None:
            return
        generator = self._generator(batch_idx, salt=1000 + dataloader_idx)
        losses, stats = self.compute_losses(batch, None, generator)
        stats.pop("_blocks", None)
        suffix = "" if dataloader_idx == 0 else f"_{dataloader_idx}"
        log = {"batch_size": _bs(batch), "add_dataloader_idx": False}
        if losses:
            total = sum(self.loss_weights.get(k, 1.0) * v for k, v in losses.items())
            self.log(f"{stage}/loss{suffix}", total, **log)
        for name, loss in losses.items():
            self.log(f"{stage}/{name}_loss{suffix}", loss, **log)
        for name, value in stats.items():  # matching_acc, mlm_acc, ...: what trains
            if name not in ("qa_acc", "vqa_score"):  # those are logged over the whole epoch
                self.log(f"{stage}/{name}{suffix}", value.float(), **log)
        self._val_store.add(self.model, batch, batch_idx, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        for name, value in self._val_store.metrics(self.model, world, rank).items():
            self.log(f"{stage}/{name}", value, sync_dist=False)
        self._val_store.clear()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def on_validation_epoch_start(self) -> None:
        self._val_store.clear()

    def on_test_epoch_start(self) -> None:
        self._val_store.clear()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimisation
    def _trainable_now(self, name: str) -> bool:
        model_name = name.removeprefix("model.")
        return trainable_now(model_name, self.freeze_mode, self.unfreeze_step, self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Freezing: drop the gradients of parameters outside the trainable set (the optimiser
        then skips them; ``requires_grad`` stays on so DDP's reducer is unchanged on unfreeze)."""
        if self.freeze_mode == "all":
            return
        for name, param in self.named_parameters():
            if param.grad is not None and not self._trainable_now(name):
                param.grad = None

    def configure_optimizers(self) -> Any:
        options = self.options.optimization
        total = schedule_length(
            options.max_schedule_steps, lambda: self.trainer.estimated_stepping_batches
        )
        if self.options.freezing.two_stage is not None:
            self.unfreeze_step = resolve_unfreeze_step(self.options.freezing, total)
        optimizer, scheduler = build_optimizer(self, options, total, fused=self._fused_optimizer())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _fused_optimizer(self) -> bool:
        """Whether the trainer takes a fused optimiser: Lightning refuses gradient clipping with
        one under its mixed-precision plugin (it cannot tell that bf16 has no loss scaling), so
        there the multi-tensor (``foreach``) implementation runs instead."""
        from lightning.pytorch.plugins.precision import MixedPrecision

        trainer = self._trainer
        if trainer is None:
            return True
        return not (
            trainer.gradient_clip_val and isinstance(trainer.precision_plugin, MixedPrecision)
        )


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
