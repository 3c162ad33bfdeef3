"""Two-process CPU DDP (gloo): both ranks end with identical weights and made identical
LayerDrop decisions, and, since the contrastive features are gathered across ranks with
gradient, they end with the weights and validation metrics of one process with the same global
batch."""

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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def _config(make_config, tmp_path: Path, **trainer):
    config = make_config(max_steps=4, **trainer)
    # The contrastive loss gathers features across ranks with gradient, so two ranks of 4 must
    # train exactly as one process of 8; matching and masked LM draw rank-local randomness.
    config["model"]["objectives"] = ["contrastive"]
    # Adam divides by sqrt(v) + eps: at the default eps (1e-8) a gradient that is zero in one
    # run and float noise (1e-12) in the other moves a weight by up to lr. eps 1e-3 bounds that
    # amplification (to lr / eps) while gradients much larger than 1e-3 keep Adam's scaling.
    config["model"]["eps"] = 1e-3
    config["model"]["model"]["layerdrop"] = 0.5
    config["model"]["model"]["cross_attention_before_layers"] = [0, 1, 2, 3]
    config["data"]["eval_batch_size"] = 3  # 8 val items: padded and de-duplicated over 2 ranks
    config["trainer"]["val_check_interval"] = 4
    config["trainer"]["callbacks"] = [
        {"class_path": "tests.train.test_ddp.RecordRanks", "init_args": {"out_dir": str(tmp_path)}}
    ]
    return config


def test_two_ranks_train_and_validate_as_one_process_with_the_same_global_batch(
    make_config, tmp_path
):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    ddp = _config(make_config, tmp_path / "ddp", devices=2, strategy="ddp_spawn")
    ddp["data"]["batch_size"] = 4
    ddp["trainer"]["limit_val_batches"] = 2  # 2 ranks x 2 batches x 3 >= 8 items
    ddp_result = fit(ddp)
    records = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["layerdrop"] == records[1]["layerdrop"]
    assert len(records[0]["layerdrop"]) == 4
    # LayerDrop really dropped something (p=0.5 over 3 droppable blocks, 4 steps)
    assert any(len(blocks) < 4 for _, blocks in records[0]["layerdrop"])
    assert records[0]["weights"] == records[1]["weights"]
    ckpt = Path(ddp["trainer"]["default_root_dir"]) / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4

    single = _config(make_config, tmp_path / "single", devices=1)
    single["trainer"]["default_root_dir"] += "-single"
    single["data"]["batch_size"] = 8
    single["trainer"]["limit_val_batches"] = 3  # 3 batches x 3 >= 8 items
    single_result = fit(single)
    record = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert record["layerdrop"] == records[0]["layerdrop"]
    two, one = torch.tensor(records[0]["weights"]), torch.tensor(record["weights"])
    offset, differ = 0, []
    for name, param in single_result.module.named_parameters():
        stop = offset + param.numel()
        if not torch.allclose(two[offset:stop], one[offset:stop], rtol=0, atol=1e-5):
            differ.append(f"{name}: {float((two[offset:stop] - one[offset:stop]).abs().max()):.2e}")
        offset = stop
    assert offset == len(one)
    assert not differ, f"two ranks and one process ended with different weights: {differ}"
    # validation rows sharded over the ranks and combined score as in one process
    for key in ("val/multi_t2v_r1", "val/multi_v2t_meanr", "val/mixed_v2t_meanr"):
        assert ddp_result.metrics[key] == pytest.approx(single_result.metrics[key], abs=1e-6)


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
