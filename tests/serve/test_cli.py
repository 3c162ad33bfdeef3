"""``perceiver-vl serve`` / ``serve-bench`` wiring: argument errors and a short load run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "fastapi", reason="the service tests need the serve extra: pip install '.[serve]'"
)
pytest.importorskip(
    "uvicorn", reason="the service tests need the serve extra: pip install '.[serve]'"
)

from perceiver_vl.cli import main  # noqa: E402


def test_serve_names_a_missing_index(tmp_path, capsys):
    assert main(["serve", "--index", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_bench_runs_concurrent_clients_without_errors(serve_index_dir, capsys):
    code = main(
        [
            "serve-bench",
            "--index",
            str(serve_index_dir),
            "--clients",
            "4",
            "--queries",
            "24",
            "--max-batch",
            "4",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["ok"] == 24 and result["errors"] == 0 and result["videos"] == 8
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert 1 <= result["mean_batch"] <= 4
