"""Exact resumption: every source of training randomness is a function of saved state.

A run killed at any step and resumed with ``--ckpt_path last`` ends with the same weights as the
uninterrupted run (bit-identical on the CPU; ``tests/reliability/test_training.py`` kills a real
``fit`` process with SIGKILL to check it). The sources and where their state lives:

- **sample order**: :class:`EpochSampler`, a permutation drawn from ``(seed, epoch)``; the data
  module saves the epoch and the batches consumed in it, and a resumed run skips those batches
  instead of starting the epoch again;
- **per-sample randomness** (frames, crops, caption choice): the data sets' own generators keyed on
  ``(seed, epoch, index)``; the epoch is restored with the sampler's;
- **masked-LM masking**: the :class:`~perceiver_vl.data.Collator`'s generator keyed on
  ``(seed, epoch, the batch's sample indices)``, the same in every worker and every run;
- **LayerDrop and negatives**: drawn from ``(seed, optimiser step)`` by the module (the step is
  restored by Lightning);
- **dropout and anything else on the global RNG**: :class:`StepSeeding` seeds the global RNGs at
  the start of every training batch from ``(base seed, step, micro-batch, rank)``, so nothing a
  run did before (validation, loader start-up, a different number of restarts) leaks into
  training. Its state (base seed, and the RNG states at save time) is saved in the checkpoint.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DistributedSampler


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (ints / strings), identical in every process and Python run
    (unlike ``hash`` of a string, which ``PYTHONHASHSEED`` randomises)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EpochSampler(DistributedSampler):
    """Sample order drawn from ``(seed, epoch)`` alone, resumable mid-epoch, sharded by rank.

    A ``DistributedSampler`` so that Lightning keeps it under DDP (instead of wrapping it in a
    sampler that would never see the epoch) and calls :meth:`set_epoch` on it every epoch.
    With several ranks each takes every ``num_replicas``-th index of the epoch's order, padded
    by repetition to equal length (as ``DistributedSampler``).

    Args:
        length: number of samples of the data set.
        shuffle: a permutation per epoch (training) or ``0..length-1`` (evaluation).
        seed: seeds the permutations.
        num_replicas, rank: data-parallel world size and this process's rank.
        shuffled_order: with ``shuffle``, draws the epoch's order instead of a uniform
            permutation (called with the epoch; e.g. caption-grouped batches,
            :meth:`perceiver_vl.data.SharedWordBatchSampler.order`).
        on_epoch: called with the epoch whenever it changes (the data set's and the collator's
            ``set_epoch``), so per-epoch randomness follows the sampler everywhere, including in
            loader workers started after the change.
    """

    # DistributedSampler.__init__ is not called: it needs a process group
    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffled_order: Callable[[int], Any] | None = None,
        on_epoch: list[Callable[[int], Any]] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must lie in [0, num_replicas={num_replicas})")
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = False
        self.epoch = 0
        self.on_epoch = list(on_epoch or [])
        self.shuffled_order = shuffled_order
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on (Lightning calls this)."""
        self.epoch = int(epoch)
        for callback in self.on_epoch:
            callback(self.epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """The next iteration is epoch ``epoch`` with this rank's first ``skip`` samples left
        out."""
        self.set_epoch(epoch)
        self._skip = max(0, int(skip))

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices of ``epoch`` in the order they are drawn."""
        if self.shuffle and self.shuffled_order is not None:
            order = torch.as_tensor(self.shuffled_order(epoch), dtype=torch.long)
        elif self.shuffle:
            generator = torch.Generator().manual_seed(stable_seed("sampler", self.seed, epoch))
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            if total > self.length:  # pad by repetition so every rank has as many samples
                order = order.repeat(-(-total // max(1, self.length)))[:total]
            order = order[self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        yield from self.order(self.epoch)[skip:].tolist()

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)


def _global_rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # plain Python values: checkpoints are loaded with weights_only=True
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
    }


def _set_global_rng_states(states: dict[str, Any]) -> None:
    if "torch" in states:
        torch.set_rng_state(torch.as_tensor(states["torch"], dtype=torch.uint8))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


class StepSeeding(pl.Callback):
    """Seed the global RNGs (torch, numpy, random) at the start of every training batch from
    ``(base seed, optimiser step, micro-batch, rank)``: dropout and any other draw from the global
    generators is then a function of the step, which a resumed run restores exactly.

    The base seed is the global seed at the start of the first fit (``seed_everything``) and is
    kept in the checkpoint, with the global RNG states at save time (restored on load, for code
    that draws between the restore and the first batch).
    """

    def __init__(self) -> None:
        self.base_seed: int | None = None

    @property
    def state_key(self) -> str:
        return "StepSeeding"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.base_seed is None:
            self.base_seed = int(torch.initial_seed())

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        seed = stable_seed(
            "step", self.base_seed, trainer.global_step, batch_idx % accumulate, trainer.global_rank
        )
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed, "rng": _global_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = state_dict.get("base_seed", self.base_seed)
        if state_dict.get("rng"):
            _set_global_rng_states(state_dict["rng"])


__all__ = ["EpochSampler", "StepSeeding", "stable_seed"]
