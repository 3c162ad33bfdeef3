"""Every user error of the command line is one message and a non-zero exit, never a traceback;
--debug / PERCEIVER_VL_DEBUG=1 show the traceback; checkpoint files that fail are named."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
import yaml

from perceiver_vl.cli import main
from perceiver_vl.errors import DEBUG_ENV, describe_user_error
from perceiver_vl.train.callbacks import AtomicCheckpointIO, atomic_torch_save


def _fails(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 1 and return stderr (which must hold no traceback)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"perceiver-vl {argv[0]}: error:" in err
    return err


def test_info_on_a_saved_model_uses_its_own_limits(saved_model, capsys):
    assert main(["info", "--model", str(saved_model)]) == 0
    out = capsys.readouterr().out
    assert "4 x 32x32 frames + 16 text tokens" in out


def test_info_with_more_frames_than_the_model_takes(saved_model, capsys):
    err = _fails(["info", "--model", str(saved_model), "--frames", "9"], capsys)
    assert "--frames=9 is outside what this model takes: its max_frames is 4" in err


def test_info_on_a_truncated_model_names_the_file(saved_model, capsys):
    weights = saved_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    err = _fails(["info", "--model", str(saved_model)], capsys)
    assert "model.safetensors' is not a readable safetensors file" in err


def test_info_on_a_missing_model_folder(tmp_path, capsys):
    err = _fails(["info", "--model", str(tmp_path / "nowhere")], capsys)
    assert "config.json' not found" in err


def test_info_with_a_config_json_of_string_numbers(saved_model, capsys):
    path = saved_model / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_heads": "2"}))
    err = _fails(["info", "--model", str(saved_model)], capsys)
    assert "PerceiverVLConfig.num_heads must be an integer, got '2'" in err


def test_export_of_a_safetensors_file(saved_model, tmp_path, capsys):
    err = _fails(["export", str(saved_model / "model.safetensors"), str(tmp_path / "o")], capsys)
    assert "is a safetensors file, not a PyTorch checkpoint" in err


def test_convert_official_on_a_text_file(tmp_path, capsys):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    err = _fails(["convert-official", str(tmp_path / "notes.ckpt"), str(tmp_path / "o")], capsys)
    assert "is not a PyTorch checkpoint (neither a zip archive nor a pickle" in err


def test_search_on_a_missing_index(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "none"), "a dog"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(saved_model):
    with pytest.raises(ValueError, match="--frames=9"):
        main(["info", "--model", str(saved_model), "--frames", "9", "--debug"])


def test_debug_environment_variable_shows_the_traceback(saved_model, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="--frames=9"):
        main(["info", "--model", str(saved_model), "--frames", "9"])


def test_fit_with_a_word_for_a_number_in_the_model_config(make_config, tmp_path, capsys):
    config = make_config()
    config["model"]["model"]["num_heads"] = "two"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    err = _fails(["fit", "--config", str(path)], capsys)
    assert "num_heads must be an integer, got 'two'" in err


def test_fit_resuming_from_a_missing_checkpoint(make_config, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config()))
    err = _fails(["fit", "--config", str(path), "--ckpt_path", str(tmp_path / "gone.ckpt")], capsys)
    assert "--ckpt_path" in err and "gone.ckpt' does not exist" in err


def test_checkpoint_io_names_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(ValueError, match="last.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_checkpoint_io_lists_the_checkpoints_that_exist(tmp_path):
    atomic_torch_save({"state_dict": {}}, tmp_path / "step0000002.ckpt")
    with pytest.raises(FileNotFoundError, match=r"\['step0000002.ckpt'\]"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def full(obj, handle):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos; file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="is the disk full") as caught:
        atomic_torch_save({"step": 2}, path)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert "no space left on the device" in describe_user_error(caught.value)


@pytest.mark.parametrize(
    ("error", "phrase"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/x"), "no space left"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not valid UTF-8"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "permission denied"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.yaml"), "a.yaml"),
        (json.JSONDecodeError("Expecting value", "x", 0), "Expecting value"),
        (RuntimeError("PytorchStreamReader failed reading zip archive"), "truncated or corrupt"),
    ],
)
def test_known_library_errors_are_user_errors(error, phrase):
    assert phrase in describe_user_error(error)


@pytest.mark.parametrize(
    "error", [KeyError("x"), TypeError("bad"), RuntimeError("CUDA out of memory"), IndexError()]
)
def test_bugs_keep_their_traceback(error):
    assert describe_user_error(error) is None


def test_evaluate_never_writes_into_the_model_folder():
    from perceiver_vl.train import evaluate_cli

    source = Path(evaluate_cli.__file__).read_text()
    assert 'Path(args.model) / f"eval_' not in source
