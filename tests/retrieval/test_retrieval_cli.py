"""``perceiver-vl index`` / ``perceiver-vl search`` through the real dispatcher."""

from __future__ import annotations

import json

import pytest

from perceiver_vl.cli import main


@pytest.fixture
def index_dir(collection, tiny_model_dir, tmp_path):
    root, _ = collection
    out = tmp_path / "index"
    argv = ["index", "--model", str(tiny_model_dir), "--videos", str(root / "test.jsonl")]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    return out


def test_index_then_rerun(index_dir, collection, tiny_model_dir, capsys):
    root, records = collection
    assert len(json.loads((index_dir / "manifest.json").read_text())["videos"]) == len(records)
    argv = ["index", "--model", str(tiny_model_dir), "--videos", str(root / "videos")]
    assert main([*argv, "--out", str(index_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "updated index" in out and "0 added" in out and f"{len(records)} unchanged" in out


def test_search_table_and_json(index_dir, collection, capsys):
    root, records = collection
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), "a red square moves left", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("query: 'a red square moves left'")
    assert len(lines) == 2 + 3 and lines[2].split()[0] == "1"
    assert lines[2].split()[2].startswith(str(root.resolve()))

    argv = ["search", "--index", str(index_dir), "a red square", "--json", "--mode", "multi"]
    assert main([*argv, "-k", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["mode"] == "multi" and len(payload["results"]) == 2
    assert set(payload["results"][0]) >= {"rank", "score", "video", "path"}

    argv = ["search", "--index", str(index_dir), "one", "two", "--json", "--mode", "mixed"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [p["query"] for p in payload] == ["one", "two"]
    assert all(len(p["results"]) == len(records) for p in payload)


def test_cli_errors_are_clear(index_dir, tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "missing"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["search", "--index", str(index_dir), "  "]) == 2
    assert "query 0 is empty" in capsys.readouterr().err
    shard = next(index_dir.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    assert main(["search", "--index", str(index_dir), "x"]) == 2
    assert "checksum" in capsys.readouterr().err
    assert main(["search", "--index", str(index_dir), "x", "--no-verify"]) == 0
