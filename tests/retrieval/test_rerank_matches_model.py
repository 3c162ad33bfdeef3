"""The index's re-rank score is the model's mixed-stream score (one implementation of the rule)."""

from __future__ import annotations

import pytest
import torch

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model.streams import StreamMode
from perceiver_vl.retrieval import RetrievalIndex
from perceiver_vl.retrieval.rerank import attention_summary, mixed_scores_from_summaries


def _tiny_model(residual: str) -> PerceiverVL:
    torch.manual_seed(3)
    config = PerceiverVLConfig(
        hidden_size=32,
        num_heads=4,
        num_self_attention_layers=2,
        cross_attention_before_layers=(0,),
        num_latents=6,
        patch_size=8,
        image_size=16,
        max_frames=3,
        max_text_length=8,
        vocab_size=60,
        contrastive_dim=8,
        cross_attention_residual=residual,
    )
    return PerceiverVL(config).eval()


def _latents(model: PerceiverVL, videos: int, texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    video = torch.rand(videos, 3, 3, 16, 16, generator=g) * 2 - 1
    video_mask = torch.ones(videos, 3, dtype=torch.bool)
    video_mask[1, 2:] = False
    ids = torch.randint(1, 60, (texts, 8), generator=g)
    mask = torch.ones(texts, 8, dtype=torch.bool)
    mask[0, 5:] = False
    with torch.no_grad():
        visual = model.encode(video=video, video_mask=video_mask)
        text = model.encode(text_ids=ids, text_mask=mask)
    return visual, text


@pytest.mark.parametrize("residual", ["normalized", "standard"])
def test_summary_rerank_equals_mixed_stream_scores_and_logits(residual):
    model = _tiny_model(residual)
    visual, text = _latents(model, videos=7, texts=5)
    with torch.no_grad():
        reranked = mixed_scores_from_summaries(
            model, attention_summary(model, visual), attention_summary(model, text), chunk_size=9
        )
        scores = model.mixed_stream_scores(visual, text)
        # the rule's definition: the decoder [CLS] query over concat(z_V, z_T), pair by pair
        t_idx, v_idx = torch.cartesian_prod(torch.arange(5), torch.arange(7)).unbind(1)
        logits = model.mixed_stream_logits(visual[v_idx], text[t_idx]).view(5, 7)
    assert reranked.shape == scores.shape == (5, 7)
    torch.testing.assert_close(reranked, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reranked, logits, atol=1e-5, rtol=1e-5)
    # the scores are not all alike: the test would notice a rule that ignores an input
    assert float(logits.std()) > 1e-3


def test_index_rerank_scores_equal_the_models_mixed_stream(tmp_path):
    model = _tiny_model("normalized")
    visual, text = _latents(model, videos=6, texts=4)
    index = RetrievalIndex.create(tmp_path / "index", model, num_frames=3, image_size=16)
    index.add_latents([f"v{i}.mp4" for i in range(6)], visual)
    hits = index.search_encoded(text, k=6, mode=StreamMode.RERANK, shortlist=6)
    with torch.no_grad():
        # the index holds float16 latents: the model scores exactly what it stores
        expected = model.mixed_stream_scores(index.latents(), text)
    for query, ranked in enumerate(hits):
        assert sorted(h.position for h in ranked) == list(range(6))
        got = torch.tensor([h.score for h in ranked])
        want = expected[query, [h.position for h in ranked]]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert got.tolist() == sorted(got.tolist(), reverse=True)
