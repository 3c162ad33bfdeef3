"""Input embeddings: video/image patches and WordPiece text, forming the input array (paper §3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import autocast_dtype
from .config import PerceiverVLConfig


def resize_position_grid(table: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resize a row-major (g_h*g_w, D) position table to (h*w, D), bilinear, align_corners=True."""
    if tuple(grid) == tuple(new_grid):
        return table
    d = table.shape[-1]
    image = table.reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=new_grid, mode="bilinear", align_corners=True)
    return resized.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], d)


class VisualEmbedding(nn.Module):
    """Frames -> patch tokens with a per-frame token, 2-D position and temporal embeddings.

    Parameter names follow the released checkpoint: ``patch_embed.proj`` (strided Conv2d),
    ``cls_token`` (the per-frame token), ``pos_embed`` (row 0 for the frame token, rows 1.. a
    row-major grid), ``temporal_embed`` (one row per frame index); with
    ``config.frame_difference``, ``difference_proj`` projects each patch's change from the
    previous frame (no bias).
    """

    #: Parameters the optimiser does not weight-decay (positions and the frame token).
    no_weight_decay_params = ("cls_token", "pos_embed", "temporal_embed")

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            3, d, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, d))
        self.temporal_embed = nn.Parameter(torch.zeros(1, config.max_frames, d))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        std = config.visual_position_init_std
        nn.init.trunc_normal_(self.pos_embed, std=std)
        nn.init.trunc_normal_(self.temporal_embed, std=std)
        self.difference_proj = (
            nn.Linear(3 * config.patch_size**2, d, bias=False) if config.frame_difference else None
        )

    @property
    def max_frames(self) -> int:
        return self.temporal_embed.shape[1]

    def tokens_per_frame(self, height: int, width: int) -> int:
        return 1 + (height // self.patch_size) * (width // self.patch_size)

    def forward(self, frames: Tensor, *, is_video: bool) -> Tensor:
        """frames: (B, T, 3, H, W) -> tokens (B, T * (1 + h*w), D), frame-major.

        Images are passed as T = 1 with ``is_video=False`` (no temporal embedding).
        """
        b, t, c, height, width = frames.shape
        p = self.patch_size
        h, w = height // p, width // p
        # The strided convolution as one matmul over patch rows (same result, faster on CPU):
        # (B*T, C, h, P, w, P) -> (B*T*h*w, C*P*P) in the conv weight's (C, P, P) order.
        proj = self.patch_embed.proj
        compute_dtype = autocast_dtype(frames.device.type)
        if compute_dtype is not None and frames.dtype == torch.float32:
            # the projections would cast the patches to the autocast dtype anyway: casting the
            # frames first halves the bytes the patch reordering below moves
            frames = frames.to(compute_dtype)
        patches = (
            frames[..., : h * p, : w * p]
            .reshape(b * t, c, h, p, w, p)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b * t * h * w, c * p * p)
        )
        x = F.linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias)
        if self.difference_proj is not None and is_video and t > 1:
            # each patch minus the same patch one frame earlier (zero for the first frame),
            # projected and added: one more matmul of the patch projection's size
            per_frame = patches.view(b, t, h * w, c * p * p)
            change = torch.cat(
                [torch.zeros_like(per_frame[:, :1]), per_frame[:, 1:] - per_frame[:, :-1]], dim=1
            )
            x = x + self.difference_proj(change.view(b * t * h * w, -1))
        x = x.view(b * t, h * w, -1)  # (B*T, h*w, D)
        pos = self.pos_embed[0]
        grid_pos = resize_position_grid(pos[1:], (self.grid_size, self.grid_size), (h, w))
        x = x + grid_pos.to(x.dtype)
        frame_token = (self.cls_token[0] + pos[:1]).to(x.dtype).expand(b * t, 1, -1)
        x = torch.cat([frame_token, x], dim=1).view(b, t, 1 + h * w, -1)
        if is_video:
            x = x + self.temporal_embed[0, :t, None, :].to(x.dtype)
        return x.reshape(b, t * (1 + h * w), -1)


class TextEmbedding(nn.Module):
    """BERT-style text embedding: word + position + token type 0, then LayerNorm (eps 1e-12)."""

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_text_length, d)
        self.token_type_embeddings = nn.Embedding(2, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.text_layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        for emb in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, text_ids: Tensor) -> Tensor:
        """text_ids: (B, L) int64 -> (B, L, D)."""
        length = text_ids.shape[1]
        x = self.word_embeddings(text_ids)
        x = x + self.position_embeddings.weight[:length] + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))
