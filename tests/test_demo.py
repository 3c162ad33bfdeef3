"""The main job in --quick mode, end to end (the slowest test: about two minutes on 2 cores)."""

import json

import pytest

from perceiver_vl.cli import main


@pytest.mark.slow
def test_demo_quick_writes_report_metrics_plots_and_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for mode in ("single", "multi", "mixed", "rerank"):
        row = metrics["retrieval"][mode]
        for key in ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1", "v2t_medr", "seconds"):
            assert key in row
        assert 0 <= row["t2v_r1"] <= 100 and row["seconds"] > 0
    assert metrics["chance_r1"] == pytest.approx(100 / metrics["num_test_pairs"])
    assert set(metrics["layerdrop"]) == {"all", "first"}
    assert metrics["layerdrop"]["first"]["cross_attention_layers"] == [0]
    frames = sorted({r["frames"] for r in metrics["efficiency"]})
    assert frames == [8, 16, 32]
    assert {r["model"] for r in metrics["efficiency"]} == {"perceiver-vl", "joint"}
    for name in ("report.md", "retrieval_time.png", "efficiency.png"):
        assert (out / name).is_file(), name
    assert (out / "model" / "model.safetensors").is_file()
    assert metrics["search_example"]["hits"][0]["rank"] == 1
    printed = capsys.readouterr().out
    assert "mixed-stream text->video R@1" in printed and "perceiver-vl search" in printed
