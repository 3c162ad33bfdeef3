"""FLOP counting: ``perceiver_vl.flops.count_flops(model, **forward_inputs) -> int``."""

from perceiver_vl.model.flops import count_flops, count_flops_of

__all__ = ["count_flops", "count_flops_of"]
