"""The Perceiver-VL model: embeddings -> latent encoder -> query decoder -> heads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PerceiverVLConfig, check_cross_attention_blocks
from .decoder import QueryDecoder
from .embeddings import TextEmbedding, VisualEmbedding
from .encoder import Context, LatentEncoder, layerdrop_decisions
from .heads import ClassificationHead, ContrastiveHead, MatchingHead, MLMHead, no_autocast
from .split_attention import AttentionSummary
from .weights import (
    ConversionReport,
    all_finite,
    load_official_state,
    load_pretrained_state,
    read_official_checkpoint,
    read_pretrained,
    save_pretrained,
)


@dataclass
class PerceiverVLOutput:
    """What :meth:`PerceiverVL.forward` returns.

    Attributes:
        loss: Sum of the task losses whose labels were given, else None.
        matching_loss / mlm_loss / qa_loss: The individual losses (None when not computed).
        latents: (B, N, D) encoder latents after the final LayerNorm.
        decoder_states: (B, Q, D) decoder outputs after the decoder LayerNorm; row 0 is the
            [CLS] query, rows 1..L the masked-LM queries when ``mlm_labels`` were given.
        matching_logits: (B,) vision-text matching logits (needs both modalities).
        mlm_logits: (B, L, vocab) masked-LM logits at every position (when ``mlm_labels`` were
            given, in eval mode; in training mode None, since the vocabulary projection, as
            costly as a small encoder, is then computed only where the loss needs it).
        mlm_target_logits: (K, vocab) masked-LM logits at the K positions whose label is not
            -100, in row-major order (when ``mlm_labels`` were given).
        answer_logits: (B, num_answers) QA logits (when the model has a QA head).
        cross_attention_blocks: the cross-attention blocks that ran (indices into the schedule).
    """

    loss: Tensor | None = None
    matching_loss: Tensor | None = None
    mlm_loss: Tensor | None = None
    qa_loss: Tensor | None = None
    latents: Tensor | None = None
    decoder_states: Tensor | None = None
    matching_logits: Tensor | None = None
    mlm_logits: Tensor | None = None
    mlm_target_logits: Tensor | None = None
    answer_logits: Tensor | None = None
    cross_attention_blocks: tuple[int, ...] = ()


@dataclass
class _Inputs:
    frames: Tensor | None  # (B, T, 3, H, W)
    frame_mask: Tensor | None  # (B, T) bool
    is_video: bool
    text_ids: Tensor | None
    text_mask: Tensor | None  # (B, L) bool
    batch_size: int


def _bool_mask(mask: Tensor, name: str, check_values: bool = True) -> Tensor:
    """A 0/1 or bool mask as bool; any other value (0.5, 2, -1) is an error, not True
    (checked only with ``check_values``, since reading values back stalls the device)."""
    if check_values and mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        odd = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
        raise ValueError(
            f"{name} must be bool (True = real) or hold only 0 and 1, got values {odd}; "
            f"pass e.g. {name}.bool() after thresholding yourself"
        )
    return mask.bool()


def _check_finite(tensor: Tensor, name: str) -> None:
    if not all_finite(tensor):
        count = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} holds {count} non-finite values (NaN or inf); replace or drop those inputs "
            "(set model.check_finite = False to skip this check for trusted batches)"
        )


def _check_device(tensor: Any, name: str) -> None:
    if isinstance(tensor, Tensor) and tensor.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device (shape only, no data); pass a real tensor, e.g. "
            f"{name}.to_empty(device='cpu') filled with data"
        )


def _check_latents(model: PerceiverVL, latents: Tensor, name: str) -> None:
    d = model.config.hidden_size
    if not isinstance(latents, Tensor) or latents.dim() != 3 or latents.shape[-1] != d:
        got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"{name} must be latents (B, N, {d}) from model.encode(...), got {got}")


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}"
    return f"{type(t).__name__}"


class PerceiverVL(nn.Module):
    """Perceiver-VL (Tang et al., WACV 2023).

    Video frames / images are cut into patches and text is embedded; both form one input array of
    M tokens. A learned latent array of N << M vectors reads it through a few cross-attention
    blocks; all deep processing is self-attention over the latents, so cost grows linearly in M.
    A one-layer cross-attention decoder with task queries feeds the heads.

    Inputs (all keyword-only, already on the model's device):
        video: (B, T, 3, H, W) float in [-1, 1]; video_mask: (B, T) bool, True = real frame.
        images: (B, 3, H, W) float in [-1, 1] (a one-frame clip without temporal embedding).
        text_ids: (B, L) int64 WordPiece ids; text_mask: (B, L) bool/0-1, True = token.
    """

    def __init__(self, config: PerceiverVLConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PerceiverVLConfig()
        self.visual_embed = VisualEmbedding(config)
        self.text_embed = TextEmbedding(config)
        if config.modality_embedding:
            self.modality_embed = nn.Embedding(2, config.hidden_size)
            nn.init.trunc_normal_(self.modality_embed.weight, std=0.02)
        else:
            self.modality_embed = None
        self.encoder = LatentEncoder(config)
        self.decoder = QueryDecoder(config)
        self.matching_head = MatchingHead(config)
        self.mlm_head = MLMHead(config)
        self.contrastive_head = ContrastiveHead(config)
        self.qa_head = ClassificationHead(config) if config.num_answers else None
        self._init_linear_layers()
        # Counts training forwards; used as the LayerDrop step when the caller gives none.
        self.layerdrop_counter = 0
        # Refuse NaN/inf pixels (one reduction per call); False skips it for trusted batches.
        self.check_finite = True
        # Checks that read input values back to the host (id and label ranges, 0/1 masks, whether
        # a mask is all True); False (see ``trusted_inputs``) leaves only shape/dtype checks.
        self.check_input_values = True

    @contextmanager
    def trusted_inputs(self) -> Iterator[PerceiverVL]:
        """Within this context, skip every input check that reads tensor values.

        Shapes, dtypes and devices are still checked (they are known on the host); token-id
        ranges, label values, 0/1 masks and NaN/inf pixels are not, and masks are used as given
        (an all-True mask is not dropped). The forward then makes no host synchronisation, which
        keeps a GPU busy and lets ``torch.compile(model, fullgraph=True)`` trace it as one graph::

            with model.trusted_inputs():
                out = compiled(video=video, text_ids=ids, text_mask=mask,
                               cross_attention_layers=model.select_cross_attention_blocks())

        (Under compile, choose the LayerDrop blocks eagerly as above: the decision comes from a
        seeded host-side generator, and each choice of blocks is its own graph.) Masked-LM labels
        stay data-dependent: the loss gathers the masked positions, whose number varies.
        """
        saved = self.check_input_values, self.check_finite
        self.check_input_values = self.check_finite = False
        try:
            yield self
        finally:
            self.check_input_values, self.check_finite = saved

    def _all_true(self, mask: Tensor) -> bool:
        """Whether the mask is known to be all True (one host read; False when not checking)."""
        return self.check_input_values and bool(mask.all())

    def _init_linear_layers(self) -> None:
        """Linear weights: truncated normal with ``config.initializer_range`` (None = 1/sqrt(fan_in),
        see the config); biases zero; LayerNorms the identity."""
        fixed = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = fixed if fixed is not None else module.in_features**-0.5
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------
    # Input checking and the input array
    # ------------------------------------------------------------------------------------------
    def _check_inputs(
        self,
        video: Tensor | None,
        video_mask: Tensor | None,
        images: Tensor | None,
        text_ids: Tensor | None,
        text_mask: Tensor | None,
    ) -> _Inputs:
        cfg = self.config
        for name, value in (
            ("video", video),
            ("video_mask", video_mask),
            ("images", images),
            ("text_ids", text_ids),
            ("text_mask", text_mask),
        ):
            _check_device(value, name)
        if video is not None and images is not None:
            raise ValueError(
                "pass either video= or images=, not both (an image is a 1-frame video)"
            )
        if video is None and images is None and text_ids is None:
            raise ValueError(
                "no input: pass video= (B, T, 3, H, W), images= (B, 3, H, W) and/or text_ids= (B, L)"
            )
        frames, frame_mask, is_video, batch = None, None, False, None
        if images is not None:
            if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (B, 3, H, W), got {_describe(images)}")
            frames = images.unsqueeze(1)
        if video is not None:
            if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[2] != 3:
                raise ValueError(f"video must be (B, T, 3, H, W), got {_describe(video)}")
            if video.shape[1] > cfg.max_frames:
                raise ValueError(
                    f"video has {video.shape[1]} frames but the temporal table holds "
                    f"{cfg.max_frames} (config.max_frames); sample at most {cfg.max_frames} frames"
                )
            frames, is_video = video, True
        if frames is not None:
            name = "video" if is_video else "images"
            if not frames.is_floating_point():
                raise ValueError(
                    f"{name} must be a float tensor normalised to [-1, 1], got dtype {frames.dtype}"
                )
            batch = frames.shape[0]
            if batch == 0 or frames.shape[1] == 0:
                raise ValueError(f"{name} is empty: got shape {tuple(frames.shape)}")
            height, width = frames.shape[-2:]
            p = cfg.patch_size
            if height % p or width % p or height < p or width < p:
                raise ValueError(
                    f"{name} frames are {height}x{width}; both sides must be positive multiples "
                    f"of patch_size={p} (resize or crop to e.g. {cfg.image_size}x{cfg.image_size})"
                )
            if video_mask is not None:
                if not is_video:
                    raise ValueError("video_mask was given without video=")
                if not isinstance(video_mask, Tensor) or tuple(video_mask.shape) != tuple(
                    frames.shape[:2]
                ):
                    raise ValueError(
                        f"video_mask must be (B, T) = {tuple(frames.shape[:2])} to match video, "
                        f"got {_describe(video_mask)}"
                    )
                frame_mask = _bool_mask(video_mask, "video_mask", self.check_input_values).to(
                    frames.device
                )
                if not self._all_true(frame_mask):
                    # padding never reaches the output, whatever it holds (even NaN)
                    frames = frames.masked_fill(~frame_mask[:, :, None, None, None], 0.0)
            if self.check_finite:
                _check_finite(frames, name)
        elif video_mask is not None:
            raise ValueError("video_mask was given without video=")

        if text_ids is not None:
            if not isinstance(text_ids, Tensor) or text_ids.dim() != 2:
                raise ValueError(f"text_ids must be (B, L), got {_describe(text_ids)}")
            if text_ids.is_floating_point() or text_ids.dtype == torch.bool:
                raise ValueError(f"text_ids must be an integer tensor, got dtype {text_ids.dtype}")
            if text_ids.shape[0] == 0 or text_ids.shape[1] == 0:
                raise ValueError(f"text_ids is empty: got shape {tuple(text_ids.shape)}")
            if text_ids.shape[1] > cfg.max_text_length:
                raise ValueError(
                    f"text_ids has length {text_ids.shape[1]} but the position table holds "
                    f"{cfg.max_text_length} (config.max_text_length); truncate the text"
                )
            if batch is not None and text_ids.shape[0] != batch:
                raise ValueError(
                    f"batch sizes differ: visual input has {batch} samples, text_ids has "
                    f"{text_ids.shape[0]}"
                )
            if self.check_input_values:
                lo, hi = int(text_ids.min()), int(text_ids.max())
                if lo < 0 or hi >= cfg.vocab_size:
                    raise ValueError(
                        f"text_ids values must lie in [0, vocab_size={cfg.vocab_size}), "
                        f"got [{lo}, {hi}]"
                    )
            batch = text_ids.shape[0]
            if text_mask is not None:
                if not isinstance(text_mask, Tensor) or text_mask.shape != text_ids.shape:
                    raise ValueError(
                        f"text_mask must have the shape of text_ids {tuple(text_ids.shape)}, "
                        f"got {_describe(text_mask)}"
                    )
                text_mask = _bool_mask(text_mask, "text_mask", self.check_input_values).to(
                    text_ids.device
                )
        elif text_mask is not None:
            raise ValueError("text_mask was given without text_ids=")
        assert batch is not None
        return _Inputs(frames, frame_mask, is_video, text_ids, text_mask, batch)

    def _contexts(self, inputs: _Inputs) -> tuple[Context | None, Context | None]:
        """Per modality: the normalised tokens (B, M_i, D) and key mask (B, M_i) or None.

        One LayerNorm (``encoder.input_norm``) serves the whole input array; it acts per token,
        so normalising each modality's part equals normalising their concatenation.
        """
        visual = text = None
        if inputs.frames is not None:
            frames = inputs.frames.to(self.visual_embed.patch_embed.proj.weight.dtype)
            tokens = self.visual_embed(frames, is_video=inputs.is_video)
            if self.modality_embed is not None:
                tokens = tokens + self.modality_embed.weight[0]
            mask = None
            if inputs.frame_mask is not None and not self._all_true(inputs.frame_mask):
                per_frame = tokens.shape[1] // frames.shape[1]
                mask = inputs.frame_mask.repeat_interleave(per_frame, dim=1)
            visual = (self.encoder.input_norm(tokens), mask)
        if inputs.text_ids is not None:
            tokens = self.text_embed(inputs.text_ids)
            if self.modality_embed is not None:
                tokens = tokens + self.modality_embed.weight[1]
            mask = inputs.text_mask
            if mask is not None and self._all_true(mask):
                mask = None
            text = (self.encoder.input_norm(tokens), mask)
        return visual, text

    def embed_inputs(
        self,
        *,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
        images: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Context | None, Context | None]:
        """The encoder's input array per modality, checked as ``forward`` checks its inputs:
        (visual, text), each (normalised tokens (B, M_i, D), key mask (B, M_i) bool or None),
        or None for an absent modality. The hook for scorers that drive the encoder loop
        themselves (:meth:`~perceiver_vl.model.encoder.LatentEncoder.run`)."""
        return self._contexts(self._check_inputs(video, video_mask, images, text_ids, text_mask))

    # ------------------------------------------------------------------------------------------
    # Cross-attention block selection (inference choice or LayerDrop)
    # ------------------------------------------------------------------------------------------
    def select_cross_attention_blocks(
        self, cross_attention_layers: Any = None, layerdrop_step: int | None = None
    ) -> tuple[int, ...]:
        """Which cross-attention blocks run in this call.

        An explicit ``cross_attention_layers`` always wins. Otherwise, in training with
        ``config.layerdrop > 0`` the LayerDrop decision for ``layerdrop_step`` (default: this
        model's own counter of training forwards); in evaluation the config's
        ``inference_cross_attention_blocks`` (None = all blocks). Evaluation is never random.
        """
        num_blocks = self.config.num_cross_attention_blocks
        if cross_attention_layers is not None:
            return check_cross_attention_blocks(
                cross_attention_layers, num_blocks, "cross_attention_layers"
            )
        if self.training and self.config.layerdrop > 0:
            if layerdrop_step is None:
                layerdrop_step = self.layerdrop_counter
                self.layerdrop_counter += 1
            return layerdrop_decisions(
                num_blocks,
                self.config.layerdrop,
                seed=self.config.layerdrop_seed,
                step=layerdrop_step,
            )
        default = self.config.inference_cross_attention_blocks
        return tuple(range(num_blocks)) if default is None else tuple(default)

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    def encode(
        self,
        *,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
        images: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        cross_attention_layers: Any = None,
        layerdrop_step: int | None = None,
    ) -> Tensor:
        """Encode one modality (multi/mixed stream) or both (single stream) -> latents (B, N, D)."""
        return self._encode(
            video, video_mask, images, text_ids, text_mask, cross_attention_layers, layerdrop_step
        )[0]

    def _encode(
        self,
        video,
        video_mask,
        images,
        text_ids,
        text_mask,
        cross_attention_layers,
        layerdrop_step,
        visual_index: Tensor | None = None,
        text_index: Tensor | None = None,
    ) -> tuple[Tensor, tuple[int, ...], _Inputs]:
        if visual_index is None and text_index is None:
            inputs = self._check_inputs(video, video_mask, images, text_ids, text_mask)
            blocks = self.select_cross_attention_blocks(cross_attention_layers, layerdrop_step)
            visual, text = self._contexts(inputs)
            return self.encoder(visual, text, blocks), blocks, inputs
        # pairs of items: each visual item and each text embedded once, gathered per pair
        visual_inputs = self._check_inputs(video, video_mask, images, None, None)
        text_inputs = self._check_inputs(None, None, None, text_ids, text_mask)
        for name, index, size in (
            ("visual_index", visual_index, visual_inputs.batch_size),
            ("text_index", text_index, text_inputs.batch_size),
        ):
            if (
                not isinstance(index, Tensor)
                or index.dim() != 1
                or index.is_floating_point()
                or index.dtype == torch.bool
            ):
                raise ValueError(
                    f"{name} must be a 1-D integer tensor (pairs need both visual_index and "
                    f"text_index), got {_describe(index)}"
                )
            if (
                self.check_input_values
                and index.numel()
                and (int(index.min()) < 0 or int(index.max()) >= size)
            ):
                raise ValueError(f"{name} values must lie in [0, {size}), the number of items")
        assert visual_index is not None and text_index is not None
        if visual_index.shape != text_index.shape or visual_index.numel() == 0:
            raise ValueError(
                "visual_index and text_index must name the same, positive number of pairs, got "
                f"{tuple(visual_index.shape)} and {tuple(text_index.shape)}"
            )
        blocks = self.select_cross_attention_blocks(cross_attention_layers, layerdrop_step)
        visual, _ = self._contexts(visual_inputs)
        _, text = self._contexts(text_inputs)
        latents = self.encoder(visual, text, blocks, pairs=(visual_index, text_index))
        inputs = _Inputs(
            frames=visual_inputs.frames,
            frame_mask=visual_inputs.frame_mask,
            is_video=visual_inputs.is_video,
            text_ids=text_inputs.text_ids,
            text_mask=text_inputs.text_mask,
            batch_size=visual_index.shape[0],
        )
        return latents, blocks, inputs

    def decode(self, queries: Tensor, latents: Tensor, latent_mask: Tensor | None = None) -> Tensor:
        """queries: (B, Q, D) read latents (B, N', D) -> decoder states (B, Q, D)."""
        return self.decoder(queries, latents, latent_mask)

    def forward(
        self,
        *,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
        images: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        matching_labels: Tensor | None = None,
        answer_targets: Tensor | None = None,
        cross_attention_layers: Any = None,
        layerdrop_step: int | None = None,
        visual_index: Tensor | None = None,
        text_index: Tensor | None = None,
    ) -> PerceiverVLOutput:
        """Single-stream forward: joint encoding, one decoder call, the heads, the losses.

        Args:
            mlm_labels: (B, L) original ids at masked-LM targets, -100 elsewhere; adds the MLM
                queries to the decoder call and returns ``mlm_logits`` and ``mlm_loss``.
            matching_labels: (B,) 1 = the pair matches, 0 = it does not (binary cross-entropy),
                -100 = no matching loss for this pair (the loss averages the others).
            answer_targets: (B, num_answers) VQA soft scores (``qa_loss="bce"``) or (B,) answer
                indices (``qa_loss="ce"``); needs a model with ``num_answers > 0``.
            cross_attention_layers: which cross-attention blocks run (indices into the schedule,
                0 = the first block); None = LayerDrop in training, the config's default otherwise.
            layerdrop_step: the training step the LayerDrop decision is drawn for (identical on
                every data-parallel rank); None = the model's own counter.
            visual_index / text_index: (P,) each: score the P pairs (visual item
                ``visual_index[p]``, text ``text_index[p]``) instead of aligned rows. Every
                visual item and text is embedded once and its keys/values projected once per
                cross-attention block, then gathered per pair: the result equals the forward of
                ``video[visual_index]`` with ``text_ids[text_index]`` (to float rounding), at a
                fraction of its cost when items recur (a caption against k + 1 candidate
                videos; pretraining's matching pass on the clean caption and masked-LM pass on
                the corrupted copy of the same videos). ``mlm_labels`` then has the shape of
                ``text_ids`` (one row per text, gathered per pair); ``matching_labels`` and the
                outputs have one row per pair.
        """
        latents, blocks, inputs = self._encode(
            video,
            video_mask,
            images,
            text_ids,
            text_mask,
            cross_attention_layers,
            layerdrop_step,
            visual_index,
            text_index,
        )
        batch = inputs.batch_size
        queries = [self.decoder.matching_queries(batch)]
        if mlm_labels is not None:
            if inputs.text_ids is None or mlm_labels.shape != inputs.text_ids.shape:
                raise ValueError(
                    "mlm_labels must have the shape of text_ids "
                    f"{None if inputs.text_ids is None else tuple(inputs.text_ids.shape)}, "
                    f"got {_describe(mlm_labels)}"
                )
            targets = mlm_labels[mlm_labels != -100] if self.check_input_values else None
            if mlm_labels.is_floating_point() or (
                targets is not None
                and targets.numel()
                and (int(targets.min()) < 0 or int(targets.max()) >= self.config.vocab_size)
            ):
                raise ValueError(
                    f"mlm_labels must be integer token ids in [0, vocab_size="
                    f"{self.config.vocab_size}) at targets and -100 elsewhere, got "
                    f"{_describe(mlm_labels)} with target values "
                    f"{targets.flatten()[:3].tolist() if targets is not None else []}"
                )
            if text_index is not None:  # one row of labels per text -> one per pair
                mlm_labels = mlm_labels[text_index.to(mlm_labels.device)]
            queries.append(self.decoder.mlm_queries(mlm_labels))
        query_array = queries[0] if len(queries) == 1 else torch.cat(queries, dim=1)
        states = self.decoder(query_array, latents)
        out = PerceiverVLOutput(
            latents=latents, decoder_states=states, cross_attention_blocks=blocks
        )
        losses = []
        has_both = inputs.frames is not None and inputs.text_ids is not None
        if has_both:
            out.matching_logits = self.matching_head(states[:, 0])
            if matching_labels is not None:
                if (
                    self.check_input_values
                    and matching_labels.numel()
                    and not bool(
                        (
                            (matching_labels == 0)
                            | (matching_labels == 1)
                            | (matching_labels == -100)
                        ).all()
                    )
                ):
                    raise ValueError(
                        "matching_labels must hold only 1 (the pair matches), 0 (it does "
                        "not) and -100 (no matching loss), got values "
                        f"{matching_labels.unique()[:5].tolist()}"
                    )
                target = matching_labels.reshape(-1).to(out.matching_logits.device)
                if target.shape[0] != batch:
                    raise ValueError(
                        f"matching_labels must be (B,) = ({batch},), got {_describe(matching_labels)}"
                    )
                scored = target != -100
                loss = F.binary_cross_entropy_with_logits(
                    out.matching_logits.float(), target.float().clamp(min=0.0), reduction="none"
                )
                # the mean over the scored pairs (all of them when none is -100), without a
                # host synchronisation
                out.matching_loss = (loss * scored).sum() / scored.sum().clamp(min=1)
                losses.append(out.matching_loss)
        elif matching_labels is not None:
            raise ValueError("matching_labels need both a visual input and text_ids")
        if mlm_labels is not None:
            targets = mlm_labels.to(states.device)
            picked = targets != -100
            if self.training:
                out.mlm_target_logits = self.mlm_head(states[:, 1:][picked])
            else:
                out.mlm_logits = self.mlm_head(states[:, 1:])
                out.mlm_target_logits = out.mlm_logits[picked]
            if bool(picked.any()):
                out.mlm_loss = F.cross_entropy(
                    out.mlm_target_logits.float(), targets[picked].reshape(-1)
                )
            else:  # nothing masked in this batch: a zero that still joins the graph
                out.mlm_loss = self.mlm_head(states[:, 1:2]).sum() * 0.0
            losses.append(out.mlm_loss)
        if self.qa_head is not None:
            out.answer_logits = self.qa_head(latents)
            if answer_targets is not None:
                out.qa_loss = qa_loss(out.answer_logits, answer_targets, self.config.qa_loss)
                losses.append(out.qa_loss)
        elif answer_targets is not None:
            raise ValueError("answer_targets given but the model has no QA head (num_answers=0)")
        if losses:
            out.loss = torch.stack([loss.float() for loss in losses]).sum()
        return out

    # ------------------------------------------------------------------------------------------
    # Retrieval streams (paper §3.5; the modes and the all-pairs single stream: streams.py)
    # ------------------------------------------------------------------------------------------
    def embed(self, latents: Tensor, modality: str) -> Tensor:
        """Multi-stream embedding of latents (B, N, D) -> unit vectors (B, E)."""
        return self.contrastive_head(latents, modality)

    def single_stream_logits(self, **inputs: Any) -> Tensor:
        """Matching logits (B,) for aligned (visual, text) pairs, encoded jointly (``forward``)."""
        out = self(**inputs)
        if out.matching_logits is None:
            raise ValueError(
                "single-stream scoring needs a visual input (video=/images=) and text_ids="
            )
        return out.matching_logits

    def single_stream_pair_logits(
        self,
        *,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
        images: Tensor | None = None,
        text_ids: Tensor,
        text_mask: Tensor | None = None,
        visual_index: Tensor,
        text_index: Tensor,
        cross_attention_layers: Any = None,
        layerdrop_step: int | None = None,
    ) -> Tensor:
        """Single-stream matching logits (P,) of the pairs (visual item ``visual_index[p]``,
        text ``text_index[p]``), each encoded jointly as in ``forward``.

        The B_v visual items and B_t texts are embedded once and their keys/values projected
        once per cross-attention block, then gathered per pair; the result equals
        ``forward(video=video[visual_index], text_ids=text_ids[text_index], ...)`` (to float
        rounding) at a fraction of its cost when items recur, as when each caption is scored
        against k + 1 candidate videos in retrieval training.
        """
        latents, _, _ = self._encode(
            video,
            video_mask,
            images,
            text_ids,
            text_mask,
            cross_attention_layers,
            layerdrop_step,
            visual_index,
            text_index,
        )
        states = self.decoder(self.decoder.matching_queries(latents.shape[0]), latents)
        return self.matching_head(states[:, 0])

    def multi_stream_scores(self, visual_latents: Tensor, text_latents: Tensor) -> Tensor:
        """(num_texts, num_visual) cosine similarities of the multi-stream embeddings."""
        _check_latents(self, visual_latents, "visual_latents")
        _check_latents(self, text_latents, "text_latents")
        text, visual = self.embed(text_latents, "text"), self.embed(visual_latents, "visual")
        with no_autocast(text.device.type):  # bf16 scores would tie (see heads.full_precision)
            return text @ visual.T

    def mixed_stream_logits(self, visual_latents: Tensor, text_latents: Tensor) -> Tensor:
        """Matching logits (B,) of aligned pairs of precomputed latents: the decoder [CLS] query
        reads concat(z_V, z_T) (2N keys)."""
        _check_latents(self, visual_latents, "visual_latents")
        _check_latents(self, text_latents, "text_latents")
        if visual_latents.shape[0] != text_latents.shape[0]:
            raise ValueError(
                f"aligned pairs need equal batch sizes: visual_latents has "
                f"{visual_latents.shape[0]}, text_latents {text_latents.shape[0]} (use "
                "mixed_stream_scores for all pairs)"
            )
        memory = torch.cat([visual_latents, text_latents], dim=1)
        states = self.decoder(self.decoder.matching_queries(memory.shape[0]), memory)
        return self.matching_head(states[:, 0])

    def mixed_stream_summary(self, latents: Tensor) -> AttentionSummary:
        """The per-item factor of the mixed stream: the decoder [CLS] query's attention over
        each item's latents (n, N, D), summarised (see :mod:`.split_attention`). The search
        index stores it per video."""
        _check_latents(self, latents, "latents")
        return self.decoder.cls_summary(latents)

    def mixed_stream_scores_from_summaries(
        self, visual: AttentionSummary, text: AttentionSummary, *, chunk_size: int = 1024
    ) -> Tensor:
        """(num_texts, num_visual) mixed-stream logits from :meth:`mixed_stream_summary` of the
        visual items and of the texts; ``chunk_size`` bounds the pairs decoded at once."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        n_visual, n_text = visual.lse.shape[0], text.lse.shape[0]
        every_visual = AttentionSummary(visual.lse[None], visual.values[None])
        rows = max(1, chunk_size // max(1, n_visual))
        out = []
        for start in range(0, n_text, rows):
            part = AttentionSummary(
                text.lse[start : start + rows, None], text.values[start : start + rows, None]
            )
            out.append(self.matching_head(self.decoder.cls_states(every_visual, part)))
        return torch.cat(out, dim=0)

    def mixed_stream_scores(
        self, visual_latents: Tensor, text_latents: Tensor, *, chunk_size: int = 1024
    ) -> Tensor:
        """(num_texts, num_visual) mixed-stream matching logits for every (text, visual) pair.

        Equals :meth:`mixed_stream_logits` on every pair (up to float rounding) at the cost of
        one key/value projection per item: the [CLS] query is the same for every pair, so its
        attention over concat(z_V, z_T) splits into a per-visual and a per-text summary
        (:meth:`mixed_stream_summary`); each pair then costs the output projection, the decoder
        MLP and the head. ``chunk_size`` bounds the pairs processed at once (memory ~
        chunk_size x D).
        """
        _check_latents(self, visual_latents, "visual_latents")
        _check_latents(self, text_latents, "text_latents")
        return self.mixed_stream_scores_from_summaries(
            self.decoder.cls_summary(visual_latents),
            self.decoder.cls_summary(text_latents),
            chunk_size=chunk_size,
        )

    # ------------------------------------------------------------------------------------------
    # Weights (the file formats: weights.py)
    # ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (atomically)."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location: str = "cpu") -> PerceiverVL:
        """Load a model written by :meth:`save_pretrained` (checksum, config and shapes
        verified), in eval mode."""
        files = read_pretrained(directory, map_location=map_location)
        model = cls(files.config)
        load_pretrained_state(model, files)
        return model.eval()

    @classmethod
    def from_official_checkpoint(
        cls,
        path_or_state_dict: str | Path | dict[str, Tensor],
        num_heads: int | None = None,
        cross_attention_schedule: tuple[int, ...] | None = None,
        *,
        report: ConversionReport | None = None,
    ) -> PerceiverVL:
        """Load the authors' released checkpoint (``.ckpt`` or a state dict in its layout); runs
        only the first cross-attention block at inference by default (blocks 2+ were never
        trained: see the spec). ``report`` collects what was loaded, ignored and left out."""
        config, state = read_official_checkpoint(
            path_or_state_dict,
            num_heads=num_heads,
            cross_attention_schedule=cross_attention_schedule,
        )
        model = cls(config)
        load_official_state(model, state, report=report)
        return model.eval()

    def with_num_latents(self, num_latents: int, method: str = "fresh") -> PerceiverVL:
        """A copy of this model with a latent array of ``num_latents`` (paper §5.2.2, Fig. 5).

        ``method="fresh"``: a newly initialised latent array (the paper finds this works as well);
        ``"interpolate"``: the trained array (and a learned latent position table) linearly
        resampled along the latent axis. Every other weight is copied.
        """
        if method not in ("fresh", "interpolate"):
            raise ValueError(f"method must be 'fresh' or 'interpolate', got {method!r}")
        if not isinstance(num_latents, int) or num_latents <= 0:
            raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")
        new = PerceiverVL(self.config.replace(num_latents=num_latents))
        state = {k: v for k, v in self.state_dict().items()}
        resized = ("encoder.latents", "encoder.latent_position")
        for key in resized:
            if key not in state or state[key].dim() != 2:
                continue
            old = state.pop(key)
            if method == "interpolate":
                grid = old.detach().float().T.unsqueeze(0)  # (1, D, N)
                state[key] = (
                    F.interpolate(grid, size=num_latents, mode="linear", align_corners=True)[0]
                    .T.to(old.dtype)
                    .contiguous()
                )
        missing, unexpected = new.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= set(resized), (missing, unexpected)
        return new.train(self.training)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def qa_loss(logits: Tensor, targets: Tensor, kind: str) -> Tensor:
    """VQA soft-score BCE (scaled by the number of answers, as in the VQA literature) or CE."""
    if kind == "bce":
        if targets.shape != logits.shape:
            raise ValueError(
                f"answer_targets for qa_loss='bce' must be soft scores {tuple(logits.shape)}, "
                f"got {_describe(targets)}"
            )
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[1]
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"answer_targets for qa_loss='ce' must be answer indices ({logits.shape[0]},), "
            f"got {_describe(targets)}"
        )
    return F.cross_entropy(logits.float(), targets.long())
