"""The decoder: one cross-attention block in which task queries read the encoder latents (§3.4).

Query arrays:
- matching: one learned [CLS] query;
- masked LM: for text position i, ``mlm_position[i] + mlm_type[is_not_target_i]`` (type 0 = a
  masked prediction target, 1 = not a target). Token embeddings never reach the decoder.
Several tasks' queries are concatenated into one decoder call; queries do not attend to each
other, so each query's output is the same whatever else is decoded with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossAttentionBlock, expand_batch
from .config import PerceiverVLConfig


class QueryDecoder(nn.Module):
    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.cls_query = nn.Parameter(torch.empty(1, 1, d))
        self.mlm_position = nn.Embedding(config.max_text_length, d)
        self.mlm_type = nn.Embedding(2, d)
        nn.init.trunc_normal_(self.cls_query, std=0.02)
        nn.init.trunc_normal_(self.mlm_position.weight, std=0.02)
        nn.init.trunc_normal_(self.mlm_type.weight, std=0.02)
        self.block = CrossAttentionBlock(
            dim=d,
            num_heads=config.num_heads,
            mlp_hidden_dim=config.mlp_hidden_size,
            eps=config.layer_norm_eps,
            residual=config.cross_attention_residual,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def matching_queries(self, batch_size: int) -> Tensor:
        """(B, 1, D): the [CLS] query."""
        return expand_batch(self.cls_query, batch_size)

    def mlm_queries(self, mlm_labels: Tensor) -> Tensor:
        """mlm_labels: (B, L), -100 = not a target -> (B, L, D) position + is-masked queries."""
        length = mlm_labels.shape[1]
        is_not_target = (mlm_labels == -100).long()
        return self.mlm_position.weight[:length].unsqueeze(0) + self.mlm_type(is_not_target)

    def forward(
        self, queries: Tensor, latents: Tensor, latent_mask: Tensor | None = None
    ) -> Tensor:
        """queries: (B, Q, D); latents: (B, N', D); latent_mask: (B, N') bool -> (B, Q, D)."""
        return self.norm(self.block(queries.to(latents.dtype), latents, latent_mask))
