"""Retrieval index faults: non-finite rows are refused on add and never rank when a damaged
shard is opened without verification; long queries warn; a second build with other
preprocessing is refused; a manifest entry without its keys is named."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from perceiver_vl.data import Tokenizer
from perceiver_vl.retrieval import RetrievalIndex
from perceiver_vl.retrieval.index import _Pending
from perceiver_vl.retrieval.storage import CorruptIndexError


@pytest.fixture
def index(small_model, tmp_path) -> RetrievalIndex:
    index = RetrievalIndex.create(
        tmp_path / "index", small_model, tokenizer=Tokenizer.default(max_length=16)
    )
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 32, generator=generator)
    index.add_latents([f"v{i}.mp4" for i in range(4)], latents)
    return index


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_latents_are_refused_on_add(index, value):
    latents = torch.randn(2, 4, 32)
    latents[1, 2, 3] = value
    with pytest.raises(ValueError, match=r"latents rows \[1\] hold NaN or inf"):
        index.add_latents(["a.mp4", "b.mp4"], latents)
    assert len(index) == 4  # nothing was committed


def _commit_damaged(index: RetrievalIndex, fields: tuple[str, ...]) -> None:
    """A shard whose row holds NaN in ``fields``, committed behind the checks (as a damaged
    copy would be)."""
    arrays = index._shard_arrays(torch.randn(1, 4, 32))
    arrays = {
        name: np.full_like(array, np.nan) if name in fields else array
        for name, array in arrays.items()
    }
    pending = _Pending()
    for name, array in arrays.items():
        pending.arrays[name].append(array)
    pending.entries = [{"video": "broken.mp4"}]
    index._commit(pending)


def _damage(index: RetrievalIndex) -> RetrievalIndex:
    """A NaN row, then the index reopened without verification."""
    _commit_damaged(index, ("latents", "embeddings", "attn_lse", "attn_values"))
    with pytest.warns(UserWarning, match=r"1 videos hold NaN/inf values .*broken.mp4"):
        return RetrievalIndex.open(
            index.path, index.model, tokenizer=Tokenizer.default(16), verify=False
        )


@pytest.mark.parametrize("mode", ["multi", "mixed", "rerank"])
def test_a_nan_row_never_ranks(index, mode):
    damaged = _damage(index)
    assert len(damaged) == 5
    hits = damaged.search("a red square moves left", k=5, mode=mode)
    assert [h.video for h in hits if h.video == "broken.mp4"] == []
    assert len(hits) == 4 and all(np.isfinite(h.score) for h in hits)


@pytest.mark.parametrize("mode", ["mixed", "rerank"])
def test_a_row_with_only_nan_attention_values_never_ranks(index, mode):
    _commit_damaged(index, ("attn_values",))
    reopened = RetrievalIndex.open(index.path, index.model, tokenizer=Tokenizer.default(16))
    hits = reopened.search("a red square moves left", k=5, mode=mode)
    assert "broken.mp4" not in [h.video for h in hits] and len(hits) == 4


def test_a_long_query_is_searched_with_a_warning(index):
    with pytest.warns(UserWarning, match="query 0 .* is longer than the 16 tokens"):
        index.search("word " * 2000, k=2, mode="multi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.search("a short query", k=2, mode="multi")


def test_building_again_with_other_frames_is_refused(index, saved_model, tmp_path):
    with pytest.raises(ValueError, match=r"num_frames=2 differs from the existing index"):
        RetrievalIndex.build(index.path, saved_model, tmp_path / "no-videos", num_frames=2)


def test_a_manifest_entry_without_its_keys_is_named(index):
    path = index.path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["videos"][1]["row"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match=r"videos entry 1 lacks \['row'\]"):
        RetrievalIndex.open(index.path, index.model)
