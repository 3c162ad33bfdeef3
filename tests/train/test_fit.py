"""End-to-end fits on the tiny synthetic benchmark: loss goes down, resume continues, the CLI
writes checkpoints + config, export and evaluate work on the result."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from perceiver_vl.cli import main
from perceiver_vl.model import PerceiverVL
from perceiver_vl.train.api import fit


def _train_losses(run_dir: Path) -> list[float]:
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    assert files, f"no CSV log under {run_dir}"
    losses = []
    with open(files[-1]) as handle:
        for row in csv.DictReader(handle):
            if row.get("train/loss"):
                losses.append(float(row["train/loss"]))
    return losses


def test_fit_loss_goes_down(make_config):
    config = make_config(max_steps=24)
    config["model"]["model"]["layerdrop"] = 0.0
    result = fit(config)
    losses = _train_losses(Path(config["trainer"]["default_root_dir"]))
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, losses
    assert result.last_checkpoint and Path(result.last_checkpoint).name == "last.ckpt"
    assert result.trainer.global_step == 24
    assert isinstance(result.model, PerceiverVL) and not result.model.training


class _Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_after_interruption_continues_from_saved_step(make_config):
    config = make_config(max_steps=8)
    config["trainer"]["callbacks"] = [
        {"class_path": "tests.train.test_fit._Crash", "init_args": {"at_step": 5}}
    ]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config)
    ckpt_dir = Path(config["trainer"]["default_root_dir"]) / "checkpoints"
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4  # every 2 steps; the crash came at step 5
    assert not list(ckpt_dir.glob("*.tmp")) and not list(ckpt_dir.glob(".*tmp"))
    assert (ckpt_dir / "config.yaml").is_file()
    del config["trainer"]["callbacks"]
    result = fit(config, ckpt_path="last")
    assert result.trainer.global_step == 8
    steps = [step for step, _ in result.module.layerdrop_log]
    assert steps[0] == 4 and steps[-1] == 7  # the LayerDrop sequence continues where it stopped


def test_cli_fit_export_evaluate(make_config, tmp_path):
    config = make_config(max_steps=3)
    config["model"]["model"]["layerdrop"] = 0.5
    config["trainer"]["limit_val_batches"] = 1
    config["trainer"]["val_check_interval"] = 3
    config["model"]["eval_modes"] = ["multi", "mixed"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path), "--trainer.max_steps", "3"]) == 0
    run_dir = Path(config["trainer"]["default_root_dir"])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "checkpoints" / "config.yaml").is_file()
    saved_config = yaml.safe_load((run_dir / "checkpoints" / "config.yaml").read_text())
    assert saved_config["trainer"]["max_steps"] == 3
    metrics = _train_losses(run_dir)
    assert len(metrics) == 3
    assert list(run_dir.glob("tensorboard/version_*/events.*"))

    out = tmp_path / "exported"
    assert main(["export", str(ckpt), str(out)]) == 0
    model = PerceiverVL.from_pretrained(out)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"model.{name}"]), name

    report = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(path),
            "--modes",
            "single",
            "multi",
            "mixed",
            "rerank",
            "--rerank-k",
            "3",
            "--output",
            str(report),
        ]
    )
    assert code == 0
    results = json.loads(report.read_text())
    assert results["info"] == {**results["info"], "num_texts": 8, "num_videos": 8}
    for mode in ("single", "multi", "mixed", "rerank"):
        assert {"t2v_r1", "v2t_medr", "seconds"} <= set(results[mode])
        assert results[mode]["seconds"] > 0
    assert results["rerank"]["pairs_scored"] == 8 * 3


class _RecordMode(pl.Callback):
    modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _RecordMode.modes.append(pl_module.model.training)


def test_fit_from_pretrained_trains_in_training_mode(make_config, tmp_path):
    """from_pretrained gives an eval-mode model and Lightning keeps submodule modes: the module
    must switch it to training mode, or LayerDrop (and dropout) silently stay off."""
    from perceiver_vl.model import PerceiverVLConfig
    from tests.train.conftest import TINY_MODEL

    start = tmp_path / "start"
    PerceiverVL(PerceiverVLConfig.from_dict(TINY_MODEL)).save_pretrained(start)
    config = make_config(max_steps=6)
    config["model"]["pretrained"] = str(start)
    config["model"]["model"] = {"layerdrop": 0.5}
    config["trainer"]["callbacks"] = [{"class_path": "tests.train.test_fit._RecordMode"}]
    _RecordMode.modes = []
    result = fit(config)
    assert _RecordMode.modes and all(_RecordMode.modes)
    blocks = {b for _, b in result.module.layerdrop_log}
    assert (0,) in blocks and (0, 1) in blocks, blocks  # LayerDrop really ran


def test_cli_accepts_in_batch_retrieval_negatives(make_config, tmp_path):
    """`retrieval_negatives: all` in a YAML config reaches the module (int-or-'all' argument)."""
    config = make_config(max_steps=2)
    config["model"]["objectives"] = ["contrastive", "retrieval"]
    config["model"]["retrieval_negatives"] = "all"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "retrieval_negatives: all" in path.read_text()
    assert main(["fit", "--config", str(path)]) == 0
    files = sorted(Path(config["trainer"]["default_root_dir"]).glob("logs/version_*/metrics.csv"))
    with open(files[-1]) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/retrieval_loss")]
    assert len(rows) == 2 and all(float(r["train/retrieval_loss"]) > 0 for r in rows)


def test_caption_groups_reach_the_training_loader(make_config, tmp_path):
    """`data.caption_group_size` in a YAML config builds grouped batches and trains."""
    from perceiver_vl.data import SharedWordBatchSampler
    from perceiver_vl.train.datamodule import PerceiverVLDataModule

    config = make_config(max_steps=2)
    config["data"]["caption_group_size"] = 4
    config["model"]["objectives"] = ["contrastive", "retrieval"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0

    data = {k: v for k, v in config["data"].items() if k not in ("val", "test")}
    module = PerceiverVLDataModule(**data)
    module.setup("fit")
    loader = module.train_dataloader()
    texts = [module.dataset("train")[i]["text"] for i in range(len(module.dataset("train")))]
    expected = SharedWordBatchSampler(texts, 8, 4, seed=module.seed).order(0)
    assert loader.sampler.order(0).tolist() == expected.tolist()
    batch = next(iter(loader))
    assert batch["text_ids"].shape[0] == 8
    with pytest.raises(ValueError, match="caption_group_size=3"):
        PerceiverVLDataModule(**{**data, "caption_group_size": 3})
