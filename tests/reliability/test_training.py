"""Training faults: a real ``fit`` process killed with SIGKILL and resumed ends with the weights of
the uninterrupted run, bit for bit (mid-epoch and at an epoch boundary, 0 and 2 loader workers);
the pieces that make it so (sampler, masking, per-step seeding) are tested on their own too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from perceiver_vl.data import Collator, Tokenizer
from perceiver_vl.train.datamodule import PerceiverVLDataModule
from perceiver_vl.train.resume import EpochSampler, StepSeeding, stable_seed
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 6  # the tiny benchmark has 32 training clips: 4 batches of 8 per epoch


def _config(root: Path, run_dir: Path, workers: int, kill_at: int | None = None) -> dict:
    config = tiny_config(root, run_dir, max_steps=STEPS)
    config["model"]["model"]["dropout"] = 0.1  # every source of randomness is on
    config["data"]["num_workers"] = workers
    config["checkpoint"] = {"every_n_train_steps": 1}
    if kill_at is not None:
        config["trainer"]["callbacks"] = [
            {"class_path": "tests.reliability._kill.KillAtStep", "init_args": {"step": kill_at}}
        ]
    return config


def _fit_process(config: dict, path: Path, resume: bool = False) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "perceiver_vl", "fit", "--config", str(path)]
    if resume:
        command += ["--ckpt_path", "last"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == STEPS
    return saved["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights (in this process, with 0 workers: the result must
    not depend on the number of workers)."""
    from perceiver_vl.train.api import fit

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = fit(_config(synthetic_root, run_dir, workers=0))
    assert result.trainer.global_step == STEPS
    return _weights(run_dir)


