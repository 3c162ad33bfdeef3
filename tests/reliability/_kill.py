"""A callback that SIGKILLs its own ``fit`` process (the resumption tests' crash)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    """SIGKILL the process when training is about to run optimiser step ``step + 1``: the
    checkpoint of step ``step`` is on disk, nothing after it is."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
