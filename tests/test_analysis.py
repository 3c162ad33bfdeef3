"""Every analysis command runs in --quick mode and writes its JSON, Markdown and plot."""

import json

import pytest

from perceiver_vl.cli import main
from perceiver_vl.demo.recipe import DemoSettings


@pytest.fixture(scope="module")
def quick_benchmark(tmp_path_factory):
    from perceiver_vl.data.synthetic import generate_benchmark

    s = DemoSettings.quick()
    root = tmp_path_factory.mktemp("bench") / "data"
    generate_benchmark(
        root,
        num_train=s.num_train,
        num_val=s.num_val,
        num_test=s.num_test,
        frames=s.frames,
        size=s.size,
        seed=0,
        progress=False,
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("study", ["latent-size", "cross-attention", "streams", "input-size"])
def test_analysis_quick(study, quick_benchmark, tmp_path, capsys):
    out = tmp_path / study
    args = ["analyze", study, "--quick", "--out", str(out), "--no-progress"]
    if study != "input-size":
        args += ["--data", str(quick_benchmark)]
    assert main(args) == 0
    name = study.replace("-", "_")
    payload = json.loads((out / f"{name}.json").read_text())
    rows = payload["rows"]
    assert rows and (out / f"{name}.md").is_file() and (out / f"{name}.png").stat().st_size > 1000
    if study in ("latent-size", "cross-attention"):  # both the multi- and mixed-stream R@1
        keys = {f"{m}_{d}_r1" for m in ("multi", "mixed") for d in ("t2v", "v2t")}
        assert all(keys <= set(r) and all(0 <= r[k] <= 100 for k in keys) for r in rows)
    if study == "latent-size":
        assert [r["latents"] for r in rows] == [8, 16]
        assert rows[1]["gflops"] > rows[0]["gflops"]  # cost grows with N
    if study == "cross-attention":
        assert {r["trained_layerdrop"] for r in rows} == {0.5, 0.0}
        assert {r["blocks"] for r in rows} == {"[0]", "[0, 1]"}
    if study == "streams":
        assert {r["mode"] for r in rows} == {"single", "multi", "mixed", "rerank"}
    if study == "input-size":
        pvl = {
            r["frames"]: r["gflops"]
            for r in rows
            if r["model"] == "perceiver-vl" and r["sweep"] == "frames"
        }
        joint = {
            r["frames"]: r["gflops"]
            for r in rows
            if r["model"] == "joint" and r["sweep"] == "frames"
        }
        # the joint transformer's cost grows faster with frames than Perceiver-VL's
        assert joint[4] - joint[1] > pvl[4] - pvl[1] > 0
    assert "rows ->" in capsys.readouterr().out


def test_data_folder_is_checked(tmp_path):
    with pytest.raises(SystemExit, match="train.jsonl"):
        main(["analyze", "streams", "--quick", "--data", str(tmp_path)])
