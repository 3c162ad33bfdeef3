from __future__ import annotations

import argparse
import json

import pytest

from perceiver_vl.bench import ROW_KEYS, plot_efficiency, plot_retrieval_time, write_plots
from perceiver_vl.bench.cli import (
    add_arguments,
    cases_from_args,
    format_table,
    settings_from_args,
    summarize_targets,
)
from perceiver_vl.cli import main

from .conftest import tiny_bench_config

PNG = b"\x89PNG\r\n\x1a\n"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _row(model="perceiver-vl", frames=8, dtype="fp32", ms=100.0, gflops=40.0, **extra):
    row = {
        "model": model,
        "frames": frames,
        "image_size": 384,
        "latents": 128 if model == "perceiver-vl" else None,
        "cross_attention_layers": [0, 1, 2] if model == "perceiver-vl" else None,
        "dtype": dtype,
        "batch": 1,
        "gflops": gflops,
        "gmacs": gflops / 2,
        "latency_ms_median": ms,
        "latency_ms_p10": ms * 0.9,
        "latency_ms_p90": ms * 1.1,
        "peak_mem_mb": 10.0,
        "samples_per_s": 1e3 / ms,
        "mode": "forward",
        "sweep": "main",
        "text_length": 40,
        "pairs": None,
        "gflops_per_s": gflops / ms * 1e3,
        "matmul_gflops_per_s": 500.0,
        "fraction_of_matmul_peak": gflops / ms * 1e3 / 500.0,
        "repeats": 3,
        "status": "ok",
    }
    row.update(extra)
    return row


def test_defaults_are_the_paper_comparison():
    args = _parse()
    cases = cases_from_args(args)
    assert {c.model for c in cases} == {"perceiver-vl", "joint"}
    assert {c.dtype for c in cases} == {"fp32", "bf16"}
    assert {c.frames for c in cases} == {8, 32}
    assert {(c.image_size, c.latents, c.cross_attention_layers) for c in cases} == {
        (384, 128, (0, 1, 2))
    }


def test_options_select_cases_and_settings():
    args = _parse("--frames", "8,16,32", "--dtypes", "fp32", "--batch", "1", "--sweep", "all")
    cases = cases_from_args(args)
    assert {c.sweep for c in cases} == {
        "main",
        "frames",
        "image-size",
        "latents",
        "blocks",
        "streams",
    }
    assert {c.dtype for c in cases} == {"fp32"}
    quick = settings_from_args(_parse("--quick", "--threads", "1"))
    assert quick.min_repeats == 2 and quick.threads == 1 and quick.matmul_size == 2048
    assert {c.batch for c in cases_from_args(_parse("--quick"))} == {1}


@pytest.mark.parametrize(
    "argv", [["--frames", "8,x"], ["--frames", "0"], ["--dtypes", "fp16"], ["--sweep", "depth"]]
)
def test_bad_options_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert "expected" in capsys.readouterr().err


def test_table_and_targets():
    rows = [
        _row(ms=100.0, gflops=42.5),
        _row(dtype="bf16", ms=35.0, gflops=42.5),
        _row(frames=32, ms=200.0, gflops=87.6),
        _row(model="joint", ms=1000.0, gflops=262.0),
        _row(model="joint", frames=32, ms=9000.0, gflops=1624.0),
    ]
    table = format_table(rows)
    assert "GFLOPs" in table and "GMACs" in table and "%peak" in table
    assert len(table.splitlines()) == 2 + len(rows)
    markdown = format_table(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| model |") and len(markdown) == 2 + len(rows)
    assert all(line.count("|") == markdown[0].count("|") for line in markdown)
    lines = summarize_targets(rows)
    text = "\n".join(lines)
    assert "85 % of the fp32 matmul" in text and "met" in lines[0]
    assert "2.86x" in text
    assert "243 % of the bf16 matmul throughput" in text  # both precisions against their own rate
    assert "perceiver-vl fp32 latency 8 -> 32 frames: x2.00" in text
    assert "joint fp32 latency 8 -> 32 frames: x9.00" in text
    assert "NOT met" not in text
    slow = summarize_targets([_row(ms=500.0), _row(dtype="bf16", ms=500.0)])
    assert "NOT met" in slow[0] and "bf16 matmul" in slow[1] and "NOT met" in slow[1]


def test_plots_are_written(tmp_path):
    rows = [_row(frames=t, ms=10.0 * t, gflops=5.0 * t) for t in (1, 2, 4)]
    rows += [_row(model="joint", frames=t, ms=t * t * 10.0, gflops=t * t * 5.0) for t in (1, 2, 4)]
    rows += [
        _row(mode=mode, batch=n, pairs=n * n, sweep="streams", ms=n * 10.0)
        for mode in ("single", "multi")
        for n in (2, 4)
    ]
    path = plot_efficiency(rows, tmp_path / "eff.png")
    assert path.read_bytes().startswith(PNG)
    assert plot_retrieval_time(rows, tmp_path / "s.png").read_bytes().startswith(PNG)
    written = write_plots(rows, tmp_path / "all")
    assert {p.name for p in written} == {"efficiency_frames.png", "streams.png"}
    with pytest.raises(ValueError, match="empty"):
        plot_efficiency([], tmp_path / "none.png")


def test_command_end_to_end(tmp_path, capsys):
    config = tmp_path / "config.json"
    tiny_bench_config().to_json_file(config)
    out = tmp_path / "rows.json"
    argv = ["bench", "--config", str(config), "--image-size", "32", "--frames", "2,4"]
    argv += ["--quick", "--dtypes", "fp32", "--matmul-size", "64", "--budget-s", "0"]
    argv += ["--json", str(out), "--plot", str(tmp_path / "img")]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 4  # 2 models x 2 frame counts
    assert all(set(ROW_KEYS) <= set(r) for r in rows)
    printed = capsys.readouterr().out
    assert "matmul fp32 64x64" in printed and "GFLOPs" in printed
    assert (tmp_path / "img" / "efficiency_frames.png").read_bytes().startswith(PNG)


def test_indexing_throughput_row(tmp_path, capsys):
    # decode + encode through the index builder on generated clips: one row, mode "index"
    config = tmp_path / "config.json"
    tiny_bench_config().to_json_file(config)
    out = tmp_path / "rows.json"
    argv = ["bench", "--config", str(config), "--image-size", "32", "--frames", "2"]
    argv += ["--quick", "--models", "perceiver-vl", "--dtypes", "fp32", "--matmul-size", "64"]
    argv += ["--budget-s", "0", "--index-videos", "3", "--index-batch", "2", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    (index,) = [r for r in rows if r["mode"] == "index"]
    assert index["videos"] == 3 and index["batch"] == 2 and index["frames"] == 2
    assert index["image_size"] == 32 and index["dtype"] == "fp32"
    assert index["samples_per_s"] > 0 and index["decode_ms_per_video"] > 0
    assert set(ROW_KEYS) <= set(index)
    printed = capsys.readouterr().out
    assert "videos/s" in printed and "index" in printed
    assert len(rows) == 2  # the forward row is still there


@pytest.mark.parametrize("option", [["--index-videos", "-1"], ["--index-batch", "0"]])
def test_indexing_options_are_checked(option):
    with pytest.raises(SystemExit, match="--index-videos must be >= 0 and --index-batch >= 1"):
        main(["bench", "--quick", *option])
