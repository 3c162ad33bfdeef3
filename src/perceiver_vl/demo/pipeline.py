"""The main job, end to end: generate -> pretrain -> fine-tune -> evaluate -> measure -> report.

Every stage uses the project's own parts: the synthetic benchmark generator and video decoding
(``data``), the Lightning engine (``train``), the stream scorers and metrics (``model``,
``metrics``), the joint-transformer baseline and FLOP counting (``bench``) and the search index
(``retrieval``).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.allocator import current_setting
from perceiver_vl.bench.measure import pair_latency_ms
from perceiver_vl.fileio import atomic_write_json
from perceiver_vl.model.streams import STREAM_MODES as MODES
from perceiver_vl.model.streams import StreamMode

from .recipe import (
    DemoSettings,
    finetune_model,
    prepare_test_data,
    prepare_training_data,
    pretrain_model,
)


@dataclass
class StageClock:
    """Wall time per stage, printed as the demo goes."""

    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"[{time.perf_counter() - self._start:6.1f}s] {name} ...")
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.log(
            f"[{time.perf_counter() - self._start:6.1f}s] {name}: done in {self.seconds[name]:.1f}s"
        )
        return result

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def machine_description() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "allocator": current_setting(),
    }


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _loss_curve(out: Path, stage: str) -> list[dict[str, float]]:
    """The CSV logger's training-loss rows of a stage."""
    import csv

    path = out / "logs" / stage / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            loss = row.get("train/loss") or row.get("train_loss") or row.get("loss")
            if loss:
                rows.append({"step": int(row.get("step") or 0), "loss": float(loss)})
    return rows


