"""The demo's recipe: its settings (data sizes, the model preset, the training stages' choices)
and the training stages themselves, shared by ``perceiver-vl demo`` and ``perceiver-vl analyze``.

``full`` is the README's main job (its time on 2-core CPUs is in the README's "Current
state"); ``quick`` is the smoke version the test suite runs (about two minutes or less). Both train on the CPU, in bf16
autocast where the CPU has bf16 units and in fp32 elsewhere (``DemoSettings.precision``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.data import CachedClips, CaptionDataset, Tokenizer
from perceiver_vl.data.synthetic import generate_benchmark
from perceiver_vl.model import PerceiverVL
from perceiver_vl.model.presets import preset_fields


@dataclass
class DemoSettings:
    """Everything the demo varies between its full and quick forms.

    The training stages are the paper's: pretraining with vision-text matching (on the clean
    caption) + masked LM (on a corrupted copy) with LayerDrop, then retrieval fine-tuning with
    the matching head (cross-entropy of each caption over its video and negative videos, in
    single and mixed stream) with LayerDrop. What is ours is named in the report: the
    pretraining's masking rate and matching weight, the multi-stream contrastive loss trained
    alongside the fine-tuning (so the multi-stream mode has an embedding to score with; the
    paper fine-tunes each architecture on its own), hard single-stream negatives, and the two
    input options of ``model``. Every choice was made on the validation split
    (docs/analyses.md, "The paper's method on the demo benchmark").

    Attributes:
        num_train / num_val / num_test: synthetic clips per split (val and test captions are
            unique within their split). The validation split is what recipe choices are made
            on (``eval_split: val``); the test split is read once, by the finished recipe.
        eval_split: the split the demo evaluates: ``test`` (the default: the finished recipe)
            or ``val`` (for choosing a recipe without reading the test split).
        frames: (min, max) frames of a generated clip; clip_frames: T sampled per clip.
        size: frame side in pixels.
        model: :class:`~perceiver_vl.PerceiverVLConfig` fields: the ``demo`` model preset
            (``demo-quick`` for ``quick``; :mod:`perceiver_vl.model.presets`). Two input
            options are ours, not the paper's (both off in the library's defaults):
            ``frame_difference`` (each patch's change from the previous frame is added to its
            token) and ``visual_position_init_std`` 0.2 (so "where" and "when" are visible to a
            model trained from scratch); without them the demo's model learns almost no
            motion (docs/analyses.md, "The two input options against the paper's input").
        batch_size: training batch size (both stages).
        pretrain_steps / pretrain_lr: stage 1, matching + masked LM with ``model["layerdrop"]``.
            Masked LM is what teaches the encoder to read motion, and it needs the steps:
            a run stopped early reads some motion directions and not others, and the
            retrieval model fine-tuned from it inherits the gap (docs/analyses.md,
            "Pretraining longer, fine-tuning shorter").
        mlm_probability: share of caption tokens masked for masked LM (the paper: 0.15). The
            demo's captions are short (about ten tokens); at 0.65 their motion words are
            masked-LM targets often enough for the encoder to learn to read motion within a
            few hundred steps (at 0.15 they rarely are).
        pretrain_matching_weight: weight of the matching loss against masked LM (the paper:
            1). With random negatives, matching is solved early by colour and size, and its
            gradients then hold the encoder there; masked LM is what asks for the motion and
            shape words. Weighted 0.03, matching stays the smaller signal through pretraining,
            masked LM teaches the encoder motion, and the fine-tuning's matching and retrieval
            losses build on it.
        finetune_steps / finetune_lr: stage 2, retrieval fine-tuning.
        finetune_objectives: stage 2's objectives: ``retrieval`` (the paper's: cross-entropy of
            the matching logits over one positive and negatives, ``retrieval_streams``) and
            ``contrastive`` (multi stream, ours).
        retrieval_streams: the streams the retrieval loss trains (their losses are averaged):
            the mixed stream with every other video of the batch as a negative (the factorised
            scorer makes 63 cost little more than 7), the single stream with
            ``single_stream_negatives`` (each costs a joint encoding).
        retrieval_stream_weights: the streams' weights in the retrieval loss (a weighted
            mean; ``None``: equal).
        mixed_stream_negatives: the mixed stream's negatives per caption: ``"all"`` (every
            other video of the batch) or k.
        single_stream_negatives / hard_negative_fraction: k negatives per caption of the single
            stream (and of the mixed stream when it takes k), of which this share are the
            hardest under the multi-stream similarity and the rest random (ours; the paper does
            not say how it picks them).
        single_stream_queries: captions per batch the single stream scores (drawn each step;
            ``None``: all 64); see :class:`~perceiver_vl.train.options.ObjectiveOptions`.
        retrieval_directions: ``t2v`` (captions are the queries; one direction halves the
            single stream's cost) and/or ``v2t``.
        finetune_layerdrop: LayerDrop in fine-tuning (the paper uses it in both stages; it is
            what lets inference run the first cross-attention block alone).
        rerank_k: shortlist length of the multi-stream shortlist + mixed re-rank.
        curve_sizes: gallery sizes n (n texts x n videos) timed for the retrieval-time plot.
        efficiency_frames: frame counts of the efficiency comparison.
        efficiency_image_size: frame side of the efficiency comparison (the paper: 384).
        latency_repeats: timed repeats per latency figure.
        precision: the arithmetic of training, evaluation and the latency figures: ``bf16``
            (bf16 autocast), ``fp32``, or ``auto`` (the default): bf16 where this CPU
            multiplies bf16 faster than fp32 (AVX-512 BF16 or AMX units), fp32 elsewhere
            (on an AVX2-only CPU bf16 is emulated and runs several times slower than fp32).
    """

    num_train: int = 3000
    num_val: int = 500
    num_test: int = 500
    eval_split: str = "test"
    frames: tuple[int, int] = (8, 16)
    clip_frames: int = 8
    size: int = 64
    model: dict[str, Any] = field(default_factory=lambda: preset_fields("demo"))
    batch_size: int = 64
    pretrain_steps: int = 700
    pretrain_lr: float = 1e-3
    mlm_probability: float = 0.65
    pretrain_matching_weight: float = 0.03
    finetune_steps: int = 350
    finetune_lr: float = 1e-3
    finetune_objectives: tuple[str, ...] = ("retrieval", "contrastive")
    retrieval_streams: tuple[str, ...] = ("single", "mixed")
    retrieval_stream_weights: dict[str, float] | None = None
    mixed_stream_negatives: int | str = "all"
    single_stream_negatives: int = 3
    single_stream_queries: int | None = None
    hard_negative_fraction: float = 0.67
    retrieval_directions: tuple[str, ...] = ("t2v",)
    finetune_layerdrop: float = 0.5
    rerank_k: int = 16
    curve_sizes: tuple[int, ...] = (50, 100)
    efficiency_frames: tuple[int, ...] = (8, 16, 32)
    efficiency_image_size: int = 384
    latency_repeats: int = 3
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming a setting the demo cannot run with (also called by
        ``run_demo``, since fields may be changed after construction)."""
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"DemoSettings.eval_split={self.eval_split!r} must be 'test' or 'val'")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(
                f"DemoSettings.precision={self.precision!r} must be 'auto', 'bf16' or 'fp32'"
            )
        # the stages' training options, checked now rather than when each stage starts (a bad
        # fine-tuning option would otherwise surface after the whole pretraining)
        from perceiver_vl.train.options import TrainingOptions

        for stage, options in (
            ("pretraining", pretrain_options(self)),
            ("fine-tuning", finetune_options(self)),
        ):
            try:
                TrainingOptions.from_flat(**options)
            except (TypeError, ValueError) as err:
                raise ValueError(f"DemoSettings: the {stage} stage's options: {err}") from err

    def resolved_precision(self) -> str:
        """``precision``, with ``auto`` replaced by what this CPU runs fastest
        (:func:`perceiver_vl.bench.matmul.fastest_cpu_precision`: bf16 where the CPU has
        native bf16 units, fp32 where bf16 is emulated)."""
        if self.precision != "auto":
            return self.precision
        from perceiver_vl.bench.matmul import fastest_cpu_precision

        return fastest_cpu_precision()

    @classmethod
    def full(cls) -> DemoSettings:
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smoke run: a smaller benchmark and model, a few dozen steps."""
        settings = cls(
            num_train=320,
            num_val=16,
            num_test=64,
            batch_size=32,
            pretrain_steps=20,
            finetune_steps=30,
            curve_sizes=(16, 32),
            efficiency_frames=(8, 16, 32),
            efficiency_image_size=64,
            latency_repeats=2,
            rerank_k=8,
            model=preset_fields("demo-quick"),
        )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# The training stages (shared by the demo and the analyses)
# ----------------------------------------------------------------------------------------------
def cpu_trainer(out: Path, stage: str, steps: int, progress: bool, precision: str = "bf16"):
    """The stages' Lightning trainer: CPU, ``precision`` (``bf16``: bf16 autocast; ``fp32``),
    gradient clipping at 1.0, the CSV logger under ``out/logs/<stage>``, no checkpoints and no
    validation loop."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        precision={"bf16": "bf16-mixed", "fp32": "32-true"}[precision],
        gradient_clip_val=1.0,
        logger=CSVLogger(str(out / "logs"), name=stage, version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10,
        default_root_dir=str(out),
    )


