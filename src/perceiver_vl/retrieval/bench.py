"""How fast one text query is answered over a large index, stage by stage.

    python -m perceiver_vl.retrieval.bench [--videos 10000] [--size small|paper|both] [--threads 2]

Builds a synthetic index of random latents (the search cost does not depend on what the latents
hold) with a randomly initialised model, then times, per query (median over repeats):

- ``encode``: tokenise + one text encoder pass + the text embedding;
- ``shortlist``: the multi-stream dot product over every indexed embedding + top-k;
- ``rerank``: the mixed-stream logits of the shortlisted videos from the stored attention
  summaries (one decoder MLP per candidate) + sort;
- ``rerank_from_latents``: the same from the stored float16 latents with
  ``model.mixed_stream_scores`` (keys/values projected per query), for comparison;
- ``total``: ``index.search(query, k=10, mode="rerank")`` end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig, preset
from perceiver_vl.model.streams import StreamMode

from . import media
from .index import RetrievalIndex

QUERIES = [
    "a red circle moves left",
    "a blue square moves up and to the right",
    "a man is playing a guitar on stage",
    "two green triangles bounce off the walls",
    "a woman is slicing vegetables in a kitchen",
    "a yellow star spins slowly in the middle",
    "cars drive along a busy street at night",
    "a small white ball falls from the top",
]


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.no_grad()
def run_benchmark(
    *,
    num_videos: int = 10_000,
    config: PerceiverVLConfig | None = None,
    shortlist: int = 100,
    k: int = 10,
    repeats: int = 30,
    threads: int | None = 2,
    workdir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a ``num_videos`` index of random latents and time one-query search stages.

    Returns a dict with the setup and the median milliseconds per stage.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = config or preset("small")
    model = PerceiverVL(config).eval()
    tokenizer = media.default_tokenizer(config.max_text_length)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "index"
        start = time.perf_counter()
        index = RetrievalIndex.create(path, model, tokenizer=tokenizer)
        chunk = 1024
        from tqdm.auto import tqdm

        for first in tqdm(
            range(0, num_videos, chunk), desc="synthetic index", unit="shard", disable=not progress
        ):
            n = min(chunk, num_videos - first)
            latents = torch.randn(n, config.num_latents, config.hidden_size)
            index.add_latents([f"synthetic/{first + i:06d}.mp4" for i in range(n)], latents)
        build_s = time.perf_counter() - start
        disk_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        start = time.perf_counter()
        index = RetrievalIndex.open(path, model, tokenizer=tokenizer, verify=True)
        open_verify_s = time.perf_counter() - start
        start = time.perf_counter()
        index = RetrievalIndex.open(path, model, tokenizer=tokenizer, verify=False)
        open_s = time.perf_counter() - start

        queries = iter(QUERIES * (repeats * 4 + 8))
        state: dict[str, Any] = {}

        def encode() -> None:
            state["latents"] = index.encode_texts(next(queries))
            state["embedding"] = model.embed(state["latents"], "text")

        def stage_shortlist() -> None:
            state["positions"] = index.shortlist(state["embedding"], shortlist)[1].tolist()

        def stage_rerank() -> None:
            scores = index.mixed_scores(state["latents"], state["positions"])[0]
            scores.topk(min(k, scores.shape[0]))

        def stage_rerank_latents() -> None:
            scores = index.mixed_scores(state["latents"], state["positions"], from_latents=True)[0]
            scores.topk(min(k, scores.shape[0]))

        def total() -> None:
            index.search(next(queries), k=k, mode=StreamMode.RERANK, shortlist=shortlist)

        for fn in (encode, stage_shortlist, stage_rerank, stage_rerank_latents, total):
            fn()  # warm-up
        stages = {
            "encode": _median_ms(encode, repeats),
            "shortlist": _median_ms(stage_shortlist, repeats),
            "rerank": _median_ms(stage_rerank, repeats),
            "rerank_from_latents": _median_ms(stage_rerank_latents, max(5, repeats // 3)),
            "total": _median_ms(total, repeats),
        }
    return {
        "num_videos": num_videos,
        "shortlist": shortlist,
        "k": k,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "model": {
            "hidden_size": config.hidden_size,
            "num_latents": config.num_latents,
            "num_heads": config.num_heads,
            "num_self_attention_layers": config.num_self_attention_layers,
            "cross_attention_blocks": config.num_cross_attention_blocks,
            "contrastive_dim": config.contrastive_dim,
            "max_text_length": config.max_text_length,
            "parameters_M": round(model.num_parameters() / 1e6, 1),
        },
        "tokenizer": media.DEFAULT_TOKENIZER_NAME,
        "index_build_s": round(build_s, 1),
        "index_disk_MB": round(disk_mb, 1),
        "open_s": round(open_s, 3),
        "open_with_checksums_s": round(open_verify_s, 3),
        "median_ms": {name: round(value, 2) for name, value in stages.items()},
    }


def format_result(result: dict[str, Any]) -> str:
    """A few human-readable lines for one :func:`run_benchmark` result."""
    m = result["model"]
    ms = result["median_ms"]
    return "\n".join(
        [
            f"model D={m['hidden_size']} N={m['num_latents']} layers={m['num_self_attention_layers']} "
            f"({m['parameters_M']}M params), {result['num_videos']} videos, "
            f"{result['threads']} threads, shortlist {result['shortlist']}, k {result['k']}",
            f"  index: {result['index_disk_MB']} MB on disk, open {result['open_s']} s "
            f"({result['open_with_checksums_s']} s with checksums)",
            f"  encode {ms['encode']:.2f} ms | shortlist {ms['shortlist']:.2f} ms | "
            f"rerank {ms['rerank']:.2f} ms (from latents: {ms['rerank_from_latents']:.2f} ms) | "
            f"total {ms['total']:.2f} ms",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perceiver_vl.retrieval.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--videos", type=int, default=10_000, help="index size (default 10000)")
    parser.add_argument(
        "--size",
        choices=("small", "paper", "both"),
        default="small",
        help="model preset: small (D=256, N=64, 4 layers) or paper (D=768, N=128, 12 layers)",
    )
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the temporary index is written")
    parser.add_argument("--json", action="store_true", help="print JSON results")
    args = parser.parse_args(argv)
    sizes = ("small", "paper") if args.size == "both" else (args.size,)
    results = []
    for size in sizes:
        config = preset(size, max_frames=8) if size == "paper" else preset(size)
        result = run_benchmark(
            num_videos=args.videos,
            config=config,
            shortlist=args.shortlist,
            k=args.k,
            repeats=args.repeats,
            threads=args.threads,
            workdir=args.workdir,
            progress=sys.stderr.isatty(),
        )
        result["size"] = size
        results.append(result)
        if not args.json:
            print(format_result(result), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
