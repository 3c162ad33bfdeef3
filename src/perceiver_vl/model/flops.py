"""Forward FLOP counting (a multiply-add counts as 2 FLOPs; GMACs = GFLOPs / 2).

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and fused attention
kernels, but on the CPU SDPA dispatches to a kernel it does not count; forcing the math backend
makes attention visible as the two matmuls it is. Element-wise work (LayerNorm, GELU, softmax) is
not counted, as is usual for transformer FLOP figures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, **forward_inputs: Any) -> int:
    """FLOPs of one ``model(**forward_inputs)`` call, attention included.

    Counted without building an autograd graph; works whatever the caller's grad mode
    (plain, ``torch.no_grad()`` or ``torch.inference_mode()``).
    """
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            model(**forward_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_flops_of(fn, *args: Any, **kwargs: Any) -> int:
    """FLOPs of any callable (e.g. ``model.encode``), counted the same way."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
