"""Data for perceiver-vl: tokenisation, masked-LM corruption, media decoding, data sets.

Belongs here: everything between files on disk and tensors: the tokenizer (and its shipped
vocabulary), video/image decoding and frame sampling, data set readers, collation and masking,
webdataset shards, the synthetic benchmark generator.

This package knows nothing of the model or of training; it only imports torch, numpy, av,
Pillow, tokenizers, tqdm, the standard library and :mod:`perceiver_vl.fileio`.
"""

from perceiver_vl.data.batching import SharedWordBatchSampler
from perceiver_vl.data.benchmarks import LSMDC, NLVR2, TGIFQA, ActivityNetCaptions
from perceiver_vl.data.cache import CachedClips
from perceiver_vl.data.collate import Collator, collate, visual_inputs
from perceiver_vl.data.datasets import (
    CC3M,
    MSRVTTQA,
    AnswerVocab,
    CaptionDataset,
    DiDeMo,
    Entry,
    KarpathyCaptions,
    MediaTextDataset,
    MSRVTTRetrieval,
    VQAv2,
    WebVid,
    normalize_answer,
    read_annotations,
    vqa_score,
)
from perceiver_vl.data.failures import FailureTracker, MediaError, TooManyFailuresError
from perceiver_vl.data.masking import IGNORE_INDEX, MLMCollator, mask_tokens
from perceiver_vl.data.media import (
    VideoReader,
    is_image_path,
    load_image,
    load_media,
    load_video,
    sample_frame_indices,
)
from perceiver_vl.data.splits import holdout_ids
from perceiver_vl.data.tokenizer import Tokenizer, default_vocab_path
from perceiver_vl.data.webdataset import WebDatasetShards, expand_urls

__all__ = [
    "LSMDC",
    "NLVR2",
    "TGIFQA",
    "ActivityNetCaptions",
    "holdout_ids",
    "CachedClips",
    "SharedWordBatchSampler",
    "CC3M",
    "MSRVTTQA",
    "AnswerVocab",
    "CaptionDataset",
    "Collator",
    "DiDeMo",
    "Entry",
    "KarpathyCaptions",
    "MSRVTTRetrieval",
    "MediaTextDataset",
    "VQAv2",
    "WebDatasetShards",
    "WebVid",
    "expand_urls",
    "collate",
    "normalize_answer",
    "read_annotations",
    "visual_inputs",
    "vqa_score",
    "IGNORE_INDEX",
    "FailureTracker",
    "MLMCollator",
    "MediaError",
    "Tokenizer",
    "TooManyFailuresError",
    "VideoReader",
    "default_vocab_path",
    "is_image_path",
    "load_image",
    "load_media",
    "load_video",
    "mask_tokens",
    "sample_frame_indices",
]
