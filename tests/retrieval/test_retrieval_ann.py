"""The approximate shortlist: stored and kept in step by writers, used when the index is large,
close to the exact shortlist (the threshold is lowered so that a tiny index counts as large)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("faiss", reason="the approximate shortlist needs faiss-cpu")

from perceiver_vl import PerceiverVL, PerceiverVLConfig  # noqa: E402
from perceiver_vl.retrieval import RetrievalIndex, ann  # noqa: E402
from perceiver_vl.retrieval.index import ANN_PREFIX  # noqa: E402


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(ann, "ANN_MIN_VIDEOS", 200)


def _model() -> PerceiverVL:
    from retrieval_support import TINY

    torch.manual_seed(0)
    return PerceiverVL(PerceiverVLConfig(**TINY)).eval()


def _add(index: RetrievalIndex, start: int, count: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    names = [f"synthetic/{i:05d}.mp4" for i in range(start, start + count)]
    index.add_latents(names, torch.randn(count, 8, 32, generator=g))


def _ann_files(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith(ANN_PREFIX))


def test_writers_store_and_extend_the_codes(small_threshold, tmp_path):
    index = RetrievalIndex.create(tmp_path / "index", _model())
    _add(index, 0, 150, seed=0)
    assert "ann" not in index.manifest and _ann_files(index.path) == []  # small: exact
    assert index.shortlist_backend() in ("exact", "faiss")
    _add(index, 150, 150, seed=1)
    record = index.manifest["ann"]
    assert record["count"] == 300 and _ann_files(index.path) == [record["file"]]
    _add(index, 300, 20, seed=2)
    extended = index.manifest["ann"]
    assert extended["count"] == 320 and _ann_files(index.path) == [extended["file"]]
    reopened = RetrievalIndex.open(index.path, index.model, read_only=True)
    assert reopened.shortlist_backend() == "ann"
    assert reopened._ann_shortlist().count == 320


def test_replaced_rows_rebuild_the_codes(small_threshold, tmp_path):
    index = RetrievalIndex.create(tmp_path / "index", _model())
    _add(index, 0, 300, seed=0)
    _add(index, 0, 10, seed=5)  # re-encoded videos: same positions, new embeddings
    assert index.manifest["ann"]["count"] == 300
    fresh = ann.PQShortlist.build(index.embeddings.numpy())
    stored = index._stored_ann()
    query = index.embeddings[3:4]
    assert stored.search(query, 10, index.embeddings)[1].tolist() == (
        fresh.search(query, 10, index.embeddings)[1].tolist()
    )


def test_approximate_shortlist_is_close_to_exact(small_threshold, tmp_path):
    index = RetrievalIndex.create(tmp_path / "index", _model())
    _add(index, 0, 600, seed=0)
    exact = RetrievalIndex.open(index.path, index.model, backend="exact")
    approx = RetrievalIndex.open(index.path, index.model, backend="auto", read_only=True)
    assert approx.shortlist_backend() == "ann" and exact.shortlist_backend() == "exact"
    g = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    overlap = []
    for q in queries:
        e_scores, e_pos = exact.shortlist(q[None], 10)
        a_scores, a_pos = approx.shortlist(q[None], 10)
        overlap.append(len(set(e_pos.tolist()) & set(a_pos.tolist())) / 10)
        # Scores are exact for what is returned, best first.
        torch.testing.assert_close(a_scores, index.embeddings[a_pos] @ q, atol=1e-5, rtol=1e-5)
        assert (a_scores[:-1] >= a_scores[1:]).all()
    assert sum(overlap) / len(overlap) >= 0.95
    hits = approx.search("a red circle moves left", k=5, mode="rerank", shortlist=50)
    assert len(hits) == 5


def test_ann_backend_builds_in_memory_when_nothing_is_stored(tmp_path):
    index = RetrievalIndex.create(tmp_path / "index", _model())
    _add(index, 0, 64, seed=0)
    forced = RetrievalIndex.open(index.path, index.model, backend="ann", read_only=True)
    assert "ann" not in forced.manifest
    scores, positions = forced.shortlist(index.embeddings[7:8], 5)
    assert positions[0].item() == 7


@pytest.mark.parametrize("backend", ["exact", "faiss", "ann"])
def test_batched_shortlist_equals_one_query_at_a_time(small_threshold, tmp_path, backend):
    index = RetrievalIndex.create(tmp_path / "index", _model())
    _add(index, 0, 300, seed=0)
    opened = RetrievalIndex.open(index.path, index.model, backend=backend, read_only=True)
    g = torch.Generator().manual_seed(2)
    queries = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    scores, positions = opened.shortlist_many(queries, 12)
    assert scores.shape == positions.shape == (5, 12)
    for i, q in enumerate(queries):
        one_scores, one_positions = opened.shortlist(q[None], 12)
        assert positions[i].tolist() == one_positions.tolist()
        torch.testing.assert_close(scores[i], one_scores, atol=1e-5, rtol=1e-5)
