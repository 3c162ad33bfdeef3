"""The Perceiver-VL model (pure PyTorch; knows nothing of data or training)."""

from .config import PerceiverVLConfig
from .modeling import PerceiverVL, PerceiverVLOutput
from .weights import ConversionReport, load_vit_weights

__all__ = [
    "ConversionReport",
    "PerceiverVL",
    "PerceiverVLConfig",
    "PerceiverVLOutput",
    "load_vit_weights",
]
