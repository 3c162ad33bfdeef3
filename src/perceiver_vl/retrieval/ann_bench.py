"""The approximate shortlist on a large synthetic index: recall against exact, time, memory.

    python -m perceiver_vl.retrieval.ann_bench [--videos 1000000] [--queries 200] [--threads 1]
    python -m perceiver_vl.retrieval.ann_bench --compare [--videos 100000]

Builds an index of ``videos`` random latents with a randomly initialised model of the demo's width
(D=256, 4 heads, embedding size 256) but 8 latents per video instead of 64, so that the stored
float16 latents take 4 GB instead of 32 GB; the shortlist reads only the embeddings and the
re-rank only the stored attention summaries, neither of which depends on the latent count.
Writers keep the approximate-shortlist codes in step while adding (timed as part of the build),
and the codes are also built once from scratch (timed alone). Then, for ``queries`` text queries
(random token ids through the text encoder, so that queries come from the text side like real
ones):

- ``recall@100``: the approximate shortlist of 100 against the exact one (torch mat-vec);
- the median milliseconds of each shortlist, one query at a time and per query in batches of 16
  (what the server does under load), and of ``search(q, k=10, mode="rerank")`` end to end
  (tokenise + text encoder + shortlist + re-rank of 100) with each backend;
- the memory of the codes, of the float32 embeddings and the process's peak resident set.

``--compare`` measures the candidates the shortlist was chosen from on the same kind of
embeddings, without building an index: graph search (faiss HNSW; usearch HNSW when installed),
inverted lists (faiss IVF), and exhaustive scans of product-quantisation codes of several sizes
with an exact re-score, each at a few search-effort settings.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.model import PerceiverVL, preset
from perceiver_vl.model.streams import StreamMode

from . import ann, media
from .index import RetrievalIndex


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 2)


@torch.no_grad()
def run_ann_benchmark(
    *,
    num_videos: int = 1_000_000,
    num_queries: int = 200,
    chunk: int = 65_536,
    threads: int | None = 1,
    workdir: str | Path | None = None,
    keep: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the synthetic index and measure; returns a JSON-able dict (see the module doc).

    ``keep``: build the index there and keep it (a later run with the same ``keep`` reuses it
    and only measures); default a temporary directory, removed at the end.
    """
    if threads is not None:
        torch.set_num_threads(threads)
        import faiss

        faiss.omp_set_num_threads(threads)
    torch.manual_seed(seed)
    config = preset("small", num_latents=8)
    model = PerceiverVL(config).eval()
    tokenizer = media.default_tokenizer(config.max_text_length)
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(keep) if keep is not None else Path(tmp) / "index"
        build_s = None
        if (path / "manifest.json").is_file():
            index = RetrievalIndex.open(path, model, tokenizer=tokenizer, verify=False)
            if len(index) != num_videos:
                raise ValueError(
                    f"--keep {str(path)!r} holds {len(index)} videos, not {num_videos}; "
                    f"remove it or pass --videos {len(index)}"
                )
        else:
            index = RetrievalIndex.create(path, model, tokenizer=tokenizer)
            start = time.perf_counter()
            chunks = range(0, num_videos, chunk)
            for first in tqdm(chunks, desc="synthetic index", disable=not progress):
                n = min(chunk, num_videos - first)
                latents = torch.randn(n, config.num_latents, config.hidden_size)
                index.add_latents([f"synthetic/{first + i:07d}.mp4" for i in range(n)], latents)
            build_s = time.perf_counter() - start
        disk = {f.name: f.stat().st_size for f in path.iterdir()}
        embeddings = index.embeddings.numpy()
        start = time.perf_counter()
        codes = ann.PQShortlist.build(embeddings)
        codes_build_s = time.perf_counter() - start

        exact = RetrievalIndex.open(
            path, model, tokenizer=tokenizer, verify=False, backend="exact", read_only=True
        )
        start = time.perf_counter()
        approx = RetrievalIndex.open(
            path, model, tokenizer=tokenizer, verify=False, backend="auto", read_only=True
        )
        backend = approx.prepare_shortlist()
        open_s = time.perf_counter() - start

        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(1000, 30000, (num_queries, 12), generator=g)
        ids[:, 0] = 101
        queries = model.embed(model.encode(text_ids=ids), "text").float()
        times: dict[str, list[float]] = {"ann": [], "exact": []}
        recalls = []
        for q in queries:
            q = q[None]
            found = {}
            for name, idx in (("ann", approx), ("exact", exact)):
                begin = time.perf_counter()
                found[name] = idx.shortlist(q, 100)[1]
                times[name].append(time.perf_counter() - begin)
            recalls.append(len(set(found["ann"].tolist()) & set(found["exact"].tolist())) / 100)
        batched: dict[str, list[float]] = {"ann": [], "exact": []}
        for first in range(0, len(queries) - 15, 16):
            block = queries[first : first + 16]
            for name, idx in (("ann", approx), ("exact", exact)):
                begin = time.perf_counter()
                idx.shortlist_many(block, 100)
                batched[name].append((time.perf_counter() - begin) / len(block))

        from .bench import QUERIES

        texts = [QUERIES[i % len(QUERIES)] for i in range(max(20, num_queries // 4))]
        end_to_end: dict[str, list[float]] = {"ann": [], "exact": []}
        for name, idx in (("ann", approx), ("exact", exact)):
            idx.search(texts[0], k=10, mode=StreamMode.RERANK)  # warm-up
            for text in texts:
                begin = time.perf_counter()
                idx.search(text, k=10, mode=StreamMode.RERANK)
                end_to_end[name].append(time.perf_counter() - begin)
    return {
        "num_videos": num_videos,
        "num_queries": num_queries,
        "threads": torch.get_num_threads(),
        "embedding_dim": config.contrastive_dim,
        "tokenizer": media.DEFAULT_TOKENIZER_NAME,
        "backend_chosen_by_auto": backend,
        "ann": ann.FACTORY_DESCRIPTION,
        "candidate_factor": ann.DEFAULT_CANDIDATE_FACTOR,
        "recall_at_100": round(statistics.fmean(recalls), 4),
        "recall_at_100_min": round(min(recalls), 2),
        "shortlist_ms": {name: _median_ms(t) for name, t in times.items()},
        "shortlist_batched16_ms_per_query": {name: _median_ms(t) for name, t in batched.items()},
        "shortlist_p99_ms": {
            name: round(sorted(t)[int(0.99 * (len(t) - 1))] * 1000, 2) for name, t in times.items()
        },
        "search_rerank_k10_ms": {name: _median_ms(t) for name, t in end_to_end.items()},
        "index_build_s": None if build_s is None else round(build_s, 1),
        "codes_build_s": round(codes_build_s, 1),
        "open_read_only_s": round(open_s, 2),
        "codes_MB": round(codes.memory_bytes() / 2**20, 1),
        "codes_file_MB": round(sum(v for k, v in disk.items() if k.startswith("ann-")) / 2**20, 1),
        "embeddings_MB": round(embeddings.nbytes / 2**20, 1),
        "index_disk_GB": round(sum(disk.values()) / 2**30, 2),
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def synthetic_embeddings(
    num_videos: int, num_queries: int, *, seed: int = 0, chunk: int = 65_536
) -> tuple[Any, Any]:
    """(video embeddings (V, E), query embeddings (Q, E)) as float32 numpy arrays, made like
    :func:`run_ann_benchmark`'s: random latents / random token ids through a random model."""
    import numpy as np

    torch.manual_seed(seed)
    config = preset("small", num_latents=8)
    model = PerceiverVL(config).eval()
    with torch.no_grad():
        parts = []
        for first in range(0, num_videos, chunk):
            n = min(chunk, num_videos - first)
            latents = torch.randn(n, config.num_latents, config.hidden_size)
            parts.append(model.embed(latents, "visual").numpy())
        g = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(1000, 30000, (num_queries, 12), generator=g)
        ids[:, 0] = 101
        queries = model.embed(model.encode(text_ids=ids), "text").numpy()
    return np.ascontiguousarray(np.concatenate(parts)), np.ascontiguousarray(queries)


def compare_candidates(
    num_videos: int = 100_000, num_queries: int = 200, *, width: int = 100, threads: int = 1
) -> list[dict[str, Any]]:
    """Recall@``width`` against exact and median ms per query of each candidate structure."""
    import faiss
    import numpy as np

    data, queries = synthetic_embeddings(num_videos, num_queries)
    exact = np.argpartition(-(queries @ data.T), width, axis=1)[:, :width]
    dim = data.shape[1]
    rows: list[dict[str, Any]] = []

    def measure(name: str, setting: str, build_s: float, search) -> None:
        found, times = [], []
        for q in queries:
            begin = time.perf_counter()
            found.append(search(q[None]))
            times.append(time.perf_counter() - begin)
        recall = statistics.fmean(
            len(set(f.tolist()) & set(e.tolist())) / width for f, e in zip(found, exact)
        )
        rows.append(
            {
                "structure": name,
                "setting": setting,
                "build_s": round(build_s, 1),
                f"recall_at_{width}": round(recall, 4),
                "ms_per_query": _median_ms(times),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    def timed(build) -> tuple[Any, float]:
        faiss.omp_set_num_threads(threads)
        begin = time.perf_counter()
        out = build()
        return out, time.perf_counter() - begin

    def hnsw():
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128
        index.add(data)
        return index

    index, build_s = timed(hnsw)
    for ef in (128, 256, 512):
        index.hnsw.efSearch = ef
        measure(
            "faiss HNSW M=16", f"efSearch={ef}", build_s, lambda q: index.search(q, width)[1][0]
        )
    try:
        from usearch.index import Index
    except ImportError:
        Index = None
    if Index is not None:

        def usearch_index():
            index = Index(ndim=dim, metric="ip", connectivity=16, expansion_add=128)
            index.add(np.arange(len(data)), data, threads=2)
            return index

        uindex, build_s = timed(usearch_index)
        for ef in (128, 256, 512):
            uindex.expansion_search = ef
            measure(
                "usearch HNSW M=16",
                f"expansion={ef}",
                build_s,
                lambda q: uindex.search(q[0], width, threads=1).keys.astype(np.int64),
            )
    nlist = int(4 * num_videos**0.5)

    def ivf():
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data[: min(len(data), 64 * nlist)])
        index.add(data)
        return index

    ivf_index, build_s = timed(ivf)
    for nprobe in (16, 64, 128):
        ivf_index.nprobe = nprobe
        measure(
            f"faiss IVF-Flat nlist={nlist}",
            f"nprobe={nprobe}",
            build_s,
            lambda q: ivf_index.search(q, width)[1][0],
        )
    embeddings = torch.from_numpy(data)
    for subquantizers in (dim // 8, dim // 4, dim // 2):

        def pq(m=subquantizers):
            index = faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)
            index.train(data[: ann.TRAIN_SAMPLE])
            index.add(data)
            return ann.PQShortlist(index, len(data))

        shortlist, build_s = timed(pq)
        for factor in (10, 20, 40):
            shortlist.candidate_factor = factor
            measure(
                f"PQ fast scan {subquantizers}x4 bit + exact re-score",
                f"candidates={factor}x{width}",
                build_s,
                lambda q, s=shortlist: s.search(torch.from_numpy(q), width, embeddings)[1].numpy(),
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perceiver_vl.retrieval.ann_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the temporary index is written")
    parser.add_argument(
        "--keep", default=None, help="build the index in this directory and keep it (reused)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="compare candidate structures (no index is built)"
    )
    args = parser.parse_args(argv)
    if args.compare:
        compare_candidates(args.videos, args.queries, threads=args.threads)
        return 0
    result = run_ann_benchmark(
        num_videos=args.videos,
        num_queries=args.queries,
        threads=args.threads,
        workdir=args.workdir,
        keep=args.keep,
        progress=sys.stderr.isatty(),
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
