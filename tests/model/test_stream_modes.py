"""StreamMode: the one name of each retrieval mode."""

import json

import pytest

from perceiver_vl.model import StreamMode
from perceiver_vl.model.streams import LATENT_MODES, STREAM_MODES, stream_mode


def test_modes_are_their_names_in_comparisons_and_json():
    assert [str(m) for m in STREAM_MODES] == ["single", "multi", "mixed", "rerank"]
    assert StreamMode("mixed") is StreamMode.MIXED and StreamMode.MIXED == "mixed"
    assert json.loads(json.dumps({StreamMode.RERANK: [StreamMode.MULTI]})) == {"rerank": ["multi"]}
    assert {"mixed": 1}[StreamMode.MIXED] == 1
    assert StreamMode.SINGLE not in LATENT_MODES


def test_stream_mode_parses_names_and_refuses_the_rest_naming_the_argument():
    assert stream_mode("multi") is StreamMode.MULTI
    assert stream_mode(StreamMode.RERANK, allowed=LATENT_MODES) is StreamMode.RERANK
    with pytest.raises(
        ValueError, match="modes must be one of single, multi, mixed, rerank; got 'fast'"
    ):
        stream_mode("fast", argument="modes")
    with pytest.raises(ValueError, match="mode must be one of multi, mixed, rerank; got 'single'"):
        stream_mode("single", allowed=LATENT_MODES)
    with pytest.raises(ValueError, match="got 3"):
        stream_mode(3)
