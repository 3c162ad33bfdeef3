"""Training of Perceiver-VL on Lightning (the model itself stays Lightning-free).

Belongs here: the LightningModule (``module``, a thin composition) and data module, the typed
training options (``options``), the starting model (``build``), objectives and losses
(``objectives``, ``losses``), optimiser groups, weight decay, schedule and freezing (``optim``),
the validation-epoch metrics (``validation``), the training CLI and callbacks, resumption,
checkpoint export, and the ``perceiver-vl evaluate`` command (it reads a data config through the
data module; the evaluation itself is :mod:`perceiver_vl.evaluation`). Lightning is imported by
``module``, ``datamodule``, ``cli``, ``callbacks``, ``guards`` and ``resume`` only; ``options``,
``build``, ``losses``, ``objectives``, ``optim``, ``validation``, ``locked_text`` and
``latent_decoder`` work without it.
May import: :mod:`perceiver_vl.model`, :mod:`perceiver_vl.data`, :mod:`perceiver_vl.metrics`,
:mod:`perceiver_vl.evaluation`, :mod:`perceiver_vl.fileio`, Lightning and jsonargparse (the
``train`` extra); not retrieval, bench, serve, demo or analysis.

Public names (imported lazily, so ``import perceiver_vl.train`` is cheap):

* :class:`PerceiverVLModule`, :class:`PerceiverVLDataModule`, :class:`PerceiverVLCLI`;
* :func:`fit` / :class:`FitResult` (programmatic training);
* :func:`export_checkpoint` (Lightning checkpoint -> safetensors + config.json).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "PerceiverVLModule": "module",
    "PerceiverVLDataModule": "datamodule",
    "PerceiverVLCLI": "cli",
    "lightning_main": "cli",
    "fit": "api",
    "FitResult": "api",
    "export_checkpoint": "export_cli",
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_NAMES)
