"""Masked-language-model corruption: BERT's 15 % with 80/10/10, optional whole-word masking."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from perceiver_vl.data.tokenizer import Tokenizer

IGNORE_INDEX = -100


def _word_starts(ids: torch.Tensor, candidates: torch.Tensor, continuation: torch.Tensor):
    """(B, L) long word number per candidate token; continuation pieces share their word's id."""
    is_cont = continuation[ids.clamp(0, continuation.numel() - 1)] & candidates
    starts = candidates & ~is_cont
    return torch.cumsum(starts.long(), dim=1), starts


def mask_tokens(
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: Iterable[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    whole_word: bool = False,
    tokenizer: Tokenizer | None = None,
    ensure_one: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt token ids for masked-LM training.

    Each real, non-special token is chosen with ``probability`` (with ``whole_word`` each word,
    i.e. a token plus its ``##`` continuations, is chosen as a unit). A chosen token becomes
    [MASK] 80 % of the time, a random non-special token 10 % and stays unchanged 10 %.

    Args:
        ids: (B, L) int64 token ids.
        mask: (B, L) bool, True = real token.
        vocab_size: size of the vocabulary random replacements are drawn from.
        mask_id: id of [MASK].
        special_ids: ids never chosen and never drawn as replacements ([PAD], [CLS], [SEP], ...).
        probability: fraction of eligible tokens (or words) chosen as targets.
        generator: torch generator for reproducible masking.
        whole_word: choose whole WordPiece words; needs ``tokenizer``.
        tokenizer: the `Tokenizer` (for its ``##`` continuation table) when ``whole_word``.
        ensure_one: choose at least one target in every row that has an eligible token.

    Returns:
        corrupted_ids: (B, L) int64.
        labels: (B, L) int64, the original id at targets and -100 everywhere else.
    """
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"ids shape {tuple(ids.shape)} and mask shape {tuple(mask.shape)} must both be (B, L)"
        )
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability={probability!r} must lie in [0, 1]")
    if whole_word and tokenizer is None:
        raise ValueError(
            "whole_word=True needs tokenizer=<Tokenizer> to know which pieces continue a word"
        )
    ids = ids.long()
    mask = mask.bool()
    special = torch.tensor(sorted(set(int(s) for s in special_ids)), dtype=torch.long)
    candidates = mask & ~torch.isin(ids, special)

    if whole_word:
        assert tokenizer is not None
        word_index, starts = _word_starts(ids, candidates, tokenizer.continuation_table())
        num_words = int(word_index.max().item()) + 1 if word_index.numel() else 1
        word_pick = torch.rand(ids.shape[0], num_words, generator=generator) < probability
        chosen = torch.gather(word_pick, 1, word_index) & candidates
        if ensure_one:
            empty = ~chosen.any(dim=1) & candidates.any(dim=1)
            for row in torch.nonzero(empty).flatten().tolist():
                word_ids = torch.unique(word_index[row][starts[row]])
                if len(word_ids) == 0:
                    continue
                pick = word_ids[torch.randint(len(word_ids), (1,), generator=generator)]
                chosen[row] = (word_index[row] == pick) & candidates[row]
    else:
        chosen = (torch.rand(ids.shape, generator=generator) < probability) & candidates
        if ensure_one:
            empty = ~chosen.any(dim=1) & candidates.any(dim=1)
            if empty.any():
                # A random eligible position per empty row: argmax of noise over eligible slots.
                noise = torch.rand(ids.shape, generator=generator).masked_fill(~candidates, -1.0)
                forced = torch.zeros_like(chosen)
                forced[torch.arange(ids.shape[0]), noise.argmax(dim=1)] = True
                chosen = chosen | (forced & empty[:, None] & candidates)

    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    action = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    corrupted = ids.clone()
    corrupted[to_mask] = mask_id
    if to_random.any():
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[special[special < vocab_size]] = False
        pool = torch.nonzero(allowed).flatten()
        draws = torch.randint(len(pool), (int(to_random.sum()),), generator=generator)
        corrupted[to_random] = pool[draws]
    return corrupted, labels


class MLMCollator:
    """Masked-LM corruption bound to a tokenizer; call it on (ids, mask) batches.

    Args:
        tokenizer: the `Tokenizer` (vocabulary size, [MASK] and special ids come from it).
        probability: fraction of real tokens chosen as targets (0.15 in BERT).
        whole_word: mask whole words.
        seed: seed of the private generator (reproducible across runs).
        ensure_one: at least one target per row.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        probability: float = 0.15,
        whole_word: bool = False,
        seed: int = 0,
        ensure_one: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.probability = probability
        self.whole_word = whole_word
        self.ensure_one = ensure_one
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask: (B, L) -> corrupted ids (B, L), labels (B, L) with -100 = not a target."""
        return mask_tokens(
            ids,
            mask,
            vocab_size=self.tokenizer.vocab_size,
            mask_id=self.tokenizer.mask_id,
            special_ids=self.tokenizer.special_ids,
            probability=self.probability,
            generator=self.generator,
            whole_word=self.whole_word,
            tokenizer=self.tokenizer,
            ensure_one=self.ensure_one,
        )
