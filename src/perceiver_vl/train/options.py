"""Typed training options: what trains, how it is optimised, what is frozen when, what is
evaluated. Lightning-free.

The public surface stays the flat keyword arguments of
:class:`~perceiver_vl.train.module.PerceiverVLModule` (``model.lr``, ``model.objectives`` ... in
a YAML config); :meth:`TrainingOptions.from_flat` sorts them into the dataclasses below, and each
dataclass validates itself in ``__post_init__``. Error messages name the option as a config
spells it (``model.<name>``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from perceiver_vl.model.streams import StreamMode

from .locked_text import KINDS as LOCKED_TEXT_KINDS

OBJECTIVES = ("matching", "mlm", "contrastive", "retrieval", "qa", "multiple_choice")
TRAINABLE = ("all", "cross_attention", "cross_attention_and_heads", "decoder_and_heads", "heads")
Trainable = Literal[
    "all", "cross_attention", "cross_attention_and_heads", "decoder_and_heads", "heads"
]
#: Loss names a ``loss_weights`` entry may address: the objectives and the locked-text anchor.
LOSS_NAMES = (*OBJECTIVES, "locked_text")


def _one_of(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name}={value!r} must be one of {list(allowed)}")


def _is_count(value: Any) -> bool:
    """A positive int (bools are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class ObjectiveOptions:
    """The objectives of a training step and how each samples its pairs.

    Attributes:
        objectives: any of ``matching`` (vision-text matching, BCE, a share of the pairs get
            another sample's visual input), ``mlm`` (masked LM through decoder queries),
            ``contrastive`` (multi-stream symmetric InfoNCE, features gathered across ranks),
            ``retrieval`` (cross-entropy over 1 positive + k negatives), ``qa`` (VQA soft-score
            BCE or MSRVTT-QA cross-entropy, by the model's ``qa_loss``), ``multiple_choice``
            (each candidate text encoded jointly with the video and scored by the matching head;
            cross-entropy over the candidates).
        loss_weights: per-loss multiplier (objectives and ``locked_text``; default 1).
        matching_negative_fraction: share of matching pairs with another sample's visual input.
        matching_negatives: how that other sample is drawn: ``random`` (uniformly, the paper),
            ``hard`` (probability softmax of the multi-stream similarity; needs the contrastive
            embeddings to be trained) or ``caption`` (probability softmax of the captions' word
            overlap / 0.1; needs no trained embedding).
        matching_text: ``clean`` (the released code): matching is scored on the uncorrupted
            text and masked LM on the corrupted copy with each sample's own visual input (one
            paired forward over 2B pairs, equal to the released code's two passes, each video
            embedded once); ``corrupted``: one pass over B pairs for both (half the latent
            work), matching on the MLM-corrupted text and masked LM on the matched pairs.
        mlm_on_negatives: with ``matching_text: corrupted``, masked LM also on mismatched pairs.
        retrieval_stream: ``mixed``, ``single`` or a list of both (the cross-entropies are
            averaged, weighted by ``retrieval_stream_weights``).
        retrieval_stream_weights: with both streams, each stream's weight in the retrieval
            loss, e.g. ``{single: 2}``: the loss is ``sum(w_s * loss_s) / sum(w_s)``, so its
            scale against the other objectives stays; a stream not named weighs 1 (default:
            equal weights, the plain average).
        retrieval_negatives: k negatives per query, or ``"all"``: every other item of the batch
            (mixed stream only, scored by the factorised mixed-stream scorer).
        single_stream_negatives: the single stream's k when both streams train (default:
            ``retrieval_negatives``; required when that is ``all``).
        single_stream_queries: how many of the batch's queries the single stream scores each
            step (drawn at random; ``None``: all). Each single-stream pair is a joint encoding,
            so fewer queries with more negatives (``single_stream_negatives``) keeps a step's
            cost while each query ranks more candidates.
        hard_negatives: the k negatives are the hardest under the multi-stream similarity.
        hard_negative_fraction: with ``hard_negatives``, the share of the k negatives that are
            the hardest; the rest are random in-batch items.
        retrieval_directions: ``t2v``, ``v2t`` or both (queries are texts / visual items).
    """

    objectives: Sequence[str] = ("matching", "mlm")
    loss_weights: Mapping[str, float] | None = None
    matching_negative_fraction: float = 0.5
    matching_negatives: Literal["random", "hard", "caption"] = "random"
    matching_text: Literal["clean", "corrupted"] = "clean"
    mlm_on_negatives: bool = False
    retrieval_stream: str | Sequence[str] = StreamMode.MIXED
    retrieval_stream_weights: Mapping[str, float] | None = None
    retrieval_negatives: int | Literal["all"] = 7
    single_stream_negatives: int | None = None
    single_stream_queries: int | None = None
    hard_negatives: bool = False
    hard_negative_fraction: float = 1.0
    retrieval_directions: Sequence[str] = ("t2v", "v2t")

    def __post_init__(self) -> None:
        self.objectives = tuple(str(o) for o in self.objectives)
        bad = sorted(set(self.objectives) - set(OBJECTIVES))
        if bad or not self.objectives:
            raise ValueError(
                f"model.objectives={list(self.objectives)} has unknown entries {bad}; choose "
                f"from {list(OBJECTIVES)}"
            )
        _one_of("matching_text", self.matching_text, ("clean", "corrupted"))
        _one_of("matching_negatives", self.matching_negatives, ("random", "hard", "caption"))
        weights = dict(self.loss_weights or {})
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(
                f"model.loss_weights has unknown losses {unknown}; choose from {list(LOSS_NAMES)}"
            )
        self.loss_weights = weights
        if not 0.0 <= self.matching_negative_fraction <= 1.0:
            raise ValueError(
                f"model.matching_negative_fraction={self.matching_negative_fraction!r} must be "
                "in [0, 1] (the share of matching pairs given another sample's visual input)"
            )
        stream = self.retrieval_stream
        streams = [stream] if isinstance(stream, str) else list(stream)
        if (
            not streams
            or set(streams) - {StreamMode.MIXED, StreamMode.SINGLE}
            or len(set(streams)) != len(streams)
        ):
            raise ValueError(
                f"model.retrieval_stream={stream!r} must be 'mixed', 'single' or a list of both"
            )
        stream_weights = dict(self.retrieval_stream_weights or {})
        extra = sorted(set(stream_weights) - set(streams))
        if extra:
            raise ValueError(
                f"model.retrieval_stream_weights names {extra}, which model.retrieval_stream="
                f"{streams} does not train; weigh only {streams}"
            )
        for name, weight in stream_weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not (math.isfinite(weight) and weight > 0)
            ):
                raise ValueError(
                    f"model.retrieval_stream_weights[{name!r}]={weight!r} must be a finite "
                    "number > 0 (leave a stream out of retrieval_stream to drop it)"
                )
        self.retrieval_stream_weights = {s: float(stream_weights.get(s, 1.0)) for s in streams}
        self.retrieval_directions = tuple(self.retrieval_directions)
        if set(self.retrieval_directions) - {"t2v", "v2t"} or not self.retrieval_directions:
            raise ValueError(
                f"model.retrieval_directions={list(self.retrieval_directions)} must be a "
                "non-empty subset of ['t2v', 'v2t']"
            )
        single = self.single_stream_negatives
        if single is not None and not _is_count(single):
            raise ValueError(
                f"model.single_stream_negatives={single!r} must be a number of negatives per "
                "query (>= 1)"
            )
        queries = self.single_stream_queries
        if queries is not None and not _is_count(queries):
            raise ValueError(
                f"model.single_stream_queries={queries!r} must be a number of queries per batch "
                "(>= 1) or null (every query)"
            )
        if self.retrieval_negatives == "all":
            # only the mixed stream can score every pair; a single stream needs its own k
            if StreamMode.SINGLE in streams and single is None:
                raise ValueError(
                    "model.retrieval_negatives='all' scores every pair of the batch with the "
                    "factorised mixed-stream scorer; set model.retrieval_stream: mixed, or give "
                    "the single stream its own number (model.single_stream_negatives)"
                )
            if self.hard_negatives and StreamMode.SINGLE not in streams:
                raise ValueError(
                    "model.retrieval_negatives='all' already uses every item of the batch as a "
                    "negative; set model.hard_negatives: false"
                )
        elif not _is_count(self.retrieval_negatives):
            raise ValueError(
                f"model.retrieval_negatives={self.retrieval_negatives!r} must be a number of "
                "negatives per query (>= 1) or 'all' (every other item of the batch, mixed "
                "stream)"
            )
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(
                f"model.hard_negative_fraction={self.hard_negative_fraction!r} must be in [0, 1] "
                "(the share of the k negatives that are the hardest; the rest are random)"
            )

    @property
    def retrieval_streams(self) -> tuple[str, ...]:
        """``retrieval_stream`` as a tuple of stream names."""
        stream = self.retrieval_stream
        return (stream,) if isinstance(stream, str) else tuple(stream)


