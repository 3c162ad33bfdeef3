"""The Perceiver-VL model (pure PyTorch; knows nothing of data or training).

Modules are layered (docs/architecture.md): config -> attention blocks -> embeddings / encoder /
decoder / heads -> weights -> modeling -> streams; none imports a module above it.
"""

from .config import PerceiverVLConfig
from .modeling import PerceiverVL, PerceiverVLOutput
from .streams import StreamMode
from .weights import ConversionReport, load_vit_weights

__all__ = [
    "ConversionReport",
    "PerceiverVL",
    "PerceiverVLConfig",
    "PerceiverVLOutput",
    "StreamMode",
    "load_vit_weights",
]
