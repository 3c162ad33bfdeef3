"""Streaming evaluation: media decoded batch by batch give the metrics of the in-memory
computation, and the number of decoded clips held at once is bounded by the batch size."""

from __future__ import annotations

import pytest
import torch

from perceiver_vl import PerceiverVL
from perceiver_vl.data import CaptionDataset, Tokenizer
from perceiver_vl.evaluation import (
    MODES,
    evaluate_retrieval,
    load_retrieval_inputs,
    stream_retrieval_inputs,
)
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.default(max_length=12)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=Tokenizer.default().vocab_size, max_text_length=12)
    return PerceiverVL(config).eval()


@pytest.fixture()
def test_split(synthetic_root):
    return CaptionDataset(synthetic_root / "test.jsonl", synthetic_root, num_frames=3, size=32)


def _without_times(results):
    return {
        mode: {k: v for k, v in metrics.items() if not k.endswith("seconds")}
        for mode, metrics in results.items()
    }


@pytest.mark.parametrize("single_candidates", [None, 3])
def test_streamed_metrics_equal_the_in_memory_ones(model, tokenizer, test_split, single_candidates):
    options = dict(modes=MODES, rerank_k=3, single_candidates=single_candidates, batch_size=4)
    in_memory = evaluate_retrieval(
        model, load_retrieval_inputs(test_split, tokenizer), single_batch_size=5, **options
    )
    streamed = stream_retrieval_inputs(test_split, tokenizer, batch_size=3)
    assert streamed.num_visual == 8
    out = evaluate_retrieval(model, streamed, single_batch_size=5, **options)
    expected, got = _without_times(in_memory), _without_times(out)
    assert got.keys() == expected.keys()
    for mode in expected:
        assert got[mode] == pytest.approx(expected[mode], abs=1e-6), mode
    # a data set given directly is streamed too
    direct = evaluate_retrieval(
        model, test_split, tokenizer=tokenizer, single_batch_size=5, **options
    )
    assert _without_times(direct)["multi"] == pytest.approx(expected["multi"], abs=1e-6)


class CountingMedia(torch.utils.data.Dataset):
    """Counts the clips decoded so far."""

    def __init__(self, media):
        self.media = media
        self.decoded = 0

    def __len__(self):
        return len(self.media)

    def __getitem__(self, index):
        self.decoded += 1
        return self.media[index]


def test_decoded_clips_held_at_once_are_bounded(model, tokenizer, test_split, monkeypatch):
    data = stream_retrieval_inputs(test_split, tokenizer, batch_size=2)
    data.media = counting = CountingMedia(data.media)
    held = []
    encoded = 0
    real_encode = model.encode

    def encode(*args, **kwargs):
        nonlocal encoded
        visual = kwargs.get("video")
        if visual is not None:
            # clips decoded and not yet encoded, this batch included
            held.append(counting.decoded - encoded)
            encoded += visual.shape[0]
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(model, "encode", encode)
    results = evaluate_retrieval(model, data, modes=("multi", "mixed"), batch_size=8)
    assert results["info"]["num_videos"] == 8 and encoded == 8
    assert len(held) == 4 and max(held) <= 2  # never the whole split (8) at once


def test_stream_inputs_refuse_a_bad_batch_size(tokenizer, test_split):
    with pytest.raises(ValueError, match="batch_size=0"):
        stream_retrieval_inputs(test_split, tokenizer, batch_size=0)


def test_a_failed_media_file_stops_streamed_evaluation(model, tokenizer, test_split, tmp_path):
    entries = list(test_split.entries)  # a JSON-lines index gives copies: edit a list of them
    entries[0].media = "missing.mp4"
    test_split.entries = entries
    data = stream_retrieval_inputs(test_split, tokenizer, batch_size=4)
    with pytest.raises(RuntimeError, match="evaluation needs every item"):
        evaluate_retrieval(model, data, modes=("multi",))


def test_progress_bars_for_media_and_captions_and_float32_latents(
    model, tokenizer, test_split, capsys
):
    from perceiver_vl.evaluation import encode_all

    data = stream_retrieval_inputs(test_split, tokenizer, batch_size=4, progress=True)
    visual, text, _, _ = encode_all(model, data, batch_size=4)
    err = capsys.readouterr().err
    assert "encoding media" in err and "8/8" in err
    assert "encoding captions" in err
    # kept latents are in the parameters' precision
    assert visual.dtype == text.dtype == next(model.parameters()).dtype == torch.float32
    quiet = stream_retrieval_inputs(test_split, tokenizer, batch_size=4)
    encode_all(model, quiet, batch_size=4)
    assert "encoding" not in capsys.readouterr().err


def test_latents_are_concatenated_without_holding_the_chunks_twice():
    from perceiver_vl.evaluation.encoding import _concat_releasing

    chunks = [torch.full((n, 2, 3), float(i)) for i, n in enumerate((2, 1, 3))]
    expected = torch.cat(chunks)
    out = _concat_releasing(chunks)
    assert torch.equal(out, expected)
    assert chunks == []  # each chunk released once copied
    assert torch.equal(_concat_releasing([expected]), expected)