@dataclass
class OptimizationOptions:
    """Optimiser, learning-rate schedule and batch accumulation.

    Attributes:
        optimizer: ``adamw`` (decoupled weight decay) or ``adam`` (weight decay as an L2 term,
            as in the paper's released code).
        lr, weight_decay, betas, eps: the optimiser's settings.
        weight_decay_exempt: True: biases, norms, embeddings and the parameters a module
            declares exempt get no weight decay (:func:`~perceiver_vl.train.optim.decays`);
            False: every parameter decays (the released code).
        head_lr_multiplier: learning-rate multiplier of the QA head.
        warmup: linear warm-up, a fraction of the schedule (< 1) or a step count (>= 1).
        schedule: after warm-up, ``linear`` decay to ``end_lr_ratio * lr``, ``cosine`` (to the
            same end) or ``constant``.
        end_lr_ratio: the learning rate at the end of a decaying schedule, as a share of ``lr``.
        max_schedule_steps: schedule length (None: the trainer's estimated optimiser steps).
        effective_batch_size: samples per optimiser step, counted over every training set and
            rank; gradients are accumulated (rounded up) to reach it.
    """

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay_exempt: bool = True
    head_lr_multiplier: float = 1.0
    warmup: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    end_lr_ratio: float = 0.0
    max_schedule_steps: int | None = None
    effective_batch_size: int | None = None

    def __post_init__(self) -> None:
        _one_of("optimizer", self.optimizer, ("adamw", "adam"))
        _one_of("schedule", self.schedule, ("linear", "cosine", "constant"))
        if not self.lr > 0:
            raise ValueError(f"model.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"model.weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(
                f"model.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.98]"
            )
        if not self.eps > 0:
            raise ValueError(f"model.eps must be > 0, got {self.eps}")
        if not self.head_lr_multiplier > 0:
            raise ValueError(f"model.head_lr_multiplier must be > 0, got {self.head_lr_multiplier}")
        if self.warmup < 0:
            raise ValueError(f"model.warmup must be >= 0 (fraction or steps), got {self.warmup}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"model.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if self.max_schedule_steps is not None and self.max_schedule_steps < 1:
            raise ValueError(
                f"model.max_schedule_steps must be >= 1 (or null: the trainer's estimate), got "
                f"{self.max_schedule_steps}"
            )
        if self.effective_batch_size is not None and self.effective_batch_size < 1:
            raise ValueError(
                f"model.effective_batch_size must be >= 1, got {self.effective_batch_size}"
            )


@dataclass
class FreezingOptions:
    """What trains when, and the locked-text phase of the contrastive objective.

    Attributes:
        trainable: what trains at first: ``all``, ``cross_attention`` (the cross-attention
            blocks alone, the paper's first stage), ``cross_attention_and_heads``,
            ``decoder_and_heads`` (the query decoder and the heads on fixed latents) or ``heads``.
        unfreeze_at_step: optimiser step from which everything trains (None = never).
        two_stage: the paper's two-stage transfer as one switch: the cross-attention blocks
            alone train for this many optimiser steps (>= 1) or this fraction of the schedule
            (< 1), then everything trains. Excludes ``trainable`` and ``unfreeze_at_step``.
        locked_text_steps: for this many optimiser steps the contrastive loss compares the
            visual embeddings with fixed text features instead of the live text side (0 = off).
        locked_text_features: those fixed features (:mod:`perceiver_vl.train.locked_text`):
            ``ngram`` or ``model``.
        locked_text_anchor: weight of an extra ``locked_text`` loss that keeps comparing the
            visual embeddings with the fixed text features after the locked phase (0 = off).
    """

    trainable: Trainable = "all"
    unfreeze_at_step: int | None = None
    two_stage: float | None = None
    locked_text_steps: int = 0
    locked_text_features: Literal["ngram", "model"] = "ngram"
    locked_text_anchor: float = 0.0

    def __post_init__(self) -> None:
        _one_of("trainable", self.trainable, TRAINABLE)
        _one_of("locked_text_features", self.locked_text_features, LOCKED_TEXT_KINDS)
        if self.unfreeze_at_step is not None and self.unfreeze_at_step < 0:
            raise ValueError(f"model.unfreeze_at_step must be >= 0, got {self.unfreeze_at_step}")
        if self.two_stage is not None:
            if not self.two_stage > 0:
                raise ValueError(
                    f"model.two_stage={self.two_stage!r} must be a step count (>= 1) or a "
                    "fraction of the schedule (0 < x < 1), e.g. 0.1"
                )
            if self.trainable != "all" or self.unfreeze_at_step is not None:
                raise ValueError(
                    "model.two_stage already sets the freezing schedule; leave model.trainable "
                    f"('{self.trainable}') at 'all' and model.unfreeze_at_step "
                    f"({self.unfreeze_at_step}) unset, or drop two_stage"
                )
        for name in ("locked_text_steps", "locked_text_anchor"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")

    @property
    def first_mode(self) -> str:
        """What trains before ``unfreeze_step``."""
        return "cross_attention" if self.two_stage is not None else self.trainable

    @property
    def unfreeze_step(self) -> int | None:
        """The optimiser step everything trains from, when known before the schedule is (a
        fractional ``two_stage`` is resolved by :func:`~perceiver_vl.train.optim.
        resolve_unfreeze_step` once the schedule length is)."""
        if self.two_stage is not None:
            return int(self.two_stage) if self.two_stage >= 1 else None
        return self.unfreeze_at_step


@dataclass
class EvaluationOptions:
    """What validation computes besides the losses.

    Attributes:
        eval_modes: retrieval modes scored over the whole validation set (``multi``,
            ``mixed``); single stream and re-ranking run in ``perceiver-vl evaluate``.
    """

    eval_modes: Sequence[str] = (StreamMode.MULTI, StreamMode.MIXED)

    def __post_init__(self) -> None:
        self.eval_modes = tuple(self.eval_modes)
        if set(self.eval_modes) - {StreamMode.MULTI, StreamMode.MIXED}:
            raise ValueError(
                f"model.eval_modes={list(self.eval_modes)} must be a subset of ['multi', "
                "'mixed'] (single and rerank run in `perceiver-vl evaluate`)"
            )


@dataclass
class TrainingOptions:
    """Every training option of :class:`~perceiver_vl.train.module.PerceiverVLModule` except the
    model's own (``model``, ``pretrained``, ``vit_weights``).

    Attributes:
        objective, optimization, freezing, evaluation: the groups above.
        training_attention: the attention kernel of training steps: ``explicit`` (plain
            ``softmax(q k^T / sqrt(d)) v``, :func:`~perceiver_vl.model.attention.explicit_attention`),
            ``math`` (PyTorch's composite scaled-dot-product attention), ``default`` (PyTorch's
            choice) or ``auto`` (``explicit`` on the CPU, ``default`` elsewhere).
        seed: seeds the objectives' sampling (negatives) and the locked-text features.
    """

    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)
    optimization: OptimizationOptions = field(default_factory=OptimizationOptions)
    freezing: FreezingOptions = field(default_factory=FreezingOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    training_attention: Literal["auto", "explicit", "math", "default"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of(
            "training_attention", self.training_attention, ("auto", "explicit", "math", "default")
        )
        for name in ("locked_text_steps", "locked_text_anchor"):
            if getattr(self.freezing, name) and "contrastive" not in self.objective.objectives:
                raise ValueError(
                    f"model.{name} only acts on the 'contrastive' objective; add it to "
                    f"model.objectives or set {name}: 0"
                )

    @property
    def loss_weights(self) -> dict[str, float]:
        """The multiplier of every loss: 1 for the objectives, ``locked_text_anchor`` for the
        locked-text anchor, then ``loss_weights``' entries."""
        weights = {o: 1.0 for o in OBJECTIVES} | {"locked_text": self.freezing.locked_text_anchor}
        return weights | dict(self.objective.loss_weights or {})

    @classmethod
    def flat_names(cls) -> frozenset[str]:
        """The flat option names :meth:`from_flat` accepts."""
        names = {"training_attention", "seed"}
        for group in _GROUPS.values():
            names |= {f.name for f in dataclasses.fields(group)}
        return frozenset(names)

    @classmethod
    def from_flat(cls, **options: Any) -> TrainingOptions:
        """Sort flat keyword options (the module's arguments) into the groups; an unknown name
        is an error."""
        unknown = sorted(set(options) - cls.flat_names())
        if unknown:
            raise TypeError(
                f"unknown training options {unknown}; known: {sorted(cls.flat_names())}"
            )
        built = {
            name: group(
                **{f.name: options[f.name] for f in dataclasses.fields(group) if f.name in options}
            )
            for name, group in _GROUPS.items()
        }
        top = {k: options[k] for k in ("training_attention", "seed") if k in options}
        return cls(**built, **top)


_GROUPS: dict[str, type] = {
    "objective": ObjectiveOptions,
    "optimization": OptimizationOptions,
    "freezing": FreezingOptions,
    "evaluation": EvaluationOptions,
}

__all__ = [
    "LOSS_NAMES",
    "OBJECTIVES",
    "TRAINABLE",
    "EvaluationOptions",
    "FreezingOptions",
    "ObjectiveOptions",
    "OptimizationOptions",
    "Trainable",
    "TrainingOptions",
]
