"""The speed benchmark runs end to end (tiny sizes; timings are not asserted)."""

from __future__ import annotations

import torch
from retrieval_support import TINY

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.retrieval import RetrievalIndex
from perceiver_vl.retrieval.bench import format_result, run_benchmark


def test_benchmark_reports_every_stage(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = run_benchmark(
            num_videos=40,
            config=PerceiverVLConfig(**TINY),
            shortlist=10,
            k=3,
            repeats=2,
            threads=None,
            workdir=tmp_path,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert set(result["median_ms"]) == {
        "encode",
        "shortlist",
        "rerank",
        "rerank_from_latents",
        "total",
    }
    assert result["num_videos"] == 40 and result["model"]["hidden_size"] == 32
    assert "rerank" in format_result(result)
    assert list(tmp_path.iterdir()) == []  # the temporary index is removed


def test_add_latents_then_search(tmp_path):
    torch.manual_seed(0)
    model = PerceiverVL(PerceiverVLConfig(**TINY)).eval()
    index = RetrievalIndex.create(tmp_path / "index", model)
    latents = torch.randn(6, 8, 32)
    index.add_latents([f"v{i}.mp4" for i in range(6)], latents)
    replacement = torch.randn(1, 8, 32)
    index.add_latents(["v2.mp4"], replacement)  # replaces v2 in place
    assert [v["video"] for v in index.videos] == [f"v{i}.mp4" for i in range(6)]
    torch.testing.assert_close(index.latents([2]), replacement.half().float())
    assert len(list((tmp_path / "index").glob("shard-*"))) == 2
    reopened = RetrievalIndex.open(tmp_path / "index", model)
    hits = reopened.search("anything at all", k=6, mode="rerank")
    texts = reopened.encode_texts("anything at all")
    expected = model.mixed_stream_scores(reopened.latents(), texts)[0].sort(descending=True)
    assert [h.position for h in hits] == expected.indices.tolist()