# ----------------------------------------------------------------------------------------------
# Evaluation helpers
# ----------------------------------------------------------------------------------------------
def _efficiency(settings: DemoSettings, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """GFLOPs and batch-1 latency of the paper-size Perceiver-VL (D=768, N=128, three
    cross-attention blocks) and the joint-transformer baseline, at each frame count, in the
    demo's arithmetic (``settings.resolved_precision()``: bf16 where the CPU has bf16 units)."""
    from perceiver_vl.bench import BenchSettings, efficiency_rows

    rows = efficiency_rows(
        settings.efficiency_frames,
        dtypes=(settings.resolved_precision(),),
        image_size=settings.efficiency_image_size,
        settings=BenchSettings(
            warmup=1,
            min_repeats=1,
            max_repeats=settings.latency_repeats,
            budget_s=2.0,
            memory=False,
            max_forward_s=60.0,
            matmul_size=2048,
        ),
        progress=progress,
    )
    for row in rows:
        per_frame = 1 + (row["image_size"] // 32) ** 2
        row["input_tokens"] = row["frames"] * per_frame + row.get("text_length", 40)
    return rows


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def fp32_time_note(settings: DemoSettings, quick: bool) -> str | None:
    """What the full demo tells a user when ``precision: auto`` finds no bf16 units on this CPU
    (it then trains in fp32, two to four times as long: the 500 + 450-step recipe, whose steps
    cost about what 700 + 350 do, took 541-558 s alone with bf16 units and 1,042-2,008 s on three
    AVX2-only 2-core EPYCs; the 700 + 350 recipe 1,287-1,849 s alone on an AVX2-only EPYC of
    the slower kind). None otherwise. Call before ``settings.precision`` is resolved."""
    if quick or settings.precision != "auto" or settings.resolved_precision() != "fp32":
        return None
    return (
        "this CPU has no bf16 units (bf16 would be emulated), so the demo trains in fp32: "
        "expect 15 to 35 minutes on 2 cores instead of about ten minutes"
    )


def build_demo_index(index_dir: Path, model_dir: Path, annotations: Path, *, progress: bool):
    """The demo's own index of its own model. A rerun replaces it: an index refuses any model
    other than the one it was built with, and the demo's model changes with every run."""
    from perceiver_vl.retrieval import RetrievalIndex

    shutil.rmtree(index_dir, ignore_errors=True)
    return RetrievalIndex.build(index_dir, model_dir, annotations, progress=progress)


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    seed: int = 0,
    quick: bool = False,
    settings: DemoSettings | None = None,
    progress: bool = True,
    build_index: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the main job and return its metrics (also written to ``out_dir/metrics.json``)."""
    import lightning.pytorch as pl

    from perceiver_vl.evaluation import evaluate_retrieval

    from .attributes import attribute_study, load_attributes
    from .report import write_report

    settings = settings or (DemoSettings.quick() if quick else DemoSettings.full())
    settings.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "data"
    clock = StageClock(log)
    pl.seed_everything(seed, workers=True, verbose=False)
    # one arithmetic for training, evaluation and latency: bf16 autocast only where this CPU
    # multiplies bf16 faster than fp32 (emulated bf16 on AVX2-only CPUs is several times slower)
    note = fp32_time_note(settings, quick)
    settings.precision = precision = settings.resolved_precision()
    log(f"precision: {precision}")
    if note:
        log(note)

    # 1. data ---------------------------------------------------------------------------------
    datamodule = clock.run(
        "generate the synthetic benchmark and decode the training clips once",
        lambda: prepare_training_data(data_root, settings, seed=seed, progress=progress),
    )

    # 2. pretraining: matching + masked LM, LayerDrop ------------------------------------------
    pretrain, pretrain_metrics = clock.run(
        "pretrain (matching + masked LM, LayerDrop)",
        lambda: pretrain_model(datamodule, settings, out, seed=seed, progress=progress),
    )
    pretrained_dir = out / "pretrained"
    pretrain.model.save_pretrained(pretrained_dir)

    # 3. retrieval fine-tuning (settings.finetune_objectives, LayerDrop) ------------------------
    model, finetune_metrics = clock.run(
        f"fine-tune for retrieval ({' + '.join(settings.finetune_objectives)}, LayerDrop)",
        lambda: finetune_model(
            pretrained_dir, datamodule, settings, out, seed=seed, progress=progress
        ),
    )
    model_dir = out / "model"
    model.save_pretrained(model_dir)

    # 4. evaluation -----------------------------------------------------------------------------
    split = settings.eval_split
    data, captions = clock.run(
        f"decode the {split} clips",
        lambda: prepare_test_data(data_root, settings, progress=progress, split=split),
    )
    n = len(captions)
    retrieval = clock.run(
        f"evaluate retrieval on {n} captions x {n} videos (4 stream modes)",
        lambda: evaluate_retrieval(
            model, data, modes=MODES, rerank_k=settings.rerank_k, precision=precision
        ),
    )

    attributes = clock.run(
        "which caption attributes the top-ranked videos share",
        lambda: attribute_study(
            model,
            data,
            load_attributes(data_root / f"{split}.jsonl", captions),
            precision=precision,
        ),
    )

    # 5. LayerDrop trade-off at inference: all blocks vs only the first ---------------------------
    num_blocks = model.config.num_cross_attention_blocks

    # latency per pair in batches of 64: at batch 1 a forward of this small model takes ~5 ms,
    # mostly fixed per-call overhead that varies more than a cross-attention block saves
    latency_batch = min(64, n)

    def layerdrop_study() -> dict[str, Any]:
        result = {}
        for name, blocks in (("all", list(range(num_blocks))), ("first", [0])):
            res = evaluate_retrieval(
                model,
                data,
                modes=(StreamMode.MIXED,),
                cross_attention_layers=blocks,
                precision=precision,
            )[StreamMode.MIXED]
            result[name] = {
                "cross_attention_layers": blocks,
                "t2v_r1": res["t2v_r1"],
                "v2t_r1": res["v2t_r1"],
                "latency_ms": round(
                    pair_latency_ms(
                        model,
                        data,
                        blocks,
                        settings.latency_repeats * 4,
                        latency_batch,
                        precision=precision,
                    ),
                    3,
                ),
                "latency_batch_size": latency_batch,
            }
        return result

    layerdrop = clock.run(
        "LayerDrop trade-off (all cross-attention blocks vs the first)", layerdrop_study
    )

    # 6. retrieval time against the number of pairs, per stream mode -----------------------------
    def time_curve() -> list[dict[str, Any]]:
        rows = []
        for size in [s for s in settings.curve_sizes if s < n]:
            res = evaluate_retrieval(
                model,
                data.head(size),
                modes=MODES,
                rerank_k=settings.rerank_k,
                precision=precision,
            )
            rows += [
                {"mode": m, "n": size, "pairs": size * size, "seconds": res[m]["seconds"]}
                for m in MODES
            ]
        rows += [
            {"mode": m, "n": n, "pairs": n * n, "seconds": retrieval[m]["seconds"]} for m in MODES
        ]
        return rows

    retrieval_time = clock.run("retrieval time against gallery size", time_curve)

    # 7. efficiency against the joint-transformer baseline -----------------------------------------
    efficiency = clock.run(
        f"efficiency vs the joint transformer at {list(settings.efficiency_frames)} frames",
        lambda: _efficiency(settings, log),
    )

    # 8. the search index over the test videos -----------------------------------------------------
    example = None
    if build_index:

        def index_and_search() -> dict[str, Any]:
            index = build_demo_index(
                out / "index", model_dir, data_root / "test.jsonl", progress=progress
            )
            query = captions[0]
            hits = index.search(query, k=5, mode=StreamMode.RERANK)
            return {
                "query": query,
                "hits": [
                    {"rank": h.rank, "score": round(float(h.score), 4), "video": str(h.video)}
                    for h in hits
                ],
            }

        example = clock.run("index the test videos and search", index_and_search)

    metrics: dict[str, Any] = {
        "retrieval": {m: {k: v for k, v in retrieval[m].items()} for m in MODES},
        "retrieval_info": retrieval.get("info", {}),
        "chance_r1": round(100.0 / n, 4),
        "attributes": attributes,
        "num_test_pairs": n,
        "eval_split": split,
        "layerdrop": layerdrop,
        "efficiency": efficiency,
        "retrieval_time": retrieval_time,
        "training": {
            "pretrain": {
                "steps": settings.pretrain_steps,
                "final": pretrain_metrics,
                "curve": _loss_curve(out, "pretrain"),
            },
            "finetune": {
                "steps": settings.finetune_steps,
                "objectives": list(settings.finetune_objectives),
                "final": finetune_metrics,
                "curve": _loss_curve(out, "finetune"),
            },
        },
        "search_example": example,
        "stage_seconds": clock.seconds,
        "total_seconds": round(clock.total, 1),
        "seed": seed,
        "precision": precision,
        "quick": quick,
        "settings": settings.to_dict(),
        "machine": machine_description(),
        "model_dir": str(model_dir),
    }
    atomic_write_json(out / "metrics.json", metrics, indent=2, default=str)
    write_report(metrics, out)
    return metrics
