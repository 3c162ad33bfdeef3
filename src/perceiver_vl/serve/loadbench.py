"""Load benchmark of the search service: concurrent clients, latency percentiles, errors.

    perceiver-vl serve-bench --index INDEX [--clients 16] [--queries 2000] [--max-batch 16]

Starts the service in this process (uvicorn on a free local port, in a background thread) unless
``--url`` names a running one, then runs ``clients`` concurrent HTTP clients (one asyncio task
each, over keep-alive connections) that send ``queries`` search requests in all. Queries are the
index's own captions, cycled (a text-only query set is used when the index has no captions).
Reports the latency percentiles seen by the clients, the throughput, the errors and, for an
in-process server, how many requests each model batch held.

The clients share the machine with the server: on a 2-core box they take some of its CPU, so the
figures are an upper bound of the server's own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time
from typing import Any

FALLBACK_QUERIES = [
    "a red circle moves left",
    "a small blue square moves up then right",
    "a green triangle bounces",
    "a yellow star spins in the middle",
    "a white ball falls from the top",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _InProcessServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread (started / stopped explicitly)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> _InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start (see the log above)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def _run_clients(
    url: str, queries: list[str], *, clients: int, total: int, k: int, mode: str
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    slowest: list[tuple[float, float]] = []  # (latency ms, start s after the first request)
    errors: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for number in counter:
            params = {"q": queries[number % len(queries)], "k": k, "mode": mode}
            start = time.perf_counter()
            try:
                response = await client.get("/api/search", params=params)
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            latencies.append(elapsed)
            slowest.append((elapsed, start - begin))

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        # Warm-up, not timed: one round of `clients` concurrent requests opens every connection
        # and runs the model once at each batch size the run will see first.
        await asyncio.gather(
            *(
                client.get("/api/search", params={"q": queries[i % len(queries)], "k": k})
                for i in range(clients)
            )
        )
        begin = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - begin
    latencies.sort()
    return {
        "clients": clients,
        "queries": total,
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "slowest": [
            {"ms": round(ms, 1), "started_at_s": round(at, 2)}
            for ms, at in sorted(slowest, reverse=True)[:5]
        ],
        "wall_s": round(wall, 2),
        "queries_per_s": round(len(latencies) / wall, 1) if wall > 0 else None,
        "latency_ms": {
            "p50": round(_percentile(latencies, 50), 1),
            "p90": round(_percentile(latencies, 90), 1),
            "p99": round(_percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else None,
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
        },
    }


def run_load(
    url: str,
    queries: list[str],
    *,
    clients: int = 16,
    total: int = 2000,
    k: int = 10,
    mode: str = "rerank",
) -> dict[str, Any]:
    """Send ``total`` searches from ``clients`` concurrent clients to the service at ``url``."""
    if clients <= 0 or total <= 0:
        raise ValueError(f"clients={clients} and queries={total} must be positive")
    if not queries:
        raise ValueError("queries is empty; pass at least one query text")
    return asyncio.run(_run_clients(url, queries, clients=clients, total=total, k=k, mode=mode))


def _captions(index: Any) -> list[str]:
    captions = [c for entry in index.videos for c in (entry.get("captions") or [])]
    return captions or FALLBACK_QUERIES


def run_from_args(args: argparse.Namespace) -> int:
    """``perceiver-vl serve-bench``: see the module docstring."""
    import torch

    result: dict[str, Any] = {"clients": args.clients, "queries": args.queries}
    if args.url:
        result = run_load(
            args.url.rstrip("/"),
            FALLBACK_QUERIES,
            clients=args.clients,
            total=args.queries,
            k=args.k,
            mode=args.mode,
        )
        result["server"] = args.url
    else:
        from .app import create_app
        from .cli import open_service

        service = open_service(args, refresh_interval_s=0.0)
        app = create_app(service)
        with _InProcessServer(app) as server:
            result = run_load(
                server.url,
                _captions(service.index),
                clients=args.clients,
                total=args.queries,
                k=args.k,
                mode=args.mode,
            )
        sizes = app.state.batcher.batch_sizes
        result.update(
            server="in-process",
            index=str(args.index),
            videos=len(service.index),
            mode=args.mode,
            max_batch=args.max_batch,
            torch_threads=torch.get_num_threads(),
            shortlist=service.index.shortlist_backend(),
            batches=len(sizes),
            mean_batch=round(sum(sizes) / len(sizes), 2) if sizes else None,
        )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        ms = result["latency_ms"]
        print(
            f"{result['ok']}/{result['queries']} queries ok, {result['errors']} errors, "
            f"{result['clients']} clients: p50 {ms['p50']} ms, p90 {ms['p90']} ms, "
            f"p99 {ms['p99']} ms, max {ms['max']} ms; {result['queries_per_s']} queries/s"
            + (
                f"; {result['batches']} model batches, mean {result['mean_batch']} queries each"
                if result.get("batches")
                else ""
            )
        )
        for error in result["first_errors"]:
            print(f"  error: {error}")
    return 0 if result["errors"] == 0 else 1
