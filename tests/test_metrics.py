"""Retrieval / QA metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perceiver_vl.metrics import RETRIEVAL_KEYS, qa_accuracy, retrieval_metrics, vqa_score


def test_perfect_identity():
    m = retrieval_metrics(torch.eye(4))
    assert set(m) == set(RETRIEVAL_KEYS)
    for d in ("t2v", "v2t"):
        assert m[f"{d}_r1"] == 100.0 and m[f"{d}_medr"] == 1.0 and m[f"{d}_meanr"] == 1.0


def test_hand_computed_square():
    # rows = texts, cols = videos; text i <-> video i
    s = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # text0: video0 best -> rank 1
            [0.8, 0.5, 0.1],  # text1: video1 second -> rank 2
            [0.7, 0.6, 0.3],  # text2: video2 third -> rank 3
        ]
    )
    m = retrieval_metrics(s)
    assert m["t2v_r1"] == pytest.approx(100 / 3)
    assert m["t2v_r5"] == 100.0
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 2.0
    # v2t: video0 column [0.9,0.8,0.7] -> rank1; video1 [0.1,0.5,0.6] -> rank 2;
    # video2 [0.2,0.1,0.3] -> rank 1
    assert m["v2t_r1"] == pytest.approx(200 / 3)
    assert m["v2t_meanr"] == pytest.approx(4 / 3)
    assert m["v2t_medr"] == 1.0


def test_ties_count_against_the_query():
    m = retrieval_metrics(torch.zeros(5, 5))
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == 5.0 and m["v2t_meanr"] == 5.0
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(s)
    # text0 ties with video1 -> rank 2; video1: text0 (other) ties its caption text1 -> rank 2
    assert m["t2v_meanr"] == pytest.approx(4 / 3)
    assert m["v2t_meanr"] == pytest.approx(4 / 3)


def test_several_captions_per_video_non_square():
    # 5 captions, 2 videos: captions 0,1,2 -> video 0; captions 3,4 -> video 1
    s = torch.tensor(
        [
            [0.2, 0.9],  # caption0 of v0: rank 2
            [0.8, 0.1],  # caption1 of v0: rank 1
            [0.3, 0.4],  # caption2 of v0: rank 2
            [0.5, 0.6],  # caption3 of v1: rank 1
            [0.9, 0.2],  # caption4 of v1: rank 2
        ]
    )
    owners = [0, 0, 0, 1, 1]
    m = retrieval_metrics(s, owners)
    assert m["t2v_r1"] == pytest.approx(40.0)
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == pytest.approx(8 / 5)
    # v0: best own caption = 0.8 (caption1); other videos' captions >= 0.8: caption4 (0.9) -> 2
    # v1: best own caption = 0.6 (caption3); captions of v0 >= 0.6: caption0 (0.9) -> 2
    assert m["v2t_r1"] == 0.0 and m["v2t_meanr"] == 2.0 and m["v2t_medr"] == 2.0


def test_video_without_caption_is_not_a_query():
    s = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.9]])  # 2 texts, 3 videos (video2: no text)
    m = retrieval_metrics(s, [0, 1])
    assert m["t2v_r1"] == 50.0  # text1: video2 scores higher -> rank 2
    assert m["v2t_r1"] == 100.0  # only videos 0 and 1 are queries


def test_chunking_matches_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(37, 23, generator=g).round(decimals=1)  # rounding creates ties
    owners = torch.randint(0, 23, (37,), generator=g)
    full = retrieval_metrics(s, owners, chunk_size=10_000)
    for chunk in (1, 5, 16):
        assert retrieval_metrics(s, owners, chunk_size=chunk) == full
    # brute-force reference
    sn, on = s.numpy(), owners.numpy()
    t2v = np.array(
        [1 + sum(sn[i, j] >= sn[i, on[i]] for j in range(23) if j != on[i]) for i in range(37)]
    )
    v2t = []
    for j in range(23):
        own = [i for i in range(37) if on[i] == j]
        if not own:
            continue
        best = max(sn[i, j] for i in own)
        v2t.append(1 + sum(sn[i, j] >= best for i in range(37) if on[i] != j))
    assert full["t2v_meanr"] == pytest.approx(t2v.mean())
    assert full["t2v_medr"] == pytest.approx(np.median(t2v))
    assert full["v2t_meanr"] == pytest.approx(np.mean(v2t))
    assert full["v2t_r5"] == pytest.approx((np.array(v2t) <= 5).mean() * 100)


def test_even_count_median_is_mean_of_middle():
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # text0 rank 1, text1 rank 2
    assert retrieval_metrics(s)["t2v_medr"] == 1.5


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="text_to_video has 2"):
        retrieval_metrics(torch.zeros(3, 2), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        retrieval_metrics(torch.zeros(2, 2), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((2, 2), math.nan))


def test_qa_accuracy_and_vqa_score():
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert qa_accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(200 / 3)
    assert qa_accuracy(torch.tensor([1, 1]), torch.tensor([1, -100])) == 50.0
    scores = torch.tensor([[0.0, 1.0, 0.3], [0.6, 0.0, 0.0], [0.0, 0.3, 0.0]])
    assert vqa_score(logits, scores) == pytest.approx((1.0 + 0.6 + 0.0) / 3 * 100)
