"""perceiver-vl: Perceiver-VL (Tang, Cho, Lei, Bansal, WACV 2023) as a library and CLI.

What lives where, and what each part may import (imports point down this list, never up):

- ``fileio``: atomic file writes; the standard library only, so any package may use it.
- ``model``: the pure-PyTorch model, its presets, weights and FLOP counter (``fileio``).
- ``data``: tokenizer, media decoding, data sets, the synthetic benchmark (``fileio``).
- ``metrics``: retrieval and QA metrics (torch and numpy only); ``flops``: the model's counter.
- ``evaluation``: retrieval in every stream mode and QA, no Lightning (``model``, ``data``,
  ``metrics``).
- ``train``: Lightning training and the ``evaluate`` command (``model``, ``data``, ``metrics``,
  ``evaluation``).
- ``retrieval``: the stored index and its search (``model``, ``data``).
- ``bench``: FLOPs, latency and scaling against a joint transformer (``model``).
- ``serve``: the HTTP search service (``retrieval``, ``model``).
- ``demo`` and ``analysis``: the demo job and the paper's analyses (any of the above).
- ``cli`` / ``errors``: the ``perceiver-vl`` entry point and its user-error messages.

``import perceiver_vl`` loads only the model.
"""

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig, PerceiverVLOutput

__version__ = "0.1.0"
__all__ = ["PerceiverVL", "PerceiverVLConfig", "PerceiverVLOutput", "__version__"]
