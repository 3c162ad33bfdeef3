"""perceiver-vl: Perceiver-VL (Tang, Cho, Lei, Bansal, WACV 2023) as a library and CLI."""

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig, PerceiverVLOutput

__version__ = "0.1.0"
__all__ = ["PerceiverVL", "PerceiverVLConfig", "PerceiverVLOutput", "__version__"]
