"""The demo's report: a Markdown page, PNG plots and a summary table for the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceiver_vl.fileio import atomic_savefig, atomic_write_text
from perceiver_vl.model.streams import StreamMode

MODE_NAMES = {
    StreamMode.SINGLE: "single-stream",
    StreamMode.MULTI: "multi-stream",
    StreamMode.MIXED: "mixed-stream",
    StreamMode.RERANK: "multi shortlist + mixed re-rank",
}


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(metrics: dict[str, Any]) -> str:
    """The retrieval results as a Markdown table (also printed on the terminal)."""
    n = metrics["num_test_pairs"]
    lines = [
        "| mode | t2v R@1 | t2v R@5 | t2v R@10 | t2v MedR | v2t R@1 | v2t R@5 | v2t R@10 | v2t MedR | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, name in MODE_NAMES.items():
        r = metrics["retrieval"][mode]
        lines.append(
            f"| {name} | {_f(r['t2v_r1'])} | {_f(r['t2v_r5'])} | {_f(r['t2v_r10'])} | "
            f"{_f(r['t2v_medr'])} | {_f(r['v2t_r1'])} | {_f(r['v2t_r5'])} | {_f(r['v2t_r10'])} | "
            f"{_f(r['v2t_medr'])} | {_f(r['seconds'], 2)} |"
        )
    lines.append(
        f"| chance | {_f(metrics['chance_r1'], 2)} | {_f(5 * metrics['chance_r1'], 2)} | "
        f"{_f(10 * metrics['chance_r1'], 2)} | {_f((n + 1) / 2)} | {_f(metrics['chance_r1'], 2)} | "
        f"{_f(5 * metrics['chance_r1'], 2)} | {_f(10 * metrics['chance_r1'], 2)} | {_f((n + 1) / 2)} | |"
    )
    return "\n".join(lines)


def layerdrop_table(metrics: dict[str, Any]) -> str:
    lines = [
        "| cross-attention blocks at inference | mixed-stream t2v R@1 | v2t R@1 | latency per pair (ms) |",
        "|---|---|---|---|",
    ]
    batch = next(iter(metrics["layerdrop"].values()), {}).get("latency_batch_size", 1)
    for name, row in metrics["layerdrop"].items():
        label = f"{'all' if name == 'all' else 'only the first'} {row['cross_attention_layers']}"
        lines.append(
            f"| {label} | {_f(row['t2v_r1'])} | {_f(row['v2t_r1'])} | {_f(row['latency_ms'], 2)} |"
        )
    lines += [
        "",
        f"Latency: a joint (single-stream) forward of {batch} (video, caption) pairs at once, "
        f"{metrics.get('precision', 'bf16')}, "
        "divided by the pairs; median of the timed calls after one warm-up.",
    ]
    return "\n".join(lines)


ATTRIBUTE_NAMES = {
    "size": "size (2)",
    "colour": "colour (8)",
    "shape": "shape (4)",
    "first_step": "first motion step (4)",
    "second_step": "second motion step (4)",
    "motion": "both steps (12)",
}


def attribute_table(metrics: dict[str, Any]) -> str:
    """% of captions whose top-ranked video shares each attribute, per stream, with chance."""
    study = metrics.get("attributes") or {}
    modes = [m for m in (StreamMode.MULTI, StreamMode.MIXED) if m in study]
    lines = [
        "| attribute (values) | " + " | ".join(MODE_NAMES[m] for m in modes) + " | chance |",
        "|---|" + "---|" * (len(modes) + 1),
    ]
    for key, name in ATTRIBUTE_NAMES.items():
        if modes and key in study[modes[0]]:
            cells = [_f(study[m][key]["top1_agreement"]) for m in modes]
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {_f(study[modes[0]][key]['chance'])} |"
            )
    return "\n".join(lines)


def efficiency_table(metrics: dict[str, Any]) -> str:
    lines = [
        "| model | frames | input tokens M | GFLOPs | GMACs | latency (ms, median) |",
        "|---|---|---|---|---|---|",
    ]
    for row in metrics["efficiency"]:
        lines.append(
            f"| {row['model']} | {row['frames']} | {_f(row.get('input_tokens'))} | {_f(row['gflops'])} | "
            f"{_f(row['gmacs'])} | {_f(row.get('latency_ms_median'))} |"
        )
    return "\n".join(lines)


def _plot_retrieval_time(metrics: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for mode, name in MODE_NAMES.items():
        points = sorted(
            (r["pairs"], r["seconds"]) for r in metrics["retrieval_time"] if r["mode"] == mode
        )
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pairs scored (n captions x n videos)")
    ax.set_ylabel("wall time incl. encoding (s)")
    ax.set_title("Retrieval time by stream mode")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def _plot_efficiency(metrics: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    models = sorted({r["model"] for r in metrics["efficiency"]})
    for model in models:
        rows = sorted(
            (r for r in metrics["efficiency"] if r["model"] == model), key=lambda r: r["frames"]
        )
        frames = [r["frames"] for r in rows]
        axes[0].plot(frames, [r["gflops"] for r in rows], marker="o", label=model)
        latency = [
            (r["frames"], r.get("latency_ms_median")) for r in rows if r.get("latency_ms_median")
        ]
        if latency:
            axes[1].plot(*zip(*latency), marker="o", label=model)
    size = metrics["efficiency"][0].get("image_size", "?") if metrics["efficiency"] else "?"
    dtype = metrics["efficiency"][0].get("dtype", "fp32") if metrics["efficiency"] else "fp32"
    for ax, label in zip(axes, ("GFLOPs per sample", f"latency, batch 1, {dtype} (ms)")):
        ax.set_xlabel(f"frames ({size}x{size})")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Perceiver-VL against a joint transformer: cost against video length")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def efficiency_note(metrics: dict[str, Any]) -> str:
    """How the efficiency latencies were taken (few calls, to fit the demo's time budget)."""
    rows = metrics["efficiency"]
    if not rows:
        return ""
    repeats = [int(r.get("repeats") or 0) for r in rows]
    span = f"{min(repeats)}" if min(repeats) == max(repeats) else f"{min(repeats)}-{max(repeats)}"
    first = rows[0]
    return (
        f"Paper-size models (N = {first['latents']}), frames of {first['image_size']}², "
        f"{first['text_length']} text tokens, {first['dtype']}, batch {first['batch']}, "
        f"random weights; latency is the median of {span} timed call(s) after one warm-up, "
        "to fit the demo's time budget. "
        "`perceiver-vl bench` measures with more repeats and reports p10/p90."
    )


def write_report(metrics: dict[str, Any], out: Path) -> Path:
    """``report.md`` + ``retrieval_time.png`` + ``efficiency.png`` in ``out``."""
    plots = [_plot_retrieval_time(metrics, out / "retrieval_time.png")]
    if metrics["efficiency"]:
        plots.append(_plot_efficiency(metrics, out / "efficiency.png"))
    machine = metrics["machine"]
    training = metrics["training"]
    settings = metrics["settings"]
    split = metrics.get("eval_split", "test")
    objectives = training["finetune"]["objectives"]
    streams = settings["retrieval_streams"]
    ours = [
        name
        for name, used in (
            ("the multi-stream contrastive loss in fine-tuning", "contrastive" in objectives),
            (
                f"hard single-stream negatives ({settings['hard_negative_fraction']:.0%} of "
                f"{settings['single_stream_negatives']} by the multi-stream similarity)",
                "single" in streams and settings["hard_negative_fraction"] > 0,
            ),
            ("frame-difference input", settings["model"].get("frame_difference")),
            (
                "position / time tables initialised at "
                f"{settings['model'].get('visual_position_init_std')}",
                settings["model"].get("visual_position_init_std", 0.02) != 0.02,
            ),
        )
        if used
    ]
    negatives = {
        "mixed": "the batch's other videos"
        if settings["mixed_stream_negatives"] == "all"
        else f"{settings['mixed_stream_negatives']} negatives",
        "single": f"{settings['single_stream_negatives']} negatives",
    }
    weights = settings.get("retrieval_stream_weights") or {}
    retrieval = "; ".join(
        f"{s}: {negatives[s]}" + (f", weight {weights[s]:g}" if s in weights else "")
        for s in streams
    )
    lines = [
        "# perceiver-vl demo report",
        "",
        f"Synthetic video-text benchmark (seed {metrics['seed']}{', quick mode' if metrics['quick'] else ''}); "
        f"{metrics['num_test_pairs']} held-out {split} captions, each unique, each with its own video. "
        f"Total wall time {metrics['total_seconds']:.0f} s on {machine['cores']} CPU cores "
        f"({machine['cpu']}, torch {machine['torch']}, {machine['torch_threads']} threads, "
        f"{metrics.get('precision', 'bf16')} arithmetic"
        + (f"; {machine['allocator']}" if machine.get("allocator") else "")
        + ").",
        "",
        "## Retrieval (recalls in %, ranks 1-based; time includes encoding)",
        "",
        summary_table(metrics),
        "",
        "## What the model reads (top-ranked video against the caption, %)",
        "",
        attribute_table(metrics) if metrics.get("attributes") else "(not measured)",
        "",
        "An attribute the model reads is shared near 100 %; one it ignores, at about chance.",
        "",
        "## LayerDrop at inference",
        "",
        layerdrop_table(metrics),
        "",
        "## Efficiency against the joint-transformer baseline",
        "",
        efficiency_table(metrics) if metrics["efficiency"] else "(not measured)",
        "",
        efficiency_note(metrics),
        "",
        "![efficiency](efficiency.png)",
        "",
        "## Retrieval time against the number of pairs",
        "",
        "![retrieval time](retrieval_time.png)",
        "",
        "## Training",
        "",
        f"- pretraining (vision-text matching on the clean caption + masked LM on a corrupted "
        f"copy, LayerDrop {settings['model']['layerdrop']}): {training['pretrain']['steps']} steps; "
        f"{settings['mlm_probability']:.0%} of caption tokens masked (paper: 15 %), matching "
        f"loss weight {settings['pretrain_matching_weight']:g} (paper: 1)",
        f"- fine-tuning ({' + '.join(objectives)}, LayerDrop {settings['finetune_layerdrop']}; "
        f"retrieval = cross-entropy of the matching logits over each caption's video and "
        f"negatives, {retrieval}; {'/'.join(settings['retrieval_directions'])}): "
        f"{training['finetune']['steps']} steps",
        f"- beyond the paper (ours): {'; '.join(ours) if ours else 'nothing'}",
        "- the paper-only settings beside these, measured on the validation split: "
        'docs/analyses.md, "The paper\'s method on the demo benchmark" (the input options: '
        '"The two input options against the paper\'s input")',
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in metrics["stage_seconds"].items()],
        "",
    ]
    if metrics.get("search_example"):
        ex = metrics["search_example"]
        lines += [
            "## Search example",
            "",
            f'`perceiver-vl search --index {out / "index"} "{ex["query"]}"`',
            "",
            "| rank | score | video |",
            "|---|---|---|",
            *[f"| {h['rank']} | {h['score']:.3f} | {h['video']} |" for h in ex["hits"]],
            "",
        ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
