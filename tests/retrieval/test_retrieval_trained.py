"""With a (tiny, test-time) trained model, a caption in the index finds its own video first."""

from __future__ import annotations

import pytest

from perceiver_vl.retrieval import RetrievalIndex


@pytest.fixture(scope="module")
def trained_index(collection, trained_model_dir, tmp_path_factory) -> RetrievalIndex:
    root, _ = collection
    return RetrievalIndex.build(
        tmp_path_factory.mktemp("trained") / "index",
        trained_model_dir,
        root / "test.jsonl",
        progress=False,
    )


@pytest.mark.parametrize("mode", ["rerank", "multi", "mixed"])
def test_caption_returns_its_video_first(trained_index, collection, mode):
    _, records = collection
    results = trained_index.search([r["caption"] for r in records], k=3, mode=mode)
    firsts = [hits[0].video for hits in results]
    assert firsts == [r["video"] for r in records]


def test_rerank_with_short_shortlist_keeps_the_right_video(trained_index, collection):
    _, records = collection
    for record in records:
        hits = trained_index.search(record["caption"], k=1, mode="rerank", shortlist=2)
        assert hits[0].video == record["video"]
