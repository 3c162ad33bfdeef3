"""An index built from the data package's synthetic benchmark."""

from __future__ import annotations

import json

import pytest
import torch

from perceiver_vl.data.synthetic import generate_benchmark
from perceiver_vl.retrieval import RetrievalIndex


@pytest.fixture(scope="module")
def benchmark_index(tiny_model_dir, tmp_path_factory) -> tuple[RetrievalIndex, list[str]]:
    root = tmp_path_factory.mktemp("synthetic")
    generate_benchmark(
        root, num_train=1, num_val=1, num_test=10, frames=(8, 12), size=32, progress=False
    )
    captions = [json.loads(line)["caption"] for line in (root / "test.jsonl").open()]
    index = RetrievalIndex.build(
        tmp_path_factory.mktemp("synthetic_index") / "index",
        tiny_model_dir,
        root / "test.jsonl",
        progress=False,
    )
    return index, captions


def test_benchmark_index_holds_the_test_split(benchmark_index):
    index, captions = benchmark_index
    assert len(index) == len(captions) == 10
    assert [v["captions"] for v in index.videos] == [[c] for c in captions]
    assert all(v["frames"] == 8 for v in index.videos)


def test_rerank_for_k_all_equals_full_mixed_ranking_on_the_benchmark(benchmark_index):
    index, captions = benchmark_index
    everything = len(index)
    hits = index.search(captions, k=everything, mode="rerank", shortlist=everything)
    texts = index.encode_texts(captions)
    reference = index.model.mixed_stream_scores(index.latents(), texts)
    for q, ranked in enumerate(hits):
        expected = reference[q].sort(descending=True)
        assert [h.position for h in ranked] == expected.indices.tolist()
        torch.testing.assert_close(
            torch.tensor([h.score for h in ranked]), expected.values, atol=1e-5, rtol=1e-5
        )
