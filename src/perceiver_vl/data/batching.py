"""Training batches of captions that share words, so in-batch negatives are hard ones.

Contrastive and retrieval losses take their negatives from the batch. In a batch drawn at
random, most negatives differ from the positive in something obvious (another object, another
colour), and the loss teaches little about the details captions differ by. Grouping the batch
into small groups of captions that share content words puts near misses beside each other:
"a dog runs on a beach" next to "a dog sleeps on a beach".

The grouping is a min-hash of each caption's content words, redrawn every epoch: a random
value per word, and each caption is keyed by the words with the two smallest values among its
own. Captions with the same key share those two words; sorting by the key and cutting the
order into runs makes the groups. It needs no model and costs O(n log n) per epoch, so it
scales to millions of captions. Words that occur in more than ``max_document_frequency`` of
the captions ("a", "the", "then") are not content words. Copies of one caption (several clips
with one description) are spread over different groups: in one group they would be each
other's false negatives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

_WORD = re.compile(r"[a-z0-9']+")


class SharedWordBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices made of groups of ``group_size`` captions that share
    content words (see the module docstring).

    Args:
        captions: one text per data set item (index i of the data set has captions[i]).
        batch_size: indices per batch (a multiple of ``group_size``).
        group_size: captions per group; 1 = plain shuffled batches.
        seed: with the epoch (:meth:`set_epoch`), decides the grouping and the order.
        drop_last: drop the last incomplete batch.
        max_document_frequency: words in a larger share of the captions are ignored.
        num_replicas, rank: for data-parallel training: every rank computes the same batches
            and takes every ``num_replicas``-th one, starting at ``rank``. (The training data
            module uses only :meth:`order`, through its resumable epoch sampler.)
    """

    def __init__(
        self,
        captions: Sequence[str],
        batch_size: int,
        group_size: int,
        *,
        seed: int = 0,
        drop_last: bool = True,
        max_document_frequency: float = 0.5,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or group_size < 1 or batch_size % group_size:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of "
                f"group_size={group_size} (e.g. batch_size 64 with group_size 8)"
            )
        if not 0.0 < max_document_frequency <= 1.0:
            raise ValueError(f"max_document_frequency={max_document_frequency} must be in (0, 1]")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        if len(captions) < batch_size and drop_last:
            raise ValueError(
                f"{len(captions)} captions cannot fill one batch of {batch_size} with "
                "drop_last=True; lower the batch size or add data"
            )
        self.batch_size = batch_size
        self.group_size = group_size
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._size = len(captions)
        self._words, self._owner, self._copy_rank = _content_words(captions, max_document_frequency)
        self._vocab_size = int(self._words.max()) + 1 if len(self._words) else 0

    def set_epoch(self, epoch: int) -> None:
        """A new grouping and order for ``epoch`` (Lightning calls this every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        batches = (
            self._size // self.batch_size if self.drop_last else -(-self._size // self.batch_size)
        )
        return batches // self.num_replicas

    def order(self, epoch: int | None = None) -> np.ndarray:
        """All indices of ``epoch`` (default: the current one), grouped (each run of
        ``group_size`` is a group) and with the groups shuffled."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        n = self._size
        if self.group_size == 1:
            return rng.permutation(n)
        # the two smallest per-word values of each caption (inf where a caption has fewer words)
        value = rng.random(self._vocab_size)[self._words]
        by_caption = np.lexsort((value, self._owner))
        sorted_value, sorted_owner = value[by_caption], self._owner[by_caption]
        first = np.full(n, np.inf)
        second = np.full(n, np.inf)
        starts = np.flatnonzero(np.r_[True, sorted_owner[1:] != sorted_owner[:-1]])
        first[sorted_owner[starts]] = sorted_value[starts]
        has_second = starts + 1 < len(sorted_owner)
        has_second[has_second] &= (
            sorted_owner[starts[has_second] + 1] == sorted_owner[starts[has_second]]
        )
        second[sorted_owner[starts[has_second]]] = sorted_value[starts[has_second] + 1]
        # copies of a caption go to different passes over the keys, so different groups
        order = np.lexsort((rng.random(n), second, first, self._copy_rank))
        usable = n - n % self.group_size
        groups = order[:usable].reshape(-1, self.group_size)
        groups = groups[rng.permutation(len(groups))]
        return np.concatenate([groups.reshape(-1), order[usable:]])

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        batches = [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        usable = len(batches) - len(batches) % self.num_replicas
        yield from batches[self.rank : usable : self.num_replicas]


def _content_words(
    captions: Sequence[str], max_document_frequency: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word ids, owning caption per word, copy rank per caption): the content words of every
    caption, flattened, and for each caption how many identical captions came before it."""
    tokens = [sorted(set(_WORD.findall(str(text).lower()))) for text in captions]
    frequency: dict[str, int] = {}
    for words in tokens:
        for word in words:
            frequency[word] = frequency.get(word, 0) + 1
    limit = max_document_frequency * len(captions)
    ids = {w: i for i, w in enumerate(sorted(w for w, f in frequency.items() if f <= limit))}
    words, owner = [], []
    for index, caption_words in enumerate(tokens):
        kept = [ids[w] for w in caption_words if w in ids]
        words += kept
        owner += [index] * len(kept)
    seen: dict[str, int] = {}
    copy_rank = np.empty(len(captions), dtype=np.int64)
    for index, text in enumerate(captions):
        key = " ".join(str(text).lower().split())
        copy_rank[index] = seen.get(key, 0)
        seen[key] = copy_rank[index] + 1
    return np.asarray(words, dtype=np.int64), np.asarray(owner, dtype=np.int64), copy_rank
