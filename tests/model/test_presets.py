"""Named model presets: one place for the sizes the demo, analyses, benchmarks and tests build."""

from __future__ import annotations

import json

import pytest

from perceiver_vl.cli import main
from perceiver_vl.demo.recipe import DemoSettings
from perceiver_vl.model import PerceiverVLConfig, preset, preset_fields, preset_names


def test_every_preset_builds_a_valid_config():
    assert set(preset_names()) >= {"paper", "small", "demo", "demo-quick", "tiny"}
    for name in preset_names():
        assert isinstance(preset(name), PerceiverVLConfig)


def test_paper_is_the_config_defaults():
    assert preset("paper") == PerceiverVLConfig()
    config = preset("paper")
    assert (config.hidden_size, config.num_latents, config.num_self_attention_layers) == (
        768,
        128,
        12,
    )


def test_overrides_apply_and_do_not_leak_into_the_preset():
    config = preset("tiny", max_frames=2, cross_attention_before_layers=(0,))
    assert config.max_frames == 2 and config.cross_attention_before_layers == (0,)
    fields = preset_fields("tiny")
    fields["hidden_size"] = 999
    assert preset("tiny").hidden_size == 32


def test_demo_quick_is_the_demo_model_at_half_width():
    demo, quick = preset_fields("demo"), preset_fields("demo-quick")
    changed = {k for k in demo if demo[k] != quick[k]}
    assert changed == {"hidden_size", "num_heads", "num_latents", "contrastive_dim"}
    assert quick["hidden_size"] * 2 == demo["hidden_size"]


def test_the_demo_settings_train_the_demo_presets():
    assert DemoSettings.full().model == preset_fields("demo")
    assert DemoSettings.quick().model == preset_fields("demo-quick")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: preset("huge"), r"preset='huge'.*'tiny'"),
        (lambda: preset("tiny", hidden=3), r"unknown PerceiverVLConfig fields \['hidden'\]"),
    ],
)
def test_bad_names_are_refused_with_the_choices(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_info_prints_a_preset(capsys):
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["hidden_size"] == 32 and info["config"]["num_latents"] == 8
    assert info["parameters"] > 0


def test_info_refuses_both_a_model_and_a_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--preset", "tiny", "--model", str(tmp_path)])
    assert exit_info.value.code != 0
    assert "--preset 'tiny'" in capsys.readouterr().err
