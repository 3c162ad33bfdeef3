"""The demo's settings: data sizes, the small model, and the training stages.

``full`` is the README's main job (at most ten minutes on a 2-core CPU); ``quick`` is the smoke
version the test suite runs (about two minutes or less). Both train on the CPU with bf16
autocast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DemoSettings:
    """Everything the demo varies between its full and quick forms.

    Attributes:
        num_train / num_val / num_test: synthetic clips per split (test captions are unique).
        frames: (min, max) frames of a generated clip; clip_frames: T sampled per clip.
        size: frame side in pixels.
        model: :class:`~perceiver_vl.PerceiverVLConfig` fields of the small model.
        batch_size: training batch size (both stages).
        pretrain_steps / finetune_steps: optimiser steps of each stage. Pretraining is 60
            steps (from 120) to keep the run under ten minutes when the machine is slow: at 120
            the same seed-0 run took 537 s once and 579 s another time; 60 steps cost the mixed
            stream 0.6 points of R@1 (32.8 against 33.4) and multi-stream 4.2 (33.0 against 37.2).
        warmup_steps / warmup_lr: the visual warm-up between them: contrastive training of the
            visual side against fixed random unigram + ordered-bigram text features
            (``locked_text_steps``), so that it learns motion, in the right order, as well as
            appearance. warmup_text_features: those features' ``locked_text_features`` kind
            (``ngram``; a fresh model copy's text embeddings, ``model``, confuse the order of
            the two motion steps: docs/analyses.md, section 5). 600 steps (from 450): the
            warm-up's motion agreement against its own targets went 78 -> 91 % (seed 0) and
            68 -> 81 % (seed 1).
        finetune_locked_text_anchor: in fine-tuning, the visual side keeps being compared with
            the warm-up's fixed text features at this weight (``locked_text_anchor``) while
            the live text side learns; with 0.5 instead of 0, seed 1 (after the 600-step
            warm-up) read shape 59 % instead of 55 % and mixed t2v R@1 52.6 instead of 46.0
            (docs/analyses.md, section 6).
        finetune_objectives: stage 2's objectives: ``contrastive`` (multi-stream; the default)
            and optionally ``retrieval`` (the mixed stream, trained with the encoder). Stage 3
            trains the mixed stream either way; adding it to stage 2 as well (in-batch
            negatives, then stage 3) brought both streams down (multi 19.8, mixed 18.0 against
            37.2 / 33.4, one seed; docs/analyses.md).
        pretrain_lr / finetune_lr: peak learning rates (linear warm-up, then linear decay).
        finetune_layerdrop: LayerDrop of the warm-up and fine-tuning (pretraining uses
            ``model["layerdrop"]``). 0: with LayerDrop 0.5 in those two
            stages as well, multi-stream R@1 fell from 37.2 to 11.0 and motion stayed at chance
            (one seed; the README's LayerDrop trade-off shows what it costs at inference).
        retrieval_negatives: negatives per query of the ``retrieval`` objective in stage 2:
            ``"all"`` (every other item of the batch) or k (the hardest under the multi-stream
            similarity, see ``hard_negative_fraction``).
        hard_negative_fraction: with k negatives, the share that is the hardest; the rest are
            random in-batch items (see ``PerceiverVLModule``).
        decoder_steps / decoder_lr / decoder_batch_size: stage 3, the mixed-stream decoder and
            heads trained on the fine-tuned (frozen, so encoded once and cached) latents, each
            pair against every other pair of its batch.
        rerank_k: shortlist length of the multi-stream shortlist + mixed re-rank.
        curve_sizes: gallery sizes n (n texts x n videos) timed for the retrieval-time plot.
        efficiency_frames: frame counts of the efficiency comparison.
        efficiency_image_size: frame side of the efficiency comparison (the paper: 384).
        latency_repeats: timed repeats per latency figure.
    """

    num_train: int = 3000
    num_val: int = 100
    num_test: int = 500
    frames: tuple[int, int] = (8, 16)
    clip_frames: int = 8
    size: int = 64
    model: dict[str, Any] = field(
        default_factory=lambda: dict(
            hidden_size=128,
            num_heads=4,
            num_self_attention_layers=4,
            cross_attention_before_layers=(0, 2),
            num_latents=32,
            patch_size=16,
            image_size=64,
            max_frames=16,
            max_text_length=16,
            contrastive_dim=128,
            dropout=0.0,
            layerdrop=0.5,
            cross_attention_residual="standard",
            frame_difference=True,
            visual_position_init_std=0.2,
        )
    )
    batch_size: int = 64
    pretrain_steps: int = 60
    warmup_steps: int = 600
    warmup_lr: float = 1e-3
    warmup_text_features: str = "ngram"
    finetune_steps: int = 200
    finetune_locked_text_anchor: float = 0.5
    pretrain_lr: float = 1e-3
    finetune_lr: float = 1e-3
    finetune_objectives: tuple[str, ...] = ("contrastive",)
    decoder_steps: int = 1200
    decoder_lr: float = 2e-3
    finetune_layerdrop: float = 0.0
    retrieval_negatives: int | str = "all"
    hard_negative_fraction: float = 1.0
    decoder_batch_size: int = 64
    rerank_k: int = 16
    curve_sizes: tuple[int, ...] = (50, 100)
    efficiency_frames: tuple[int, ...] = (8, 16, 32)
    efficiency_image_size: int = 384
    latency_repeats: int = 3

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
            warmup_steps=20,
            finetune_steps=40,
            decoder_steps=20,
            curve_sizes=(16, 32),
            efficiency_frames=(8, 16, 32),
            efficiency_image_size=64,
            latency_repeats=2,
            rerank_k=8,
        )
        settings.model.update(hidden_size=64, num_heads=2, num_latents=16, contrastive_dim=64)
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
