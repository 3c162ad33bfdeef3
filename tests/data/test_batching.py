"""SharedWordBatchSampler: batches of captions that share content words."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from perceiver_vl.data import SharedWordBatchSampler

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "pink"]
SHAPES = ["circle", "square", "triangle", "cross"]
MOTIONS = ["left", "right", "up", "down"]


def captions(copies: int = 2, seed: int = 0) -> list[str]:
    """Every colour x shape x motion caption, ``copies`` times each, shuffled."""
    texts = [
        f"a {c} {s} moves {m}" for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)
    ] * copies
    random.Random(seed).shuffle(texts)
    return texts


def content(text: str) -> set[str]:
    return set(text.split()) - {"a", "moves"}


def mean_shared_words(texts: list[str], groups: np.ndarray) -> float:
    return float(np.mean([len(set.intersection(*(content(texts[i]) for i in g))) for g in groups]))


def test_every_index_once_per_epoch_and_groups_share_words():
    texts = captions()
    sampler = SharedWordBatchSampler(texts, batch_size=16, group_size=4, drop_last=False)
    batches = list(sampler)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(texts)))
    assert len(batches) == len(sampler) == len(texts) // 16
    grouped = np.asarray(flat).reshape(-1, 4)
    shuffled = np.random.default_rng(0).permutation(len(texts)).reshape(-1, 4)
    # random groups of 4 almost never share a word; grouped ones mostly share one or two
    assert mean_shared_words(texts, shuffled) < 0.3
    assert mean_shared_words(texts, grouped) > 1.0


def test_copies_of_a_caption_land_in_different_groups():
    texts = captions(copies=4)
    groups = SharedWordBatchSampler(texts, 16, 4).order().reshape(-1, 4)
    assert all(len({texts[i] for i in g}) == 4 for g in groups)


def test_order_is_seeded_and_changes_with_the_epoch():
    texts = captions()
    a = SharedWordBatchSampler(texts, 16, 4, seed=3)
    b = SharedWordBatchSampler(texts, 16, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(SharedWordBatchSampler(texts, 16, 4, seed=4)) != first


def test_group_size_one_is_a_plain_shuffle():
    texts = captions()
    sampler = SharedWordBatchSampler(texts, 16, 1)
    assert sorted(sampler.order().tolist()) == list(range(len(texts)))
    groups = sampler.order()[: len(texts) // 4 * 4].reshape(-1, 4)
    assert mean_shared_words(texts, groups) < 0.3


def test_ranks_take_disjoint_batches():
    texts = captions()
    whole = list(SharedWordBatchSampler(texts, 16, 4, seed=1))
    ranks = [
        list(SharedWordBatchSampler(texts, 16, 4, seed=1, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]
    assert not set(itertools.chain(*ranks[0])) & set(itertools.chain(*ranks[1]))


def test_captions_without_content_words_are_still_served():
    texts = ["a"] * 8 + captions()[:24]
    flat = [i for b in SharedWordBatchSampler(texts, 8, 4, drop_last=False) for i in b]
    assert sorted(flat) == list(range(32))


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"batch_size": 10, "group_size": 4}, "multiple of group_size"),
        ({"batch_size": 8, "group_size": 0}, "multiple of group_size"),
        ({"batch_size": 8, "group_size": 4, "rank": 2, "num_replicas": 2}, "rank=2"),
        ({"batch_size": 8, "group_size": 4, "max_document_frequency": 0.0}, "max_document"),
        ({"batch_size": 512, "group_size": 4}, "cannot fill one batch"),
    ],
)
def test_bad_arguments_are_refused(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        SharedWordBatchSampler(captions(), **kwargs)
