"""The latent encoder: a learned latent array reads the input array through a schedule of
cross-attention blocks; all deep processing is self-attention over the latents (paper §3.2).

The cross-attention schedule (which self-attention layer each cross-attention block precedes) and
LayerDrop on cross-attention (paper §3.3) both live here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossAttentionBlock, SelfAttentionBlock, expand_batch
from .config import PerceiverVLConfig


def layerdrop_decisions(
    num_blocks: int, probability: float, *, seed: int, step: int
) -> tuple[int, ...]:
    """The cross-attention blocks kept in one training step under LayerDrop.

    Block 0 always runs; every other block is skipped with ``probability``. The draw comes from a
    private generator seeded with ``(seed, step)``, so every data-parallel rank that agrees on the
    seed and the step makes the same decision (no global RNG is touched).
    """
    if num_blocks <= 1 or probability <= 0.0:
        return tuple(range(num_blocks))
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63))
    keep = torch.rand(num_blocks - 1, generator=generator) >= probability
    return (0, *[j + 1 for j in range(num_blocks - 1) if bool(keep[j])])


class LatentEncoder(nn.Module):
    """Latent array + cross-attention schedule + latent self-attention stack + final LayerNorm."""

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.schedule = tuple(config.cross_attention_before_layers)
        self.latents = nn.Parameter(torch.empty(config.num_latents, d))
        nn.init.trunc_normal_(self.latents, std=0.02)
        # One LayerNorm over the whole input array before it serves as keys/values.
        self.input_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        block_args = dict(
            dim=d,
            num_heads=config.num_heads,
            mlp_hidden_dim=config.mlp_hidden_size,
            eps=config.layer_norm_eps,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
        )
        self.cross_attention_blocks = nn.ModuleList(
            CrossAttentionBlock(residual=config.cross_attention_residual, **block_args)
            for _ in self.schedule
        )
        self.self_attention_blocks = nn.ModuleList(
            SelfAttentionBlock(**block_args) for _ in range(config.num_self_attention_layers)
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def initial_latents(self, batch_size: int) -> Tensor:
        """z0 broadcast over the batch: (B, N, D)."""
        return expand_batch(self.latents, batch_size)

    def forward(self, inputs: Tensor, input_mask: Tensor | None, blocks: tuple[int, ...]) -> Tensor:
        """inputs: (B, M, D) input array (already normalised); input_mask: (B, M) bool or None;
        blocks: indices of the cross-attention blocks to run -> latents (B, N, D)."""
        x = self.initial_latents(inputs.shape[0]).to(inputs.dtype)
        run = set(blocks)
        block_at_layer = {layer: j for j, layer in enumerate(self.schedule)}
        for i, self_block in enumerate(self.self_attention_blocks):
            j = block_at_layer.get(i)
            if j is not None and j in run:
                x = self.cross_attention_blocks[j](x, inputs, input_mask)
            x = self_block(x)
        return self.norm(x)
