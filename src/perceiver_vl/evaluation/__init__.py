"""Evaluation of a trained model: retrieval in every stream mode (single, multi, mixed, and the
shortlist + re-rank forms) with wall times, open-ended QA and multiple choice.

Belongs here: the evaluation inputs (captions with their media, in memory or decoded batch by
batch), the shared encoding pass, the retrieval evaluator and the QA evaluators; used by
``train`` (the ``perceiver-vl evaluate`` command and the decoder stage), ``demo`` and ``analysis``.
May import: :mod:`perceiver_vl.model`, :mod:`perceiver_vl.data`, :mod:`perceiver_vl.metrics`,
:mod:`perceiver_vl.fileio`, torch and tqdm; never :mod:`perceiver_vl.train` or Lightning, so it
works with the base install.

Modules: ``inputs`` (:class:`RetrievalInputs`, :class:`StreamedRetrievalInputs` and their
loaders), ``encoding`` (:func:`encode_all`), ``retrieval`` (:func:`evaluate_retrieval`,
:func:`single_stream_score_matrix`), ``qa`` (:func:`evaluate_qa`,
:func:`evaluate_multiple_choice`).
"""

from .encoding import encode_all, precision_autocast
from .inputs import (
    RetrievalInputs,
    StreamedRetrievalInputs,
    load_retrieval_inputs,
    stream_retrieval_inputs,
)
from .qa import evaluate_multiple_choice, evaluate_qa
from .retrieval import MODES, evaluate_retrieval, single_stream_score_matrix

__all__ = [
    "MODES",
    "RetrievalInputs",
    "StreamedRetrievalInputs",
    "encode_all",
    "evaluate_multiple_choice",
    "evaluate_qa",
    "evaluate_retrieval",
    "load_retrieval_inputs",
    "precision_autocast",
    "single_stream_score_matrix",
    "stream_retrieval_inputs",
]
