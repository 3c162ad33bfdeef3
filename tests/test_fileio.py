"""The atomic-write helper: contents, no temporary file left behind, the old file intact on error."""

from __future__ import annotations

import json
import os

import pytest

from perceiver_vl import fileio


class Boom(RuntimeError):
    pass


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(fileio.TMP_SUFFIX))


def test_bytes_text_and_json_are_written(tmp_path):
    fileio.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    fileio.atomic_write_text(tmp_path / "b.txt", "caf\u00e9\n")
    fileio.atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=None)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "caf\u00e9\n"
    assert (tmp_path / "c.json").read_text() == '{"x": [1, 2]}\n'
    assert _leftovers(tmp_path) == []


def test_existing_file_is_replaced_and_parents_are_made(tmp_path):
    target = tmp_path / "deep" / "er" / "out.json"
    fileio.atomic_write_json(target, {"v": 1})
    fileio.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("helper", ["open", "path"])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, helper):
    target = tmp_path / "report.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        if helper == "open":
            with fileio.atomic_open(target, "w") as handle:
                handle.write("half of the new")
                raise Boom
        else:
            with fileio.atomic_path(target) as tmp:
                tmp.write_text("half of the new")
                raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.txt"]


def test_a_failing_writer_leaves_no_file_when_there_was_none(tmp_path):
    with pytest.raises(Boom), fileio.atomic_open(tmp_path / "new.bin") as handle:
        handle.write(b"x")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("{}\n")
    with pytest.raises(TypeError):
        fileio.atomic_write_json(target, {"bad": object()})
    assert target.read_text() == "{}\n"
    assert os.listdir(tmp_path) == ["m.json"]


def test_atomic_path_serves_writers_that_need_a_file_name(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    target = tmp_path / "w.safetensors"
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        save_file({"w": torch.arange(3.0)}, str(tmp))
    assert torch.equal(load_file(str(target))["w"], torch.arange(3.0))
    assert _leftovers(tmp_path) == []


def test_atomic_open_refuses_a_reading_mode(tmp_path):
    with pytest.raises(ValueError, match="mode='r'"), fileio.atomic_open(tmp_path / "x", "r"):
        pass


def test_atomic_savefig_takes_the_format_from_the_target_suffix(tmp_path):
    class Figure:
        def savefig(self, path, *, format, dpi):
            assert str(path).endswith(fileio.TMP_SUFFIX)
            with open(path, "w") as handle:
                handle.write(f"{format} at {dpi}")

    fileio.atomic_savefig(Figure(), tmp_path / "plot.PNG", dpi=110)
    fileio.atomic_savefig(Figure(), tmp_path / "plot.svg", dpi=72)
    assert (tmp_path / "plot.PNG").read_text() == "png at 110"
    assert (tmp_path / "plot.svg").read_text() == "svg at 72"
    assert _leftovers(tmp_path) == []