def pretrain_options(settings: DemoSettings) -> dict[str, Any]:
    """Stage 1's training-module options (besides the model and the seed)."""
    return dict(
        objectives=["matching", "mlm"],
        loss_weights={"matching": settings.pretrain_matching_weight},
        lr=settings.pretrain_lr,
        warmup=0.1,
    )


def finetune_options(settings: DemoSettings) -> dict[str, Any]:
    """Stage 2's training-module options (besides the model and the seed)."""
    return dict(
        objectives=list(settings.finetune_objectives),
        retrieval_stream=list(settings.retrieval_streams),
        retrieval_stream_weights=settings.retrieval_stream_weights,
        retrieval_negatives=settings.mixed_stream_negatives,
        single_stream_negatives=settings.single_stream_negatives,
        single_stream_queries=settings.single_stream_queries,
        hard_negatives=(
            "single" in settings.retrieval_streams or settings.mixed_stream_negatives != "all"
        ),
        hard_negative_fraction=settings.hard_negative_fraction,
        retrieval_directions=list(settings.retrieval_directions),
        lr=settings.finetune_lr,
        warmup=0.1,
    )


def train_stage(
    module: Any,
    datamodule: Any,
    out: Path,
    stage: str,
    steps: int,
    progress: bool,
    precision: str = "bf16",
) -> dict[str, float]:
    """Fit ``module`` for ``steps`` optimiser steps with :func:`cpu_trainer`; returns the
    trainer's final logged metrics, rounded to 4 decimals."""
    trainer = cpu_trainer(out, stage, steps, progress, precision)
    trainer.fit(module, datamodule=datamodule)
    metrics: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        try:
            metrics[key] = round(float(value), 4)
        except (TypeError, ValueError):
            continue
    return metrics


