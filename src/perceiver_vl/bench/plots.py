"""PNG figures of benchmark rows (matplotlib, Agg backend; no display needed).

- :func:`plot_efficiency`: GFLOPs and latency against frames, one line per (model, dtype).
- :func:`plot_sweep`: latency (and GFLOPs) against any row key, e.g. ``image_size``, ``latents``.
- :func:`plot_retrieval_time`: time to score n x n pairs per retrieval mode.
- :func:`write_plots`: every figure the rows allow, into a directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perceiver_vl.fileio import atomic_savefig
from perceiver_vl.model.streams import StreamMode

# the stream modes the bench times (all n x n pairs)
_SCORED_MODES = (StreamMode.SINGLE, StreamMode.MULTI, StreamMode.MIXED)

Row = dict[str, Any]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row: Row) -> str:
    name = "Perceiver-VL" if row["model"] == "perceiver-vl" else "joint (ViLT-style)"
    if row["model"] == "perceiver-vl" and row.get("cross_attention_layers") not in (
        None,
        [0, 1, 2],
    ):
        name += f" blocks {row['cross_attention_layers']}"
    return f"{name}, {row['dtype']}"


def _series(
    rows: Sequence[Row], x_key: str, y_key: str, group: Callable[[Row], str]
) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.get(y_key) is None or row.get(x_key) is None:
            continue
        series.setdefault(group(row), []).append((row[x_key], row[y_key]))
    return {name: sorted(points) for name, points in series.items()}


def _check(rows: Sequence[Row], path: str | Path, what: str) -> Path:
    if not rows:
        raise ValueError(f"rows is empty: nothing to plot for {what}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plot_sweep(
    rows: Sequence[Row],
    path: str | Path,
    *,
    x_key: str,
    x_label: str | None = None,
    title: str | None = None,
    log_x: bool = True,
) -> Path:
    """Two panels (GFLOPs, median latency with p10-p90 bars) against ``x_key``; one line per
    model and dtype (GFLOPs do not depend on the dtype, so they are drawn once per model)."""
    path = _check(rows, path, x_key)
    plt = _pyplot()
    fig, (ax_flops, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    flops_rows = [r for r in rows if r["dtype"] == rows[0]["dtype"]] or list(rows)
    for name, points in _series(flops_rows, x_key, "gflops", lambda r: _label(r)[:-6]).items():
        xs, ys = zip(*points)
        ax_flops.plot(xs, ys, marker="o", label=name)
    timed = [r for r in rows if r.get("latency_ms_median") is not None]
    groups: dict[str, list[Row]] = {}
    for r in timed:
        groups.setdefault(_label(r), []).append(r)
    for name, group in groups.items():
        group.sort(key=lambda r: r[x_key])
        xs = [r[x_key] for r in group]
        ys = [r["latency_ms_median"] for r in group]
        errors = [
            [r["latency_ms_median"] - r["latency_ms_p10"] for r in group],
            [r["latency_ms_p90"] - r["latency_ms_median"] for r in group],
        ]
        ax_lat.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name)
    for ax, y_label in ((ax_flops, "GFLOPs per call"), (ax_lat, "latency per call (ms)")):
        ax.set_xlabel(x_label or x_key)
        ax.set_ylabel(y_label)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_efficiency(rows: Sequence[Row], path: str | Path, *, title: str | None = None) -> Path:
    """GFLOPs and latency against frames (Perceiver-VL vs the joint baseline) -> ``path`` (PNG).

    ``rows`` are forward rows such as :func:`perceiver_vl.bench.efficiency_rows` returns.
    """
    forward = [r for r in rows if r.get("mode", "forward") == "forward"]
    size = forward[0]["image_size"] if forward else "?"
    length = forward[0].get("text_length", "?") if forward else "?"
    return plot_sweep(
        forward,
        path,
        x_key="frames",
        x_label=f"frames ({size}x{size}, + {length} text tokens)",
        title=title or "Cost against input length (batch 1)",
    )


def plot_retrieval_time(rows: Sequence[Row], path: str | Path, *, title: str | None = None) -> Path:
    """Median time to score all n x n (text, video) pairs against the number of pairs, one line
    per retrieval mode and dtype -> ``path`` (PNG)."""
    stream = [r for r in rows if r.get("mode") in _SCORED_MODES]
    path = _check(stream, path, "retrieval modes")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    series = _series(stream, "pairs", "latency_ms_median", lambda r: f"{r['mode']}, {r['dtype']}")
    for name, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, [y / 1e3 for y in ys], marker="o", label=f"{name}-stream")
    ax.set_xlabel("pairs scored (n texts x n videos)")
    ax.set_ylabel("time (s)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Retrieval scoring time by stream mode")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: Sequence[Row], directory: str | Path) -> list[Path]:
    """Every figure the rows allow -> ``directory`` (created): ``efficiency_frames.png`` (main
    and frames sweep), ``image_size.png``, ``latents.png``, ``blocks.png``, ``streams.png``."""
    directory = Path(directory)
    written: list[Path] = []
    forward = [r for r in rows if r.get("mode", "forward") == "forward"]
    main = [r for r in forward if r.get("sweep") in ("main", "frames") and r["batch"] == 1]
    size = main[0]["image_size"] if main else None
    latents = next((r["latents"] for r in main if r.get("latents") is not None), None)
    by_frames = [
        r
        for r in main
        if r["image_size"] == size
        and r.get("cross_attention_layers") in (None, [0, 1, 2])
        and r.get("latents") in (None, latents)
    ]
    # one row per (model, dtype, frames): prefer the frames sweep's
    unique: dict[tuple, Row] = {}
    for r in by_frames:
        unique.setdefault((r["model"], r["dtype"], r["frames"]), r)
    if len({r["frames"] for r in unique.values()}) > 1:
        written.append(plot_efficiency(list(unique.values()), directory / "efficiency_frames.png"))
    specs = (
        ("image-size", "image_size", "frame side (px), 8 frames", False),
        ("latents", "latents", "latent size N (8 frames)", True),
    )
    for sweep, key, label, log_x in specs:
        chosen = [r for r in forward if r.get("sweep") == sweep]
        if chosen:
            written.append(
                plot_sweep(chosen, directory / f"{key}.png", x_key=key, x_label=label, log_x=log_x)
            )
    blocks = [r for r in forward if r.get("sweep") == "blocks"]
    if blocks:
        written.append(
            plot_sweep(
                blocks,
                directory / "blocks.png",
                x_key="frames",
                x_label="frames (cross-attention blocks kept in the legend)",
            )
        )
    if any(r.get("mode") in _SCORED_MODES for r in rows):
        written.append(plot_retrieval_time(rows, directory / "streams.png"))
    return written


__all__ = ["plot_efficiency", "plot_retrieval_time", "plot_sweep", "write_plots"]
