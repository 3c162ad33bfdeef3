"""Run plumbing: atomic checkpoint files, a checkpoint callback with a fixed folder (so
``--ckpt_path last`` finds it), the resolved config beside the checkpoints, and plain-text
progress for runs without a terminal."""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback

from perceiver_vl.fileio import atomic_open


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`perceiver_vl.fileio.atomic_open`: a crash leaves either the
    previous file or the complete new one, never a partial file. A failed write (a full disk) is
    an ``OSError`` naming the file."""
    path = Path(path)
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as err:
        # torch reports a full disk as "enforce fail at inline_container.cc ... file write failed"
        if isinstance(err, OSError) or "write" in str(err).lower():
            raise OSError(
                getattr(err, "errno", None) or errno.ENOSPC,
                f"could not write checkpoint {str(path)!r} ({str(err).splitlines()[0]}); is the "
                "disk full? The previous checkpoint under that name is intact",
                str(path),
            ) from err
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint I/O that writes atomically (local paths) and loads with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None):
        """Load with ``weights_only=True``; a missing, truncated or foreign file is a clear
        error naming it (and, when missing, the checkpoints that do exist beside it)."""
        if "://" not in str(path):
            from perceiver_vl.model.weights import load_torch_file

            local = Path(path)
            if not local.is_file():
                others = sorted(p.name for p in local.parent.glob("*.ckpt"))
                raise FileNotFoundError(
                    f"--ckpt_path {str(local)!r} does not exist; "
                    + (
                        f"checkpoints in {str(local.parent)!r}: {others[:10]}"
                        if others
                        else "pass a .ckpt written by `perceiver-vl fit`, or 'last'"
                    )
                )
            checkpoint = load_torch_file(local, argument="--ckpt_path")
            # Lightning's own temporary files (ddp_spawn) hold a bare state dict of tensors
            bare = isinstance(checkpoint, dict) and all(
                isinstance(v, torch.Tensor) for v in checkpoint.values()
            )
            if not isinstance(checkpoint, dict) or ("state_dict" not in checkpoint and not bare):
                raise ValueError(
                    f"--ckpt_path {str(local)!r} is not a Lightning training checkpoint (no "
                    "'state_dict'); pass a .ckpt written by `perceiver-vl fit`"
                )
            return checkpoint
        return super().load_checkpoint(
            path,
            map_location=map_location or (lambda storage, loc: storage),
            weights_only=True,
        )


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose default folder is ``<default_root_dir>/checkpoints`` (not a
    per-version logger folder), so a restarted run finds ``last.ckpt`` with ``--ckpt_path last``.
    Defaults: a checkpoint every 1000 steps (``every_n_train_steps``), ``last.ckpt`` always."""

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = "step{step:07d}",
        monitor: str | None = None,
        mode: str = "min",
        save_last: bool | None = True,
        save_top_k: int | None = None,
        every_n_train_steps: int | None = 1000,
        every_n_epochs: int | None = None,
        train_time_interval: Any = None,
        save_on_train_epoch_end: bool | None = None,
        auto_insert_metric_name: bool = False,
        verbose: bool = False,
    ) -> None:
        """Args as ``ModelCheckpoint``; ``save_top_k`` defaults to all step checkpoints without
        ``monitor`` (-1) and to the single best one with it (1)."""
        if save_top_k is None:
            save_top_k = -1 if monitor is None else 1
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            mode=mode,
            save_last=save_last,
            save_top_k=save_top_k,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            train_time_interval=train_time_interval,
            save_on_train_epoch_end=save_on_train_epoch_end,
            auto_insert_metric_name=auto_insert_metric_name,
            verbose=verbose,
        )

    def _default_dir(self, trainer: pl.Trainer) -> str:
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = self._default_dir(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        if self.dirpath is None:
            self.dirpath = self._default_dir(trainer)
        return super()._find_last_checkpoints(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Always leave a checkpoint of the final step (and ``last.ckpt``)."""
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        candidates = self._monitor_candidates(trainer)
        if self._last_global_step_saved != trainer.global_step:
            if self.monitor is None:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._last_global_step_saved = trainer.global_step


class SaveConfigBesideCheckpoints(SaveConfigCallback):
    """Write the resolved config (``config.yaml``) into the checkpoint folder as well as the
    log folder (overwritten on resume, so it always describes the latest invocation)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        folder = None
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                folder = callback.dirpath
                break
        folder = folder or os.path.join(trainer.default_root_dir, "checkpoints")
        os.makedirs(folder, exist_ok=True)
        self.parser.save(
            self.config,
            os.path.join(folder, self.config_filename),
            skip_none=False,
            overwrite=True,
            multifile=self.multifile,
        )


class TextProgress(Callback):
    """One plain log line every ``every_n_steps`` optimiser steps (and at validation end):
    readable in files and CI logs where a progress bar would print carriage returns.

    Args:
        every_n_steps: optimiser steps between lines.
        only_without_terminal: stay silent when stderr is a terminal (a progress bar shows).
    """

    def __init__(self, every_n_steps: int = 50, only_without_terminal: bool = True) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self.only_without_terminal = only_without_terminal
        self._start = time.monotonic()
        self._last_step = -1

    def _active(self) -> bool:
        return not (self.only_without_terminal and sys.stderr.isatty())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._active() or not trainer.is_global_zero or step == self._last_step:
            return
        if step % self.every_n_steps == 0 or step == trainer.max_steps:
            self._last_step = step
            metrics = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("train/") and getattr(v, "numel", lambda: 1)() == 1
            }
            shown = " ".join(f"{k[6:]}={v:.4g}" for k, v in sorted(metrics.items())[:8])
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else "?"
            elapsed = time.monotonic() - self._start
            print(
                f"[perceiver-vl] epoch {trainer.current_epoch} step {step}/{total} "
                f"{elapsed:.0f}s {shown}",
                file=sys.stderr,
                flush=True,
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active() or not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "test/")) and getattr(v, "numel", lambda: 1)() == 1
        }
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        print(f"[perceiver-vl] step {trainer.global_step} {shown}", file=sys.stderr, flush=True)


__all__ = [
    "AtomicCheckpointIO",
    "RunCheckpoint",
    "SaveConfigBesideCheckpoints",
    "TextProgress",
    "atomic_torch_save",
]
