"""The latent encoder: a learned latent array reads the input array through a schedule of
cross-attention blocks; all deep processing is self-attention over the latents (paper §3.2).

The cross-attention schedule (which self-attention layer each cross-attention block precedes),
the modality aggregation variants (§4.1) and LayerDrop on cross-attention (§3.3) all live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .attention import CrossAttentionBlock, SelfAttentionBlock, expand_batch
from .config import PerceiverVLConfig

# (normalised array (B, M_i, D), key mask (B, M_i) bool or None) for one modality
Context = tuple[Tensor, Tensor | None]
# (block index j, source "joint" | "visual" | "text", latents (B, N, D)) -> latents after block j
CrossAttend = Callable[[int, str, Tensor], Tensor]


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


def fourier_position_features(num_positions: int, dim: int) -> Tensor:
    """Fixed sin/cos features of positions 0..num_positions-1 (transformer style): (N, D)."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)[:, : dim // 2]
    return table


def concat_contexts(contexts: Sequence[Context]) -> Context:
    """Join per-modality contexts into one input array (visual first) with one key mask."""
    if len(contexts) == 1:
        return contexts[0]
    arrays = [c[0] for c in contexts]
    if all(c[1] is None for c in contexts):
        return torch.cat(arrays, dim=1), None
    masks = [
        m if m is not None else torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
        for a, m in contexts
    ]
    return torch.cat(arrays, dim=1), torch.cat(masks, dim=1)


