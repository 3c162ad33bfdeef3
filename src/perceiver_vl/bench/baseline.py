"""The comparison baseline: a ViLT-style joint transformer (paper Fig. 4).

It shares Perceiver-VL's embeddings, self-attention layer and matching head, but has no latent
array: ``num_layers`` pre-LN self-attention layers run over the whole input array (text tokens
first, then the visual tokens, as in ViLT), so each layer costs O(M^2) in the input length M
instead of Perceiver-VL's O(M N). The matching logit is read from the first token (the text
``[CLS]``; the first frame token when there is no text). Used only for cost comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from perceiver_vl.model import PerceiverVLConfig
from perceiver_vl.model.attention import SelfAttentionBlock
from perceiver_vl.model.embeddings import TextEmbedding, VisualEmbedding
from perceiver_vl.model.heads import MatchingHead


@dataclass
class JointTransformerOutput:
    """What :meth:`JointTransformer.forward` returns.

    Attributes:
        matching_logits: (B,) matching logits, or None unless both a visual input and text were
            given (as for :class:`~perceiver_vl.PerceiverVL`).
        states: (B, M, D) the final LayerNorm-ed token states (text first, then visual).
    """

    matching_logits: Tensor | None
    states: Tensor


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _all_true(mask: Tensor) -> bool:
    return mask.device.type != "meta" and bool(mask.all())


class JointTransformer(nn.Module):
    """ViLT-style single-stream transformer over concat(text, visual) tokens.

    Args:
        config: The Perceiver-VL configuration whose width, heads, MLP ratio, embeddings and
            LayerNorm epsilon are shared. The latent settings are ignored.
        num_layers: Self-attention layers over the whole input array; default
            ``config.num_self_attention_layers`` (12, as ViLT-B/32).

    The forward has Perceiver-VL's input interface: ``video=`` (B, T, 3, H, W) with optional
    ``video_mask=`` (B, T) or ``images=`` (B, 3, H, W), and ``text_ids=`` (B, L) with optional
    ``text_mask=`` (B, L). Apart from dropping all-True masks it does no data-dependent work, so it
    also runs on the ``meta`` device (used for fast FLOP counting of very long inputs).
    """

    def __init__(self, config: PerceiverVLConfig | None = None, *, num_layers: int | None = None):
        super().__init__()
        self.config = config = config or PerceiverVLConfig()
        depth = config.num_self_attention_layers if num_layers is None else num_layers
        if depth < 1:
            raise ValueError(f"num_layers must be at least 1, got {depth}")
        d = config.hidden_size
        self.visual_embed = VisualEmbedding(config)
        self.text_embed = TextEmbedding(config)
        # ViLT adds a modality-type embedding to every token (0 = text, 1 = visual).
        self.modality_embed = nn.Embedding(2, d)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                dim=d,
                num_heads=config.num_heads,
                mlp_hidden_dim=config.mlp_hidden_size,
                eps=config.layer_norm_eps,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.matching_head = MatchingHead(config)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.modality_embed.weight, std=0.02)

    def forward(
        self,
        *,
        video: Tensor | None = None,
        video_mask: Tensor | None = None,
        images: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> JointTransformerOutput:
        """Joint encoding of the whole input array -> :class:`JointTransformerOutput`."""
        if video is not None and images is not None:
            raise ValueError("pass either video= or images=, not both (an image is a 1-frame clip)")
        frames, is_video = None, False
        if images is not None:
            if not isinstance(images, Tensor) or images.dim() != 4:
                raise ValueError(f"images must be (B, 3, H, W), got {_shape(images)}")
            frames = images.unsqueeze(1)
        if video is not None:
            if not isinstance(video, Tensor) or video.dim() != 5:
                raise ValueError(f"video must be (B, T, 3, H, W), got {_shape(video)}")
            frames, is_video = video, True
        if frames is None and text_ids is None:
            raise ValueError("no input: pass video= or images=, and/or text_ids=")
        if video_mask is not None and not is_video:
            raise ValueError("video_mask was given without video=")
        if text_mask is not None and text_ids is None:
            raise ValueError("text_mask was given without text_ids=")

        parts: list[Tensor] = []
        masks: list[Tensor | None] = []
        if text_ids is not None:
            if not isinstance(text_ids, Tensor) or text_ids.dim() != 2:
                raise ValueError(f"text_ids must be (B, L), got {_shape(text_ids)}")
            parts.append(self.text_embed(text_ids) + self.modality_embed.weight[0])
            masks.append(None if text_mask is None else text_mask.to(torch.bool))
        if frames is not None:
            weight = self.visual_embed.patch_embed.proj.weight
            tokens = self.visual_embed(frames.to(weight.dtype), is_video=is_video)
            parts.append(tokens + self.modality_embed.weight[1].to(tokens.dtype))
            frame_mask = None
            if video_mask is not None:
                per_frame = tokens.shape[1] // frames.shape[1]
                frame_mask = video_mask.to(torch.bool).repeat_interleave(per_frame, dim=1)
            masks.append(frame_mask)
        dtype = parts[-1].dtype
        x = torch.cat([p.to(dtype) for p in parts], dim=1) if len(parts) > 1 else parts[0]
        # All-True masks are dropped (as Perceiver-VL does), so SDPA runs unmasked.
        masks = [None if m is None or _all_true(m) else m for m in masks]
        key_mask = None
        if any(m is not None for m in masks):
            key_mask = torch.cat(
                [
                    m
                    if m is not None
                    else torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
                    for p, m in zip(parts, masks)
                ],
                dim=1,
            )
        for block in self.blocks:
            x = block(x, key_mask)
        states = self.norm(x)
        logits = None
        if frames is not None and text_ids is not None:
            logits = self.matching_head(states[:, 0])
        return JointTransformerOutput(matching_logits=logits, states=states)


__all__ = ["JointTransformer", "JointTransformerOutput"]