def _retrieval_inputs(test: CachedClips, tokenizer: Tokenizer):
    from perceiver_vl.evaluation import RetrievalInputs

    items = [test[i] for i in range(len(test))]
    video = torch.stack([it["video"] for it in items])
    video_mask = torch.stack([it["video_mask"] for it in items])
    ids, mask = tokenizer([it["text"] for it in items])
    return RetrievalInputs(
        ids, mask, torch.arange(len(items)), video=video, video_mask=video_mask
    ), [it["text"] for it in items]


def prepare_training_data(
    data_root: Path, settings: DemoSettings, *, seed: int, progress: bool, generate: bool = True
) -> Any:
    """Generate the benchmark (kept when already there; ``generate=False`` for a folder the user
    brings) and a data module whose training clips are decoded once into memory."""
    from perceiver_vl.train.datamodule import PerceiverVLDataModule

    if generate:
        generate_benchmark(
            data_root,
            num_train=settings.num_train,
            num_val=settings.num_val,
            num_test=settings.num_test,
            frames=settings.frames,
            size=settings.size,
            seed=seed,
            progress=progress,
        )
    datamodule = PerceiverVLDataModule(
        train={
            "kind": "captions",
            "annotations": str(data_root / "train.jsonl"),
            "media_root": str(data_root),
            "cache": True,
        },
        batch_size=settings.batch_size,
        num_workers=2,
        num_frames=settings.clip_frames,
        image_size=settings.size,
        max_text_length=settings.model["max_text_length"],
        mlm_probability=settings.mlm_probability,
        seed=seed,
        progress=progress,
    )
    datamodule.setup("fit")
    # Cached clips: a batch is made in about 13 ms in the training process, and on two cores a
    # loader worker only competes with the training threads (a pretraining step took 0.35-0.39 s
    # with one worker and 0.28-0.32 s with none; fine-tuning 0.57-0.63 against 0.51-0.57 s).
    datamodule.num_workers = 0
    return datamodule


