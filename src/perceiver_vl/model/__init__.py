"""The Perceiver-VL model: pure PyTorch, knows nothing of data or training.

Belongs here: the config (``config``), attention blocks, input embeddings, the encoder (latents,
the cross-attention schedule, LayerDrop), the decoder queries, the heads, the stream modes,
named sizes (``presets``), weights I/O and conversion, FLOP counting, ``perceiver-vl info``.

May import: torch, safetensors, the standard library and :mod:`perceiver_vl.fileio`; nothing
else of ours.

Modules are layered (docs/architecture.md): config -> attention blocks -> embeddings / encoder /
decoder / heads -> weights -> modeling -> streams; none imports a module above it.
"""

from .config import PerceiverVLConfig
from .modeling import PerceiverVL, PerceiverVLOutput
from .presets import PRESETS, preset, preset_fields, preset_names
from .streams import StreamMode
from .weights import ConversionReport, load_vit_weights

__all__ = [
    "ConversionReport",
    "PerceiverVL",
    "PerceiverVLConfig",
    "PRESETS",
    "PerceiverVLOutput",
    "StreamMode",
    "load_vit_weights",
    "preset",
    "preset_fields",
    "preset_names",
]
