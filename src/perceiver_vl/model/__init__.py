"""The Perceiver-VL model (pure PyTorch; knows nothing of data or training)."""

from .config import PerceiverVLConfig
from .modeling import PerceiverVL, PerceiverVLOutput
from .presets import PRESETS, preset, preset_fields, preset_names
from .weights import ConversionReport, load_vit_weights

__all__ = [
    "ConversionReport",
    "PerceiverVL",
    "PerceiverVLConfig",
    "PRESETS",
    "PerceiverVLOutput",
    "load_vit_weights",
    "preset",
    "preset_fields",
    "preset_names",
]