@pytest.mark.parametrize(
    ("workers", "kill_at"),
    [(2, 2), (0, 4)],
    ids=["2-workers-mid-epoch", "0-workers-epoch-boundary"],
)
def test_sigkilled_fit_resumes_to_the_uninterrupted_weights(
    synthetic_root, tmp_path, uninterrupted, workers, kill_at
):
    expected = uninterrupted
    run_dir = tmp_path / "killed"
    killed = _fit_process(
        _config(synthetic_root, run_dir, workers, kill_at=kill_at), tmp_path / "killed.yaml"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == kill_at
    resumed = _fit_process(
        _config(synthetic_root, run_dir, workers), tmp_path / "resume.yaml", resume=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = _weights(run_dir)
    assert got.keys() == expected.keys()
    differences = {k: (got[k] - expected[k]).abs().max().item() for k in expected}
    assert max(differences.values()) == 0.0, sorted(differences.items(), key=lambda kv: -kv[1])[:3]
    assert "not resumable" not in resumed.stderr


# ----------------------------------------------------------------------------- the pieces
def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(10, shuffle=True, seed=3), EpochSampler(10, shuffle=True, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(10))
    assert list(EpochSampler(5, shuffle=False, seed=3)) == [0, 1, 2, 3, 4]


def test_epoch_sampler_resume_skips_once_and_sets_listeners():
    seen: list[int] = []
    sampler = EpochSampler(10, shuffle=True, seed=0, on_epoch=[seen.append])
    sampler.resume_at(2, 4)
    full = sampler.order(2).tolist()
    assert list(sampler) == full[4:] and seen == [2]
    assert list(sampler) == full  # the skip applies to one iteration only


def test_collator_masks_do_not_depend_on_call_count_or_worker():
    tokenizer = Tokenizer.default(max_length=12)
    items = [
        {"video": torch.zeros(1, 3, 8, 8), "text": f"a red cube moves left {i}", "index": i}
        for i in range(4)
    ]
    first = Collator(tokenizer, mlm_probability=0.5, seed=1)
    second = Collator(tokenizer, mlm_probability=0.5, seed=1)
    second(items[2:])  # a different history of calls
    assert torch.equal(first(items)["mlm_ids"], second(items)["mlm_ids"])
    second.set_epoch(1)
    assert not torch.equal(first(items)["mlm_labels"], second(items)["mlm_labels"])


def test_datamodule_state_skips_the_consumed_batches(synthetic_root):
    dm = PerceiverVLDataModule(
        train={"kind": "synthetic", "root": str(synthetic_root), "split": "train"},
        batch_size=8,
        num_workers=0,
        num_frames=2,
        image_size=32,
        max_text_length=16,
    )
    dm.setup("fit")
    dm.load_state_dict({"epoch": 1, "batches": 3, "batch_size": 8, "seed": 0, "lengths": [32]})
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler) and sampler.epoch == 1
    assert [b["index"].tolist() for b in loader] == [sampler.order(1)[24:].tolist()]
    assert dm.dataset("train").epoch == 1
    # saved after the epoch's last batch: the next epoch from its start
    dm.load_state_dict({"epoch": 1, "batches": 4, "batch_size": 8, "seed": 0, "lengths": [32]})
    loader = dm.train_dataloader()
    assert loader.sampler.epoch == 2 and len(list(loader)) == 4


def test_datamodule_warns_when_resumed_with_other_data_settings(synthetic_root):
    dm = PerceiverVLDataModule(
        train={"kind": "synthetic", "root": str(synthetic_root), "split": "train"},
        batch_size=4,
        num_workers=0,
        num_frames=2,
        image_size=32,
        max_text_length=16,
    )
    dm.setup("fit")
    dm.load_state_dict({"epoch": 0, "batches": 1, "batch_size": 8, "seed": 0, "lengths": [32]})
    with pytest.warns(UserWarning, match="other data settings"):
        dm.train_dataloader()


def test_step_seeding_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    callback = StepSeeding()
    callback.base_seed = 7
    torch.manual_seed(5)
    state = callback.state_dict()
    torch.save(state, tmp_path / "state.pt")
    expected = torch.rand(3)
    torch.manual_seed(99)
    restored = StepSeeding()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.base_seed == 7 and torch.equal(torch.rand(3), expected)


def test_stable_seed_is_a_pure_function():
    assert stable_seed("a", 1, 2) == stable_seed("a", 1, 2) != stable_seed("a", 2, 1)
    assert 0 <= stable_seed("x") < 2**63


# ----------------------------------------------------------------------------- non-finite losses
class _Module(torch.nn.Module):
    """Stands in for the LightningModule: parameters with gradients, and ``log``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **_: object) -> None:
        self.logged[name] = value


def _trainer(step: int = 7):
    from types import SimpleNamespace

    metrics = {
        "train/mlm_loss": torch.tensor(float("nan")),
        "train/matching_loss": torch.tensor(0.7),
    }
    return SimpleNamespace(global_step=step, callback_metrics=metrics)


def test_a_non_finite_loss_stops_training_by_default_naming_the_terms():
    from perceiver_vl.train.guards import NonFiniteGuard, NonFiniteLossError

    guard, module = NonFiniteGuard(), _Module()
    guard.on_before_backward(_trainer(), module, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"step 7: loss=nan \(train/mlm_loss=nan\)"):
        guard.on_before_optimizer_step(_trainer(), module, None)


def test_a_non_finite_loss_can_be_skipped_and_counted(capsys):
    from perceiver_vl.train.guards import NonFiniteGuard, NonFiniteLossError

    guard, module = NonFiniteGuard(on_loss="skip", max_skipped=1), _Module()
    for expected in (1,):
        module.weight.grad = torch.full((3,), float("nan"))
        guard.on_before_backward(_trainer(), module, torch.tensor(float("inf")))
        guard.on_before_optimizer_step(_trainer(), module, None)
        assert module.weight.grad is None and guard.skipped == expected
    assert module.logged["train/nonfinite_skipped"] == 1.0
    assert "skipped a non-finite step at step 7" in capsys.readouterr().err
    assert NonFiniteGuard(on_loss="skip").state_dict() == {"skipped": 0}
    guard.on_before_backward(_trainer(), module, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="more than nonfinite.max_skipped=1"):
        guard.on_before_optimizer_step(_trainer(), module, None)


def test_a_finite_loss_passes_untouched():
    from perceiver_vl.train.guards import NonFiniteGuard

    guard, module = NonFiniteGuard(), _Module()
    module.weight.grad = torch.ones(3)
    guard.on_before_backward(_trainer(), module, torch.tensor(1.5))
    guard.on_before_optimizer_step(_trainer(), module, None)
    assert torch.equal(module.weight.grad, torch.ones(3)) and guard.skipped == 0


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"on_loss": "ignore"}, "must be 'stop' or 'skip'"), ({"max_skipped": -1}, "must be >= 0")],
)
def test_guard_options_are_checked(kwargs, phrase):
    from perceiver_vl.train.guards import NonFiniteGuard

    with pytest.raises(ValueError, match=phrase):
        NonFiniteGuard(**kwargs)


def test_epoch_sampler_shards_by_rank_and_lightning_keeps_it():
    from torch.utils.data import DistributedSampler

    shards = [
        list(EpochSampler(10, shuffle=True, seed=0, num_replicas=3, rank=r)) for r in range(3)
    ]
    assert all(len(shard) == 4 for shard in shards)  # padded by repetition, as DistributedSampler
    assert set(sum(shards, [])) == set(range(10))
    assert isinstance(EpochSampler(4, shuffle=True, seed=0), DistributedSampler)
    with pytest.raises(ValueError, match="rank=3 must lie in"):
        EpochSampler(4, shuffle=True, seed=0, num_replicas=3, rank=3)
