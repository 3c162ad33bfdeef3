"""Building, reopening, growing and searching an index (tiny random model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from perceiver_vl import PerceiverVL
from perceiver_vl.retrieval import (
    CorruptIndexError,
    ModelMismatchError,
    RetrievalIndex,
    storage,
)


@pytest.fixture
def built(collection, tiny_model_dir, tmp_path) -> RetrievalIndex:
    root, _ = collection
    return RetrievalIndex.build(
        tmp_path / "index", tiny_model_dir, root / "test.jsonl", batch_size=3, progress=False
    )


def test_build_stores_every_video_with_metadata(built, collection, tiny_model_dir):
    root, records = collection
    assert len(built) == len(records)
    assert [v["video"] for v in built.videos] == [r["video"] for r in records]
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert manifest["format"] == storage.FORMAT_NAME
    assert manifest["root"] == str(root.resolve())
    assert manifest["model"]["path"] == str(Path(tiny_model_dir).resolve())
    entry = manifest["videos"][1]
    assert entry["frames"] == 8 and entry["frame_count"] == 8
    assert entry["duration"] == pytest.approx(1.0, abs=0.2)
    assert entry["captions"] == [records[1]["caption"]]
    assert len(entry["sha256"]) == 64 and entry["size"] > 0
    shard = storage.open_shard(built.path / entry["shard"])
    assert shard.latents.dtype == "float16" and shard.latents.shape[1:] == (8, 32)
    assert shard.embeddings.shape[1] == 16


def test_stored_latents_and_embeddings_match_the_model(built, collection):
    from retrieval_support import make_loader

    root, records = collection
    video, mask = make_loader()(root / records[3]["video"], 8, 32)
    with torch.no_grad():
        latents = built.model.encode(video=video[None], video_mask=mask[None])
        embedding = built.model.embed(latents, "visual")
    torch.testing.assert_close(built.latents([3]), latents, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(built.embeddings[3:4], embedding, atol=1e-5, rtol=1e-5)


def test_search_without_the_vocabulary_fails_instead_of_falling_back(built, monkeypatch):
    import perceiver_vl.data.tokenizer as tokenizer_module

    gone = tokenizer_module._DEFAULT_VOCAB.with_name("gone.txt")
    monkeypatch.setattr(tokenizer_module, "_DEFAULT_VOCAB", gone)
    index = RetrievalIndex.open(built.path)
    with pytest.raises(FileNotFoundError, match="gone.txt"):
        index.search("a red square", mode="multi")


def test_rerank_with_full_shortlist_equals_full_mixed_ranking(built, collection):
    _, records = collection
    queries = [r["caption"] for r in records[:3]] + ["a purple triangle spins"]
    everything = len(built)
    reranked = built.search(queries, k=everything, mode="rerank")
    mixed = built.search(queries, k=everything, mode="mixed")
    text_latents = built.encode_texts(queries)
    reference = built.model.mixed_stream_scores(built.latents(), text_latents)
    for q, (a, b) in enumerate(zip(reranked, mixed)):
        assert [h.position for h in a] == [h.position for h in b]
        expected = reference[q].sort(descending=True)
        assert [h.position for h in a] == expected.indices.tolist()
        torch.testing.assert_close(
            torch.tensor([h.score for h in a]), expected.values, atol=1e-5, rtol=1e-5
        )
        assert all(h.multi_score is not None for h in a)
        assert [h.rank for h in a] == list(range(1, everything + 1))


def test_multi_mode_is_the_embedding_dot_product(built):
    hits = built.search("a blue square moves right", k=4, mode="multi")
    text = built.model.embed(built.encode_texts("a blue square moves right"), "text")[0]
    scores = built.embeddings @ text
    expected = scores.topk(4)
    assert [h.position for h in hits] == expected.indices.tolist()
    assert [h.score for h in hits] == pytest.approx(expected.values.tolist(), abs=1e-6)
    assert all(h.mixed_score is None for h in hits)


def test_rerank_reorders_only_the_shortlist(built):
    query = "a green square moves left"
    shortlist = built.search(query, k=3, mode="multi")
    reranked = built.search(query, k=3, mode="rerank", shortlist=3)
    assert {h.position for h in reranked} == {h.position for h in shortlist}
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)


def test_k_larger_than_index_and_query_lists(built):
    single = built.search("a red square moves left", k=100)
    assert len(single) == len(built)
    many = built.search(["a red square", "a blue square"], k=2)
    assert len(many) == 2 and all(len(hits) == 2 for hits in many)
    assert Path(single[0].path).is_file()


@pytest.mark.parametrize("query", ["", "   ", ["fine", ""]])
def test_empty_query_is_rejected(built, query):
    with pytest.raises(ValueError, match="empty"):
        built.search(query)


def test_bad_search_arguments(built):
    with pytest.raises(ValueError, match="mode must be one of"):
        built.search("x", mode="single")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        built.search("x", k=0)


def test_reopen_and_rerun_skip_indexed_videos(built, collection, tiny_model_dir):
    root, records = collection
    before = (built.path / "manifest.json").read_bytes()
    again = RetrievalIndex.build(built.path, tiny_model_dir, root / "test.jsonl", progress=False)
    assert again.last_report is not None
    assert again.last_report.added == [] and len(again.last_report.unchanged) == len(records)
    assert len(again) == len(records)
    assert (
        json.loads(before)["shards"]
        == json.loads((built.path / "manifest.json").read_text())["shards"]
    )
    reopened = RetrievalIndex.open(built.path)  # model from the recorded directory
    assert reopened.search("a red square moves left", k=3) == built.search(
        "a red square moves left", k=3
    )


def test_add_new_and_changed_videos(collection, tiny_model_dir, tmp_path):
    from retrieval_support import COLORS, write_clip

    root, records = collection
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos)
    index = RetrievalIndex.build(
        tmp_path / "index", tiny_model_dir, sorted(videos.glob("*.mp4"))[:5], progress=False
    )
    assert len(index) == 5
    first_shards = {s["file"] for s in index.manifest["shards"]}
    # touched but identical: skipped by checksum
    touched = sorted(videos.glob("*.mp4"))[0]
    os.utime(touched, ns=(1, 1))
    # changed content: re-encoded in place (same position)
    changed = sorted(videos.glob("*.mp4"))[1]
    old_embedding = index.embeddings[1].clone()
    write_clip(changed, COLORS["yellow"], "left", frames=4, seed=99)
    report = index.add(videos, progress=False)
    assert sorted(report.added) == sorted(p.name for p in sorted(videos.glob("*.mp4"))[5:])
    assert report.updated == [changed.name]
    assert touched.name in report.unchanged
    assert len(index) == len(records)
    assert index.videos[1]["video"] == changed.name and index.videos[1]["frames"] == 4
    assert not torch.allclose(index.embeddings[1], old_embedding)
    # the first shard still holds live rows; nothing else is left on disk
    files = {p.name for p in index.path.iterdir() if p.name.startswith("shard-")}
    assert files == {s["file"] for s in index.manifest["shards"]}
    assert first_shards & files
    assert RetrievalIndex.open(index.path).videos == index.videos


def test_small_shards_and_unreadable_videos(collection, tiny_model_dir, tmp_path):
    root, records = collection
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    videos = [root / r["video"] for r in records[:5]] + [bad]
    index = RetrievalIndex.build(
        tmp_path / "index", tiny_model_dir, videos, batch_size=2, shard_size=2, progress=False
    )
    assert len(index) == 5
    assert len(index.manifest["shards"]) == 3
    report = index.last_report
    assert report is not None and len(report.failed) == 1
    assert report.failed[0][0].endswith("broken.mp4") and "Invalid data" in report.failed[0][1]
    assert "unreadable" in report.summary()


def test_killed_run_leaves_previous_index_valid(built, collection, tiny_model_dir, monkeypatch):
    root, records = collection
    manifest_before = (built.path / "manifest.json").read_bytes()
    results_before = built.search("a red square moves left", k=3)
    calls = {"n": 0}
    real = built.video_loader

    def dying_loader(path, frames, size):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # the process is killed mid-run
        return real(path, frames, size)

    extra = root / "videos"
    extra_copy = built.path.parent / "more"
    shutil.copytree(extra, extra_copy)
    index = RetrievalIndex.open(built.path, video_loader=dying_loader)
    with pytest.raises(KeyboardInterrupt):
        index.add(extra_copy, shard_size=100, progress=False)
    assert (built.path / "manifest.json").read_bytes() == manifest_before
    reopened = RetrievalIndex.open(built.path)
    assert reopened.search("a red square moves left", k=3) == results_before


def test_killed_during_shard_write_keeps_committed_shards(collection, tiny_model_dir, tmp_path):
    root, records = collection
    calls = {"n": 0}
    from retrieval_support import make_loader

    real = make_loader()

    def dying_loader(path, frames, size):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(path, frames, size)

    with pytest.raises(KeyboardInterrupt):
        RetrievalIndex.build(
            tmp_path / "index",
            tiny_model_dir,
            root / "test.jsonl",
            shard_size=2,
            video_loader=dying_loader,
            progress=False,
        )
    partial = RetrievalIndex.open(tmp_path / "index")
    assert len(partial) == 4  # two committed shards of two
    resumed = RetrievalIndex.build(
        tmp_path / "index", tiny_model_dir, root / "test.jsonl", progress=False
    )
    assert resumed.last_report is not None
    assert len(resumed.last_report.unchanged) == 4 and len(resumed.last_report.added) == 4
    assert [v["video"] for v in resumed.videos] == [r["video"] for r in records]


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_missing_index_and_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RetrievalIndex.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        RetrievalIndex.open(tmp_path / "empty")


def test_missing_shard(built):
    shard = built.path / built.manifest["shards"][0]["file"]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        RetrievalIndex.open(built.path)


def test_corrupted_shard_fails_checksum_and_is_left_alone(built):
    shard = built.path / built.manifest["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    manifest = (built.path / "manifest.json").read_bytes()
    with pytest.raises(CorruptIndexError, match="checksum"):
        RetrievalIndex.open(built.path)
    assert shard.read_bytes() == bytes(data)
    assert (built.path / "manifest.json").read_bytes() == manifest
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptIndexError, match="truncated"):
        RetrievalIndex.open(built.path, verify=False)


def test_corrupted_manifest(built):
    (built.path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="not valid JSON"):
        RetrievalIndex.open(built.path)


def test_model_mismatch_is_reported_and_index_untouched(built, tiny_model_dir, tmp_path):
    manifest = (built.path / "manifest.json").read_bytes()
    other = PerceiverVL.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        other.matching_head.fc.bias.add_(1.0)
    with pytest.raises(ModelMismatchError, match="different weights"):
        RetrievalIndex.open(built.path, other)
    bigger = PerceiverVL(other.config.replace(num_latents=4))
    with pytest.raises(ModelMismatchError, match="num_latents: index 8 vs model 4"):
        RetrievalIndex.open(built.path, bigger)
    with pytest.raises(ModelMismatchError):
        RetrievalIndex.build(built.path, bigger, built.root / "videos", progress=False)
    assert (built.path / "manifest.json").read_bytes() == manifest


def test_build_refuses_a_non_index_directory(tiny_model_dir, collection, tmp_path):
    root, _ = collection
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty directory"):
        RetrievalIndex.build(tmp_path / "stuff", tiny_model_dir, root / "videos", progress=False)
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "mine"


def test_in_memory_model_needs_to_be_passed_on_open(tiny_model_dir, collection, tmp_path):
    root, records = collection
    model = PerceiverVL.from_pretrained(tiny_model_dir)
    RetrievalIndex.build(tmp_path / "i", model, [root / records[0]["video"]], progress=False)
    with pytest.raises(ValueError, match="pass the model"):
        RetrievalIndex.open(tmp_path / "i")
    assert len(RetrievalIndex.open(tmp_path / "i", model)) == 1


def test_faiss_backend_requires_faiss(built):
    try:
        import faiss  # noqa: F401
    except ImportError:
        index = RetrievalIndex.open(built.path, backend="faiss")
        with pytest.raises(ImportError, match="faiss"):
            index.search("a red square", mode="multi")
    else:  # faiss present: it must agree with the exact search
        exact = RetrievalIndex.open(built.path, backend="exact").search("a red square", k=5)
        fast = RetrievalIndex.open(built.path, backend="faiss").search("a red square", k=5)
        assert [h.position for h in exact] == [h.position for h in fast]


def test_stored_attention_summaries_give_the_mixed_stream_exactly(built, collection):
    _, records = collection
    texts = built.encode_texts([r["caption"] for r in records])
    from_summaries = built.mixed_scores(texts)
    from_latents = built.mixed_scores(texts, from_latents=True)
    pairwise = torch.stack(
        [
            built.model.mixed_stream_logits(built.latents([v]), texts[t : t + 1])[0]
            for t in range(len(records))
            for v in range(len(built))
        ]
    ).view(len(records), len(built))
    torch.testing.assert_close(from_summaries, from_latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_summaries, pairwise, atol=1e-5, rtol=1e-5)
    subset = built.mixed_scores(texts[:2], [5, 0, 3])
    torch.testing.assert_close(subset, from_summaries[:2, [5, 0, 3]])
