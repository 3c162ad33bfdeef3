"""``perceiver-vl fit|validate|test``: LightningCLI over the module and the data module.

Example::

    perceiver-vl fit --config configs/pretrain/webvid_cc3m.yaml --trainer.devices 8 \\
        --trainer.num_nodes 4
    perceiver-vl fit --config configs/smoke.yaml --ckpt_path last      # resume a killed run

Besides ``model``, ``data`` and ``trainer``, a config has ``checkpoint`` (a
:class:`~perceiver_vl.train.callbacks.RunCheckpoint`: every N steps + ``last.ckpt``, written
atomically) and ``progress`` (:class:`~perceiver_vl.train.callbacks.TextProgress`) and ``nonfinite``
(:class:`~perceiver_vl.train.guards.NonFiniteGuard`: ``on_loss: stop`` or ``skip``). Defaults:
CSV + TensorBoard logs under ``trainer.default_root_dir``, checkpoints and the resolved
``config.yaml`` in ``<default_root_dir>/checkpoints``, DDP (with unused-parameter detection, which
LayerDrop needs) whenever more than one device or node is requested, seed 0.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import AtomicCheckpointIO, RunCheckpoint, SaveConfigBesideCheckpoints, TextProgress
from .datamodule import PerceiverVLDataModule
from .guards import NonFiniteGuard
from .module import PerceiverVLModule

DDP_STRATEGY = "ddp_find_unused_parameters_true"
_FIND_UNUSED = {
    "auto": DDP_STRATEGY,
    "ddp": DDP_STRATEGY,
    "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
    "ddp_fork": "ddp_fork_find_unused_parameters_true",
    "ddp_notebook": "ddp_notebook_find_unused_parameters_true",
}


def _requested_devices(devices: Any, accelerator: Any) -> int:
    if isinstance(devices, int):
        return devices if devices > 0 else _available(accelerator)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return _available(accelerator)
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        return 1


def _strategy_name(strategy: Any) -> str:
    """A strategy's (or accelerator's) registered name or class path, lower-cased ("" for
    None)."""
    if isinstance(strategy, str):
        return strategy.lower()
    class_path = getattr(strategy, "class_path", None)
    if class_path is None and isinstance(strategy, dict):
        class_path = strategy.get("class_path")
    if class_path is None and strategy is not None:
        class_path = type(strategy).__name__
    return str(class_path or "").lower()


def _refuse_fsdp_on_cpu(strategy: Any, accelerator: Any) -> None:
    """FSDP shards parameters across accelerator devices: torch's FullyShardedDataParallel
    raises "FSDP needs a non-CPU accelerator device" on a CPU-only run (and Lightning refuses
    ``strategy="fsdp"`` with ``accelerator="cpu"``), so say so before anything is built."""
    if "fsdp" not in _strategy_name(strategy):
        return
    accel = _strategy_name(accelerator)  # a name, or the class path of an accelerator object
    on_cpu = "cpu" in accel or (accel in ("", "auto") and not torch.cuda.is_available())
    if on_cpu:
        raise ValueError(
            f"trainer.strategy={_strategy_name(strategy)!r} needs CUDA GPUs: FSDP cannot run on "
            f"the CPU (trainer.accelerator={accelerator!r}"
            + ("" if torch.cuda.is_available() else ", and no GPU is visible")
            + "). Use --trainer.strategy ddp (or ddp_spawn) on CPUs, or run FSDP on GPUs with "
            "--trainer.accelerator gpu"
        )


def _available(accelerator: Any) -> int:
    if str(accelerator) in ("cpu",):
        return 1
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


class PerceiverVLCLI(LightningCLI):
    """LightningCLI with perceiver-vl's run defaults (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveConfigBesideCheckpoints)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        defaults = {"enable_progress_bar": sys.stderr.isatty(), "log_every_n_steps": 10}
        kwargs.setdefault("trainer_defaults", defaults)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(PerceiverVLModule, PerceiverVLDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TextProgress, "progress")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")

    def _trainer_config(self) -> Any:
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.trainer

    def before_instantiate_classes(self) -> None:
        trainer = self._trainer_config()
        _refuse_fsdp_on_cpu(trainer.strategy, trainer.accelerator)
        count = _requested_devices(trainer.devices, trainer.accelerator) * int(trainer.num_nodes)
        strategy = trainer.strategy
        if count > 1 and isinstance(strategy, str) and strategy in _FIND_UNUSED:
            # LayerDrop skips cross-attention blocks (and single-stream steps leave the
            # contrastive head idle): those parameters get no gradient in that step
            trainer.strategy = _FIND_UNUSED[strategy]

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._get(self.config_init, "trainer", default={})
        root = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            from lightning.pytorch.loggers import CSVLogger

            loggers: list[Any] = [CSVLogger(root, name="logs")]
            try:
                from lightning.pytorch.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(root, name="tensorboard"))
            except ModuleNotFoundError:  # tensorboard not installed: CSV only
                pass
            kwargs["logger"] = loggers
        if not config.get("plugins") and "plugins" not in kwargs:
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def lightning_main(argv: Sequence[str]) -> int | None:
    """Entry of ``perceiver-vl fit|validate|test``; ``argv[0]`` is the subcommand."""
    with warnings.catch_warnings():
        # the dispatcher passes sys.argv's own arguments as args=: not a mistake here
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run.*")
        PerceiverVLCLI(args=list(argv))
    return 0


__all__ = ["DDP_STRATEGY", "PerceiverVLCLI", "lightning_main"]
