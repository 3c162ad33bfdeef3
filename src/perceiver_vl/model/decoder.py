"""The decoder: one cross-attention block in which task queries read the encoder latents (§3.4).

Query arrays:
- matching: one learned [CLS] query;
- masked LM: for text position i, ``mlm_position[i] + mlm_type[is_not_target_i]`` (type 0 = a
  masked prediction target, 1 = not a target). Token embeddings never reach the decoder.
Several tasks' queries are concatenated into one decoder call; queries do not attend to each
other, so each query's output is the same whatever else is decoded with it.

The mixed stream's factorised form lives here too: :meth:`QueryDecoder.cls_summary` summarises
the [CLS] query's attention over one item's latents, :meth:`QueryDecoder.cls_states` turns two
items' summaries into the [CLS] state over their concatenated latents (see split_attention).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossAttentionBlock, expand_batch
from .config import PerceiverVLConfig
from .split_attention import AttentionSummary, merge, summarize


class QueryDecoder(nn.Module):
    """Task queries (matching [CLS], masked-LM) -> one cross-attention block over the latents
    -> LayerNorm."""

    #: Parameters the optimiser does not weight-decay (the matching query).
    no_weight_decay_params = ("cls_query",)

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

    def cls_summary(self, latents: Tensor, *, chunk_size: int = 256) -> AttentionSummary:
        """The [CLS] query's attention over each item's latents (n, N, D), summarised:
        lse (n, heads, 1), values (n, heads, 1, head_dim). Keys and values are projected once
        per item, whatever the number of pairs it is later scored in, ``chunk_size`` items at a
        time: the projected keys and values (twice the latents' size) never exist for all items
        at once, only their small summaries."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        block = self.block
        query = block.norm1(self.cls_query.to(latents.dtype))
        parts = [
            summarize(block.attn, query, *block.attn.project_kv(latents[s : s + chunk_size]))
            for s in range(0, max(1, latents.shape[0]), chunk_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return AttentionSummary(
            torch.cat([p.lse for p in parts]), torch.cat([p.values for p in parts])
        )

    def cls_states(self, first: AttentionSummary, second: AttentionSummary) -> Tensor:
        """The [CLS] decoder state (..., D) when the query reads ``concat(first item's latents,
        second item's latents)``, from the two items' :meth:`cls_summary` outputs (which
        broadcast against each other over their leading dimensions). Equals
        ``forward(matching_queries(B), concat(z_1, z_2))[:, 0]`` up to float rounding."""
        block = self.block
        # the query in the parameter's precision: under autocast the summaries' values are bf16,
        # while the residual stream starts from the full-precision query
        cls = self.cls_query.view(1, -1)  # (Q = 1, D)
        attended = merge(block.attn, first, second)  # (..., 1, D)
        return self.norm(block.finish(cls, block.norm1(cls), attended))[..., 0, :]
