"""Non-finite losses: stop the run with a message naming the step and the losses, or skip the
step and count it (``nonfinite:`` in a fit config)."""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

import lightning.pytorch as pl
import torch


class NonFiniteLossError(ValueError):
    """A training loss was NaN or inf and ``nonfinite.on_loss`` is ``stop``."""


class NonFiniteGuard(pl.Callback):
    """Watch every training loss for NaN / inf before it reaches the weights.

    Args:
        on_loss: ``stop`` (default): raise :class:`NonFiniteLossError` naming the step and the
            non-finite loss terms, before the optimiser step, so the last checkpoint holds finite
            weights. ``skip``: drop the step's gradients (the optimiser leaves every weight as it
            was), count it, log ``train/nonfinite_skipped`` and go on.
        max_skipped: with ``skip``, stop once more than this many steps were skipped (None = no
            limit): a run that keeps diverging should not go on silently.
    """

    def __init__(
        self, on_loss: Literal["stop", "skip"] = "stop", max_skipped: int | None = 100
    ) -> None:
        if on_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite.on_loss={on_loss!r} must be 'stop' or 'skip'")
        if max_skipped is not None and (isinstance(max_skipped, bool) or max_skipped < 0):
            raise ValueError(f"nonfinite.max_skipped={max_skipped!r} must be >= 0 or null")
        self.on_loss = on_loss
        self.max_skipped = max_skipped
        self.skipped = 0
        self._bad_loss: float | None = None

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach().float())
        self._bad_loss = None if math.isfinite(value) else value

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        bad, self._bad_loss = self._bad_loss, None
        if bad is None:
            return
        terms = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("train/") and getattr(value, "numel", lambda: 1)() == 1
        }
        named = ", ".join(f"{k}={v}" for k, v in sorted(terms.items()) if not math.isfinite(v))
        where = f"step {trainer.global_step}: loss={bad}" + (f" ({named})" if named else "")
        if self.on_loss == "stop":
            raise NonFiniteLossError(
                f"non-finite training loss at {where}; the weights were not updated. Lower the "
                "learning rate, check the data, or set nonfinite.on_loss: skip to skip such "
                "steps (resume from the last checkpoint with --ckpt_path last)"
            )
        for param in pl_module.parameters():
            param.grad = None  # the optimiser skips parameters without a gradient
        self.skipped += 1
        print(
            f"[perceiver-vl] skipped a non-finite step at {where} ({self.skipped} skipped so far)",
            file=sys.stderr,
            flush=True,
        )
        pl_module.log("train/nonfinite_skipped", float(self.skipped), batch_size=1)
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            raise NonFiniteLossError(
                f"{self.skipped} training steps had non-finite losses (more than "
                f"nonfinite.max_skipped={self.max_skipped}); the run diverges: lower the "
                "learning rate or check the data"
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped:
            print(
                f"[perceiver-vl] {self.skipped} training steps were skipped for non-finite losses",
                file=sys.stderr,
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


__all__ = ["NonFiniteGuard", "NonFiniteLossError"]