def prepare_test_data(
    data_root: Path, settings: DemoSettings, *, progress: bool, split: str = "test"
):
    """A held-out split (``test`` or ``val``) decoded into :class:`RetrievalInputs` (one unique
    caption per video)."""
    tokenizer = Tokenizer.default(max_length=settings.model["max_text_length"])
    test_set = CaptionDataset(
        data_root / f"{split}.jsonl", data_root, num_frames=settings.clip_frames, size=settings.size
    )
    test = CachedClips(test_set, num_workers=2, progress=progress, description=f"decoding {split}")
    return _retrieval_inputs(test, tokenizer)


def pretrain_model(
    datamodule: Any,
    settings: DemoSettings,
    out: Path,
    *,
    seed: int,
    progress: bool,
    model_overrides: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Stage 1: vision-text matching on the clean caption + masked LM on a corrupted copy (the
    released code's two passes, run as one paired forward), with the config's LayerDrop."""
    from perceiver_vl.train.module import PerceiverVLModule

    module = PerceiverVLModule(
        model={**settings.model, **(model_overrides or {})},
        seed=seed,
        **pretrain_options(settings),
    )
    metrics = train_stage(
        module,
        datamodule,
        out,
        "pretrain",
        settings.pretrain_steps,
        progress,
        settings.resolved_precision(),
    )
    return module, metrics


def finetune_model(
    pretrained_dir: Path | None,
    datamodule: Any,
    settings: DemoSettings,
    out: Path,
    *,
    seed: int,
    progress: bool,
    model_overrides: dict[str, Any] | None = None,
    stage: str = "finetune",
) -> tuple[PerceiverVL, dict[str, float]]:
    """Stage 2, retrieval fine-tuning: ``settings.finetune_objectives`` (the cross-entropy of
    the matching logits in ``settings.retrieval_streams``, optionally multi-stream contrastive)
    with ``settings.finetune_layerdrop``. Starts from ``pretrained_dir`` (or from scratch
    when None)."""
    from perceiver_vl.train.module import PerceiverVLModule

    overrides = {"layerdrop": settings.finetune_layerdrop, "dropout": settings.model["dropout"]}
    overrides.update(model_overrides or {})
    module = PerceiverVLModule(
        pretrained=None if pretrained_dir is None else str(pretrained_dir),
        model=overrides if pretrained_dir is not None else {**settings.model, **overrides},
        seed=seed,
        **finetune_options(settings),
    )
    metrics = train_stage(
        module,
        datamodule,
        out,
        stage,
        settings.finetune_steps,
        progress,
        settings.resolved_precision(),
    )
    return module.model.cpu().eval(), metrics
