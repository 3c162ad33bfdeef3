"""Programmatic training: run a fit from a config (dict or YAML) and get the trained model back."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perceiver_vl.model import PerceiverVL


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained :class:`~perceiver_vl.PerceiverVL` (eval mode, on CPU).
        module: the LightningModule; trainer: the Lightning Trainer; datamodule: the data.
        best_checkpoint: the best checkpoint under ``checkpoint.monitor`` (None without one).
        last_checkpoint: ``last.ckpt`` (the final step).
        metrics: the trainer's last logged scalars.
    """

    model: PerceiverVL
    module: Any
    trainer: Any
    datamodule: Any
    best_checkpoint: str | None
    last_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def load_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config as a dict: a mapping (copied) or a YAML file."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config={str(path)!r} does not exist; pass a YAML file or a dict")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config={str(path)!r} must hold a mapping (model:, data:, trainer:)")
    return data


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys (``{"trainer.max_steps": 10, "model.lr": 1e-3}``) in a copy of ``config``;
    a key addressing a class spec's argument may skip ``init_args``."""
    config = copy.deepcopy(config)
    for dotted, value in (overrides or {}).items():
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), dict) and "init_args" in node[part]:
                node = node[part]["init_args"]
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted!r}: {part!r} is not a mapping in the config")
        node[parts[-1]] = value
    return config


def fit(
    config: str | Path | dict[str, Any],
    *,
    overrides: dict[str, Any] | None = None,
    ckpt_path: str | None = None,
) -> FitResult:
    """Train as ``perceiver-vl fit --config CONFIG`` does, in this process.

    Args:
        config: a YAML file or a dict with ``model``, ``data``, ``trainer`` (and optionally
            ``checkpoint``, ``progress``, ``seed_everything``) sections.
        overrides: dotted keys to change (``{"trainer.max_steps": 100}``).
        ckpt_path: resume from a checkpoint, or ``"last"``.
    """
    from .cli import PerceiverVLCLI

    cfg = apply_overrides(load_config(config), overrides)
    cli = PerceiverVLCLI(args=cfg, run=False)
    trainer, module, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    best = last = None
    for callback in trainer.checkpoint_callbacks:
        best = best or (getattr(callback, "best_model_path", None) or None)
        last = last or (getattr(callback, "last_model_path", None) or None)
    if best is not None and getattr(trainer.checkpoint_callback, "monitor", None) is None:
        best = None
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue
    model = module.model.cpu().eval()
    return FitResult(model, module, trainer, datamodule, best, last, metrics)


__all__ = ["FitResult", "apply_overrides", "fit", "load_config"]
