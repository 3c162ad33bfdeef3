"""The paper's analyses (§4.1, §5.2, Fig. 4-6, Table 3), each a function writing JSON + Markdown
+ PNG. By default they run on the built-in synthetic benchmark; ``data_root`` points them at any
folder with ``train.jsonl`` / ``test.jsonl`` in the generic caption format (see docs/data.md).

Trained studies fine-tune small models from scratch with the demo's retrieval recipe
(contrastive + mixed-stream hard negatives) and report mixed-stream text-to-video R@1 on the
test split, so that they finish on a CPU; the paper pretrains first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.bench.measure import pair_latency_ms
from perceiver_vl.demo.pipeline import machine_description
from perceiver_vl.demo.recipe import (
    DemoSettings,
    finetune_model,
    prepare_test_data,
    prepare_training_data,
)
from perceiver_vl.fileio import atomic_savefig, atomic_write_json, atomic_write_text
from perceiver_vl.model import PerceiverVL, preset
from perceiver_vl.model.streams import STREAM_MODES, StreamMode

STUDIES = ("latent-size", "input-size", "cross-attention", "streams")


def study_settings(quick: bool) -> DemoSettings:
    """The demo's model preset and data with the studies' own retrieval recipe: each model
    trains from scratch with multi-stream contrastive + mixed-stream hard negatives, without the
    demo's frame-difference input and wide position initialisation, and with the linear layers
    initialised at a fixed std of 0.02: the settings docs/analyses.md's study results were
    produced with, so that a rerun reproduces them."""
    settings = DemoSettings.quick() if quick else DemoSettings.full()
    model = dict(
        settings.model,
        frame_difference=False,
        visual_position_init_std=0.02,
        initializer_range=0.02,
    )
    return dataclasses.replace(
        settings,
        num_train=settings.num_train if quick else 2000,
        finetune_steps=settings.finetune_steps if quick else 400,
        finetune_objectives=("contrastive", "retrieval"),
        retrieval_streams=("mixed",),
        mixed_stream_negatives=7,
        hard_negative_fraction=1.0,
        retrieval_directions=("t2v", "v2t"),
        finetune_layerdrop=model["layerdrop"],
        model=model,
    )


def _write(
    out: Path, name: str, rows: list[dict[str, Any]], markdown: str, meta: dict[str, Any]
) -> None:
    atomic_write_json(out / f"{name}.json", {"rows": rows, **meta}, indent=2, default=str)
    atomic_write_text(out / f"{name}.md", markdown + "\n")


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _data(out: Path, settings: DemoSettings, data_root: Path | None, seed: int, progress: bool):
    root = data_root or out / "data"
    datamodule = prepare_training_data(
        root, settings, seed=seed, progress=progress, generate=data_root is None
    )
    data, _ = prepare_test_data(root, settings, progress=progress)
    return datamodule, data


def _r1(model: PerceiverVL, data: Any, precision: str, *, blocks: Any = None) -> dict[str, float]:
    """Multi- and mixed-stream R@1 (both directions) as flat ``{mode}_{t2v|v2t}_r1`` keys."""
    from perceiver_vl.evaluation import evaluate_retrieval

    res = evaluate_retrieval(
        model,
        data,
        modes=(StreamMode.MULTI, StreamMode.MIXED),
        cross_attention_layers=blocks,
        precision=precision,
    )
    return {
        f"{mode}_{direction}_r1": res[mode][f"{direction}_r1"]
        for mode in (StreamMode.MULTI, StreamMode.MIXED)
        for direction in ("t2v", "v2t")
    }


_R1_COLUMNS = [
    ("multi_t2v_r1", "multi t2v R@1"),
    ("multi_v2t_r1", "multi v2t R@1"),
    ("mixed_t2v_r1", "mixed t2v R@1"),
    ("mixed_v2t_r1", "mixed v2t R@1"),
]


# ----------------------------------------------------------------------------------------------
def latent_size(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    data_root: Path | None = None,
    progress: bool = True,
    latents: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Fig. 5: GFLOPs and R@1 against the number of latents N."""
    from perceiver_vl.flops import count_flops

    settings = study_settings(quick)
    latents = tuple(latents or ((8, 16) if quick else (32, 64, 128, 256)))
    datamodule, data = _data(out, settings, data_root, seed, progress)
    rows = []
    for n in latents:
        log(f"latent-size: N={n}")
        model, _ = finetune_model(
            None,
            datamodule,
            settings,
            out / "runs",
            seed=seed,
            progress=progress,
            model_overrides={"num_latents": n},
            stage=f"latents-{n}",
        )
        res = _r1(model, data, settings.resolved_precision())
        visual = data.visual(slice(0, 1))
        flops = count_flops(
            model, **visual, text_ids=data.text_ids[:1], text_mask=data.text_mask[:1]
        )
        paper = None
        if not quick:  # the paper's input (8 frames 384^2 + 40 tokens) at this N
            big = PerceiverVL(preset("paper", num_latents=n)).eval()
            paper = (
                count_flops(
                    big,
                    video=torch.zeros(1, 8, 3, 384, 384),
                    text_ids=torch.ones(1, 40, dtype=torch.long),
                )
                / 1e9
            )
        rows.append(
            {
                "latents": n,
                **res,
                "gflops": flops / 1e9,
                "gflops_paper_input": paper,
            }
        )
    _write(
        out,
        "latent_size",
        rows,
        "# Latent size (Fig. 5)\n\n"
        + _table(
            rows,
            [
                ("latents", "N"),
                *_R1_COLUMNS,
                ("gflops", "GFLOPs (this input)"),
                ("gflops_paper_input", "GFLOPs (8x384² + 40 tokens)"),
            ],
        ),
        {"study": "latent-size", "quick": quick, "seed": seed, "machine": machine_description()},
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, style, label in (("mixed_t2v_r1", "-", "mixed"), ("multi_t2v_r1", "--", "multi")):
        ax.plot(
            [r["latents"] for r in rows],
            [r[key] for r in rows],
            style,
            marker="o",
            color="C0",
            label=f"{label}-stream t2v R@1",
        )
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("latents N")
    ax.set_ylabel("t2v R@1 (%)", color="C0")
    ax.set_xscale("log", base=2)
    ax2 = ax.twinx()
    ax2.plot([r["latents"] for r in rows], [r["gflops"] for r in rows], marker="s", color="C1")
    ax2.set_ylabel("GFLOPs per pair", color="C1")
    ax.set_title("Latent size: accuracy and cost")
    _save(plt, fig, out / "latent_size.png")
    return rows


def input_size(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **_: Any,
) -> list[dict[str, Any]]:
    """Fig. 4: GFLOPs and latency against frames and frame size, Perceiver-VL vs the joint
    transformer (paper-size models, fp32, batch 1)."""
    from perceiver_vl.bench import BenchCase, BenchSettings, run_benchmark

    frames = (1, 2, 4) if quick else (1, 2, 4, 8, 16, 32)
    sizes = (32, 64) if quick else (224, 288, 384)
    base_size = 64 if quick else 384
    cases = [
        BenchCase(model=m, frames=t, image_size=base_size, sweep="frames")
        for m in ("perceiver-vl", "joint")
        for t in frames
    ]
    cases += [
        BenchCase(model=m, frames=1 if quick else 8, image_size=s, sweep="size")
        for m in ("perceiver-vl", "joint")
        for s in sizes
    ]
    bench = BenchSettings(
        warmup=1,
        min_repeats=1,
        max_repeats=2 if quick else 3,
        budget_s=2.0,
        memory=False,
        max_forward_s=60.0,
        matmul_size=1024 if quick else 2048,
        seed=seed,
    )
    rows = run_benchmark(cases, settings=bench, progress=log if progress else None)
    cols = [
        ("model", "model"),
        ("frames", "frames"),
        ("image_size", "size"),
        ("gflops", "GFLOPs"),
        ("latency_ms_median", "latency (ms)"),
    ]
    _write(
        out,
        "input_size",
        rows,
        "# Input size (Fig. 4)\n\n## Frames\n\n"
        + _table([r for r in rows if r["sweep"] == "frames"], cols)
        + "\n\n## Frame size\n\n"
        + _table([r for r in rows if r["sweep"] == "size"], cols),
        {"study": "input-size", "quick": quick, "machine": machine_description()},
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sweep, key, ax in (("frames", "frames", axes[0]), ("size", "image_size", axes[1])):
        for model in ("perceiver-vl", "joint"):
            pts = sorted(
                (r[key], r["gflops"]) for r in rows if r["sweep"] == sweep and r["model"] == model
            )
            ax.plot(*zip(*pts), marker="o", label=f"{model} GFLOPs")
        ax.set_xlabel(key)
        ax.set_ylabel("GFLOPs")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Cost against input size")
    _save(plt, fig, out / "input_size.png")
    return rows


def cross_attention(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    data_root: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Table 3: R@1 and latency with 1..k cross-attention blocks at inference, for models
    trained with and without LayerDrop."""
    settings = study_settings(quick)
    datamodule, data = _data(out, settings, data_root, seed, progress)
    rows = []
    for layerdrop in (0.5, 0.0):
        log(f"cross-attention: training with LayerDrop {layerdrop}")
        model, _ = finetune_model(
            None,
            datamodule,
            settings,
            out / "runs",
            seed=seed,
            progress=progress,
            model_overrides={"layerdrop": layerdrop},
            stage=f"layerdrop-{layerdrop}",
        )
        k = model.config.num_cross_attention_blocks
        for used in range(1, k + 1):
            blocks = list(range(used))
            rows.append(
                {
                    "trained_layerdrop": layerdrop,
                    "blocks": str(blocks),
                    **_r1(model, data, settings.resolved_precision(), blocks=blocks),
                    "latency_ms": pair_latency_ms(
                        model,
                        data,
                        blocks,
                        5 if quick else 20,
                        precision=settings.resolved_precision(),
                    ),
                }
            )
    _write(
        out,
        "cross_attention",
        rows,
        "# Cross-attention blocks at inference (Table 3)\n\n"
        + _table(
            rows,
            [
                ("trained_layerdrop", "LayerDrop in training"),
                ("blocks", "blocks run"),
                *_R1_COLUMNS,
                ("latency_ms", "latency per pair (ms)"),
            ],
        ),
        {
            "study": "cross-attention",
            "quick": quick,
            "seed": seed,
            "machine": machine_description(),
        },
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for color, layerdrop in (("C0", 0.5), ("C1", 0.0)):
        for key, style in (("mixed_t2v_r1", "-"), ("multi_t2v_r1", "--")):
            pts = [(r["latency_ms"], r[key]) for r in rows if r["trained_layerdrop"] == layerdrop]
            mode = key.split("_")[0]
            ax.plot(
                *zip(*pts),
                style,
                marker="o",
                color=color,
                label=f"{mode}, trained with LayerDrop {layerdrop}",
            )
    ax.set_xlabel("latency per pair, mixed stream (ms)")
    ax.set_ylabel("t2v R@1 (%)")
    ax.set_title("Cross-attention blocks kept at inference")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, out / "cross_attention.png")
    return rows


def streams(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    data_root: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Fig. 6: R@1 and total retrieval time against the number of pairs per stream mode."""
    from perceiver_vl.evaluation import evaluate_retrieval

    settings = study_settings(quick)
    datamodule, data = _data(out, settings, data_root, seed, progress)
    model, _ = finetune_model(
        None, datamodule, settings, out / "runs", seed=seed, progress=progress, stage="streams"
    )
    total = data.text_ids.shape[0]
    sizes = sorted({s for s in (*settings.curve_sizes, total) if s <= total})
    rows = []
    for n in sizes:
        log(f"streams: {n} x {n} pairs")
        res = evaluate_retrieval(
            model,
            data.head(n),
            modes=STREAM_MODES,
            rerank_k=settings.rerank_k,
            precision=settings.resolved_precision(),
        )
        for mode in STREAM_MODES:
            rows.append(
                {
                    "mode": mode,
                    "n": n,
                    "pairs": n * n,
                    "t2v_r1": res[mode]["t2v_r1"],
                    "seconds": res[mode]["seconds"],
                }
            )
    _write(
        out,
        "streams",
        rows,
        "# Retrieval streams (Fig. 6)\n\n"
        + _table(
            rows,
            [
                ("mode", "mode"),
                ("n", "n"),
                ("pairs", "pairs"),
                ("t2v_r1", "t2v R@1"),
                ("seconds", "time (s)"),
            ],
        ),
        {"study": "streams", "quick": quick, "seed": seed, "machine": machine_description()},
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in STREAM_MODES:
        pts = sorted((r["pairs"], r["seconds"], r["t2v_r1"]) for r in rows if r["mode"] == mode)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=mode)
    for ax, label in zip(axes, ("total retrieval time (s)", "t2v R@1 (%)")):
        ax.set_xlabel("pairs (n x n)")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle("Single, multi and mixed stream")
    _save(plt, fig, out / "streams.png")
    return rows


RUNNERS = {
    "latent-size": latent_size,
    "input-size": input_size,
    "cross-attention": cross_attention,
    "streams": streams,
}
