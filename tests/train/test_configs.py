"""Every shipped config parses with the CLI (no data or model is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perceiver_vl.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))


def test_expected_configs_exist():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS if p.parent.name != "configs"}
    assert {
        "pretrain/webvid_cc3m.yaml",
        "pretrain/synthetic.yaml",
        "finetune/msrvtt_retrieval.yaml",
        "finetune/didemo_retrieval.yaml",
        "finetune/msrvtt_qa.yaml",
        "finetune/vqav2.yaml",
        "finetune/msrvtt_retrieval_7k.yaml",
        "finetune/msrvtt_retrieval_full.yaml",
        "finetune/lsmdc_retrieval.yaml",
        "finetune/activitynet_retrieval.yaml",
        "finetune/flickr30k_retrieval.yaml",
        "finetune/tgif_frameqa.yaml",
        "finetune/tgif_action.yaml",
        "finetune/tgif_transition.yaml",
        "finetune/nlvr2.yaml",
    } <= names
    assert any(p.name == "smoke.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_dotted_overrides(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--trainer.max_steps", "7", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == 7
    assert printed["model"]["objectives"]
