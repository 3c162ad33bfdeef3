"""The service without HTTP: read-only index, refresh after another process adds videos,
batched search equal to one-by-one search."""

from __future__ import annotations

import shutil

import pytest
import torch

from perceiver_vl.retrieval import RetrievalIndex
from perceiver_vl.serve import SearchRequest, SearchService, ServeSettings


@pytest.fixture
def index_copy(serve_index_dir, tmp_path):
    path = tmp_path / "index"
    shutil.copytree(serve_index_dir, path)
    return path


def test_service_refuses_a_writable_index(index_copy):
    with pytest.raises(ValueError, match="read-only"):
        SearchService(RetrievalIndex.open(index_copy))


def test_read_only_index_never_writes(index_copy, serve_collection):
    root, _ = serve_collection
    before = sorted(p.name for p in index_copy.iterdir())
    service = SearchService.open(index_copy, settings=ServeSettings(refresh_interval_s=0))
    service.search(SearchRequest("a red square moves left"))
    with pytest.raises(RuntimeError, match="read-only"):
        service.index.add(root / "test.jsonl")
    with pytest.raises(RuntimeError, match="read-only"):
        service.index.add_latents(["x.mp4"], torch.zeros(1, 8, 32))
    assert sorted(p.name for p in index_copy.iterdir()) == before


def test_refresh_swaps_in_videos_added_by_another_writer(index_copy):
    service = SearchService.open(index_copy, settings=ServeSettings(refresh_interval_s=0))
    old = service.index
    assert service.maybe_refresh() is False  # nothing changed
    writer = RetrievalIndex.open(index_copy)
    torch.manual_seed(0)
    writer.add_latents(["extra/a.mp4", "extra/b.mp4"], torch.randn(2, 8, 32))
    assert len(old) == 8  # a running search keeps the state it started with
    assert service.maybe_refresh() is True
    assert len(service.index) == 10 and service.generation == 1
    assert service.index.model is old.model  # shared, not reloaded or copied
    assert service.index.read_only
    page = service.search(SearchRequest("a red square moves left", k=10))
    assert page.total_videos == 10 and page.generation == 1


def test_refresh_keeps_the_served_state_when_a_shard_is_missing(index_copy):
    service = SearchService.open(index_copy, settings=ServeSettings(refresh_interval_s=0))
    writer = RetrievalIndex.open(index_copy)
    writer.add_latents(["extra/a.mp4"], torch.randn(1, 8, 32))
    newest = writer.manifest["shards"][-1]["file"]
    (index_copy / newest).unlink()  # as if a writer removed it between manifest and shard reads
    assert service.maybe_refresh() is False
    assert "missing" in service.refresh_error
    assert len(service.index) == 8
    page = service.search(SearchRequest("a blue square moves right"))
    assert page.total_videos == 8


def test_a_batch_equals_one_by_one_and_isolates_bad_requests(serve_index_dir, serve_collection):
    _, records = serve_collection
    service = SearchService.open(serve_index_dir, settings=ServeSettings(refresh_interval_s=0))
    requests = [
        SearchRequest(records[0]["caption"], k=3, mode="rerank"),
        SearchRequest(records[1]["caption"], k=2, offset=1, mode="multi"),
        SearchRequest("", k=3),
        SearchRequest(records[2]["caption"], k=4, mode="mixed", blocks=(0,)),
        SearchRequest(records[3]["caption"], k=3, mode="rerank", shortlist=2),
    ]
    batch = service.search_batch(requests)
    assert isinstance(batch[2], ValueError)
    for request, page in zip(requests, batch):
        if isinstance(page, Exception):
            continue
        alone = service.search(request)
        assert page.batch_size == (3 if request.blocks is None else 1)
        assert [h["id"] for h in page.hits] == [h["id"] for h in alone.hits]
        torch.testing.assert_close(
            torch.tensor([h["score"] for h in page.hits]),
            torch.tensor([h["score"] for h in alone.hits]),
            atol=1e-5,
            rtol=1e-5,
        )
    assert batch[0].hits[0]["video"] == records[0]["video"]
    assert [h["rank"] for h in batch[1].hits] == [2, 3]