class LatentEncoder(nn.Module):
    """Latent array + cross-attention schedule + latent self-attention stack + final LayerNorm.

    ``cross_attention_blocks[j]`` reads the whole input array (``joint``) or the visual tokens
    (``separate``/``separate_plus``, which add ``text_cross_attention_blocks[j]`` for the text);
    the shared names let joint weights load into the separate variants.
    """

    #: Parameters the optimiser does not weight-decay (the latent array and its positions).
    no_weight_decay_params = ("latents", "latent_position")

    def __init__(self, config: PerceiverVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.schedule = tuple(config.cross_attention_before_layers)
        self.aggregation = config.modality_aggregation
        self.latents = nn.Parameter(torch.empty(config.num_latents, d))
        nn.init.trunc_normal_(self.latents, std=0.02)
        self.latent_position_encoding = config.latent_position_encoding
        if config.latent_position_encoding == "learned":
            self.latent_position = nn.Parameter(torch.zeros(config.num_latents, d))
            nn.init.trunc_normal_(self.latent_position, std=0.02)
        elif config.latent_position_encoding == "fourier":
            self.register_buffer(
                "latent_position",
                fourier_position_features(config.num_latents, d),
                persistent=False,
            )
        else:
            self.latent_position = None
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

        def cross_blocks() -> nn.ModuleList:
            return nn.ModuleList(
                CrossAttentionBlock(residual=config.cross_attention_residual, **block_args)
                for _ in self.schedule
            )

        self.cross_attention_blocks = cross_blocks()
        self.text_cross_attention_blocks = cross_blocks() if self.aggregation != "joint" else None
        self.self_attention_blocks = nn.ModuleList(
            SelfAttentionBlock(**block_args) for _ in range(config.num_self_attention_layers)
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        # layer index -> [(block index j, "joint" | "visual" | "text")] run before that layer
        self.plan = self._plan(config.num_self_attention_layers)

    def _plan(self, depth: int) -> dict[int, list[tuple[int, str]]]:
        plan: dict[int, list[tuple[int, str]]] = {}
        for j, start in enumerate(self.schedule):
            if self.aggregation == "joint":
                plan.setdefault(start, []).append((j, "joint"))
            elif self.aggregation == "separate":
                plan.setdefault(start, []).extend([(j, "visual"), (j, "text")])
            else:  # separate_plus: the block's self-attention layers split between the two
                end = self.schedule[j + 1] if j + 1 < len(self.schedule) else depth
                middle = start + (end - start) // 2
                plan.setdefault(start, []).append((j, "visual"))
                plan.setdefault(middle, []).append((j, "text"))
        return plan

    def initial_latents(self, batch_size: int) -> Tensor:
        """z0 (plus its position encoding, if any) broadcast over the batch: (B, N, D)."""
        latents = self.latents
        if self.latent_position is not None:
            latents = latents + self.latent_position.to(latents.dtype)
        return expand_batch(latents, batch_size)

    def forward(
        self,
        visual: Context | None,
        text: Context | None,
        blocks: tuple[int, ...],
        pairs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """visual / text: normalised (array (B, M_i, D), mask (B, M_i) or None), either may be
        None; blocks: indices of the cross-attention blocks to run -> latents (B, N, D).

        pairs: (visual_index, text_index), each (P,): encode the P pairs
        (visual[visual_index[p]], text[text_index[p]]) instead, -> (P, N, D); visual and text
        then hold the distinct items (B_v and B_t of them). Each item's keys and values are
        projected once per cross-attention block and gathered per pair, which is exactly the
        joint encoding of the concatenated pair at a fraction of the cost when items repeat
        (a caption against k + 1 candidate videos).
        """
        if pairs is not None:
            if visual is None or text is None:
                raise ValueError("pairs need both a visual and a text input")
            visual_index, text_index = pairs
            if self.aggregation != "joint":  # nothing to share beyond the embeddings
                visual, text = _gather(visual, visual_index), _gather(text, text_index)
                pairs = None
        present = [c for c in (visual, text) if c is not None]
        if not present:
            raise ValueError("the encoder needs at least one modality")
        contexts = {"visual": visual, "text": text}
        if self.aggregation == "joint" and pairs is None:
            contexts["joint"] = concat_contexts(present)
        batch = present[0][0].shape[0] if pairs is None else pairs[0].shape[0]
        x = self.initial_latents(batch).to(present[0][0].dtype)

        def cross_attend(j: int, source: str, x: Tensor) -> Tensor:
            if pairs is not None:
                block = self.cross_attention_blocks[j]
                return block.forward_projected(x, *_paired_keys(block, visual, text, pairs))
            context = contexts[source]
            if context is None:
                return x
            block = (
                self.text_cross_attention_blocks[j]
                if source == "text"
                else self.cross_attention_blocks[j]
            )
            return block(x, context[0], context[1])

        return self.run(x, blocks, cross_attend)

    def run(
        self,
        x: Tensor,
        blocks: Sequence[int],
        cross_attend: CrossAttend,
        *,
        start_layer: int = 0,
        stop_layer: int | None = None,
    ) -> Tensor:
        """The encoder loop: the cross-attention schedule over the latent self-attention stack.

        Runs self-attention layers ``start_layer`` .. ``stop_layer - 1`` (default: to the last)
        on the latents ``x`` (B, N, D). Before layer ``i``, every cross-attention block ``j``
        that ``plan[i]`` schedules there and that ``blocks`` names updates the latents as
        ``x = cross_attend(j, source, x)``, ``source`` being the input it reads (``"joint"``,
        ``"visual"`` or ``"text"``, by the aggregation variant). Running to the last layer ends
        with the final LayerNorm. ``forward`` is this loop with the blocks reading the input
        array; other callers (the all-pairs single stream) supply their own ``cross_attend``.
        """
        run = set(blocks)
        depth = len(self.self_attention_blocks)
        for i in range(start_layer, depth if stop_layer is None else stop_layer):
            for j, source in self.plan.get(i, ()):
                if j in run:
                    x = cross_attend(j, source, x)
            x = self.self_attention_blocks[i](x)
        return self.norm(x) if stop_layer is None else x


def _gather(context: Context, index: Tensor) -> Context:
    array, mask = context
    return _rows(array, index), None if mask is None else _rows(mask, index)


def _rows(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]`` for a 1-D index, as ``index_select``. Pairs repeat items, so the
    backward sums rows: ``index_select``'s does it with a scatter-add, fancy indexing's with an
    accumulating ``index_put_``, the slower of the two on the CPU (demo fine-tuning step, bf16:
    about 3.5 against 4.6 ms a call)."""
    return tensor.index_select(0, index)


def _paired_keys(
    block: CrossAttentionBlock, visual: Context, text: Context, pairs: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keys, values (P, heads, M_v + M_t, head_dim) and key mask of the paired input arrays,
    projected per item and gathered per pair."""
    return gather_pair_keys(
        block.attn.project_kv(visual[0]), visual[1], block.attn.project_kv(text[0]), text[1], *pairs
    )


def gather_pair_keys(
    visual_kv: tuple[Tensor, Tensor],
    visual_mask: Tensor | None,
    text_kv: tuple[Tensor, Tensor],
    text_mask: Tensor | None,
    visual_index: Tensor,
    text_index: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The input array of each pair (visual item ``visual_index[p]``, text ``text_index[p]``)
    from keys/values projected once per item: per-item (keys, values) (B_i, heads, M_i,
    head_dim) and key masks (B_i, M_i) or None -> keys, values (P, heads, M_v + M_t, head_dim)
    and the key mask (P, M_v + M_t), or None when neither modality is padded."""
    keys = torch.cat([_rows(visual_kv[0], visual_index), _rows(text_kv[0], text_index)], dim=2)
    values = torch.cat([_rows(visual_kv[1], visual_index), _rows(text_kv[1], text_index)], dim=2)
    if visual_mask is None and text_mask is None:
        return keys, values, None
    masks = [
        (
            _rows(m, index)
            if m is not None
            else torch.ones(index.shape[0], kv[0].shape[2], dtype=torch.bool, device=kv[0].device)
        )
        for kv, m, index in (
            (visual_kv, visual_mask, visual_index),
            (text_kv, text_mask, text_index),
        )
    ]
    return keys, values, torch.cat(masks, dim=1)
