"""The paper's analyses as commands: ``perceiver-vl analyze latent-size|input-size|cross-attention|streams``."""

from .studies import RUNNERS, STUDIES, cross_attention, input_size, latent_size, streams

__all__ = ["RUNNERS", "STUDIES", "cross_attention", "input_size", "latent_size", "streams"]
