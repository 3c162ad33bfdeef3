import pytest
import torch

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
        (dict(initializer_range=0.0), "initializer_range"),
        (dict(initializer_range=-0.02), "initializer_range"),
    ],
)
def test_invalid_settings_are_named(changes, words):
    with pytest.raises(ValueError, match=words):
        tiny_config(**changes)


def test_initializer_range_sets_the_linear_weight_scale():
    """None: each linear layer at 1/sqrt(fan_in) (so its output keeps its input's scale at any
    width); a number: that std for every linear layer (0.02, the ViT-B choice)."""
    from perceiver_vl import PerceiverVL

    torch.manual_seed(0)
    for initializer_range in (None, 0.02):
        model = PerceiverVL(tiny_config(hidden_size=64, initializer_range=initializer_range))
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module.weight.numel() >= 4096:
                expected = initializer_range or module.in_features**-0.5
                assert module.weight.std().item() == pytest.approx(expected, rel=0.1), name


def test_json_round_trip(tmp_path):
    c = tiny_config(inference_cross_attention_blocks=(0,))
    c.to_json_file(tmp_path / "config.json")
    assert PerceiverVLConfig.from_json_file(tmp_path / "config.json") == c


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="unknown PerceiverVLConfig fields"):
        PerceiverVLConfig.from_dict({"hidden_sise": 3})
