"""Two-process CPU DDP (gloo): both ranks end with identical weights and made identical
LayerDrop decisions; the contrastive features are gathered across ranks with gradient."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from perceiver_vl.train.api import fit


class RecordRanks(pl.Callback):
    """Each rank writes its LayerDrop decisions and a weight fingerprint to out_dir."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        flat = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "layerdrop": [[s, list(b)] for s, b in pl_module.layerdrop_log],
            "weights": flat.tolist(),
        }
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def test_two_process_ddp_fit_identical_weights_and_layerdrop(make_config, tmp_path):
    config = make_config(max_steps=4, devices=2, strategy="ddp_spawn")
    config["model"]["model"]["layerdrop"] = 0.5
    config["model"]["model"]["cross_attention_before_layers"] = [0, 1, 2, 3]
    config["data"]["batch_size"] = 4
    config["data"]["eval_batch_size"] = 3  # 8 val items over 2 ranks: padded, de-duplicated
    config["trainer"]["limit_val_batches"] = 2
    config["trainer"]["val_check_interval"] = 4
    config["trainer"]["callbacks"] = [
        {"class_path": "tests.train.test_ddp.RecordRanks", "init_args": {"out_dir": str(tmp_path)}}
    ]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    result = fit(config)
    # retrieval metrics were computed on text rows sharded across ranks and combined
    assert 0.0 <= result.metrics["val/multi_t2v_r1"] <= 100.0
    assert 1.0 <= result.metrics["val/mixed_v2t_meanr"] <= 8.0
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["layerdrop"] == records[1]["layerdrop"]
    assert len(records[0]["layerdrop"]) == 4
    # LayerDrop really dropped something (p=0.5 over 3 droppable blocks, 4 steps)
    assert any(len(blocks) < 4 for _, blocks in records[0]["layerdrop"])
    assert records[0]["weights"] == records[1]["weights"]
    ckpt = Path(config["trainer"]["default_root_dir"]) / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize(
    "strategy",
    ["fsdp", "fsdp_cpu_offload", {"class_path": "lightning.pytorch.strategies.FSDPStrategy"}],
)
def test_fsdp_on_cpu_is_refused_with_the_fix(make_config, strategy):
    # torch's FullyShardedDataParallel raises "FSDP needs a non-CPU accelerator device" on a CPU
    # (docs/training.md); the CLI refuses first, naming the argument and the alternatives
    config = make_config(max_steps=1, devices=2, strategy=strategy)
    with pytest.raises(ValueError, match=r"trainer\.strategy=.*fsdp.*needs CUDA GPUs") as info:
        fit(config)
    assert "--trainer.strategy ddp" in str(info.value)
    assert "--trainer.accelerator gpu" in str(info.value)
