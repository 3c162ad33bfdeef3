"""The paper's analyses as commands: ``perceiver-vl analyze latent-size|input-size|cross-attention|streams``.

Each study trains with the demo's recipe (:mod:`perceiver_vl.demo.recipe`) and writes JSON,
Markdown and a plot. May import the public names of model, train, bench, demo and fileio.
"""

from .studies import RUNNERS, STUDIES, cross_attention, input_size, latent_size, streams

__all__ = ["RUNNERS", "STUDIES", "cross_attention", "input_size", "latent_size", "streams"]
