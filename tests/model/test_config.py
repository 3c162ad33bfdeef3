import pytest

from perceiver_vl import PerceiverVLConfig

from ..conftest import tiny_config


def test_defaults_are_the_paper_settings():
    c = PerceiverVLConfig()
    assert (c.hidden_size, c.num_heads, c.mlp_ratio, c.num_self_attention_layers) == (
        768,
        12,
        4.0,
        12,
    )
    assert c.cross_attention_before_layers == (0, 4, 8)
    assert (c.num_latents, c.patch_size, c.image_size, c.max_frames) == (128, 32, 384, 64)
    assert (c.max_text_length, c.vocab_size) == (40, 30522)
    assert (c.layer_norm_eps, c.text_layer_norm_eps, c.dropout, c.layerdrop) == (
        1e-6,
        1e-12,
        0.1,
        0.5,
    )
    assert c.grid_size == 12 and c.head_dim == 64


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(num_heads=5), "num_heads"),
        (dict(cross_attention_before_layers=(0, 4)), "cross_attention_before_layers"),
        (dict(cross_attention_before_layers=(2, 1)), "strictly increasing"),
        (dict(cross_attention_before_layers=()), "empty"),
        (dict(inference_cross_attention_blocks=(3,)), "out of range"),
        (dict(layerdrop=1.0), "layerdrop"),
        (dict(image_size=30), "multiple of"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(cross_attention_residual="post"), "cross_attention_residual"),
    ],
)
def test_invalid_settings_are_named(changes, words):
    with pytest.raises(ValueError, match=words):
        tiny_config(**changes)


def test_json_round_trip(tmp_path):
    c = tiny_config(inference_cross_attention_blocks=(0,))
    c.to_json_file(tmp_path / "config.json")
    assert PerceiverVLConfig.from_json_file(tmp_path / "config.json") == c


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="unknown PerceiverVLConfig fields"):
        PerceiverVLConfig.from_dict({"hidden_sise": 3})
