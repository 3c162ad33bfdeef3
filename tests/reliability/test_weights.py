"""Weights and checkpoints: the checksum and the recorded config are verified at load, what is
not a checkpoint is named as such, and non-finite weights are refused naming the tensor."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perceiver_vl import PerceiverVL
from perceiver_vl.model.weights import (
    load_safetensors,
    load_torch_file,
    read_checkpoint_file,
    state_checksum,
)
from perceiver_vl.train.export_cli import export_checkpoint


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_saved_weights_carry_a_checksum_and_their_config(saved_model, small_model):
    state, metadata = load_safetensors(saved_model / "model.safetensors")
    assert metadata["sha256"] == state_checksum(state) == state_checksum(small_model.state_dict())
    assert json.loads(metadata["perceiver_vl_config"])["num_heads"] == 2
    loaded = PerceiverVL.from_pretrained(saved_model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), small_model.state_dict().values())
    )


def test_a_flipped_bit_fails_the_checksum(saved_model):
    path = saved_model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum"):
        PerceiverVL.from_pretrained(saved_model)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_heads", 4),
        ("cross_attention_residual", "standard"),
        ("cross_attention_before_layers", [0]),
        ("modality_aggregation", "separate"),
        ("latent_position_encoding", "fourier"),
        ("frame_difference", True),
    ],
)
def test_a_config_json_that_disagrees_with_the_weights_is_refused(saved_model, field, value):
    _edit_config(saved_model, **{field: value})
    with pytest.raises(ValueError, match=rf"disagrees with the config .*{field}"):
        PerceiverVL.from_pretrained(saved_model)


def test_a_config_json_with_other_shapes_is_refused(saved_model):
    _edit_config(saved_model, hidden_size=64, num_heads=2)
    with pytest.raises(ValueError, match="hidden_size"):
        PerceiverVL.from_pretrained(saved_model)


@pytest.mark.parametrize(("field", "value"), [("dropout", 0.3), ("layerdrop", 0.2)])
def test_runtime_settings_may_change_in_config_json(saved_model, field, value):
    _edit_config(saved_model, **{field: value})
    assert getattr(PerceiverVL.from_pretrained(saved_model).config, field) == value


def test_weights_without_a_checksum_load_with_a_warning(saved_model, small_model):
    state = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    save_file(state, str(saved_model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="carries no checksum"):
        PerceiverVL.from_pretrained(saved_model)


def test_non_finite_weights_are_refused_naming_the_tensor(small_model, tmp_path):
    with torch.no_grad():
        small_model.encoder.latents[0, 0] = float("nan")
    folder = small_model.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"weight 'encoder.latents' holds 1 non-finite"):
        PerceiverVL.from_pretrained(folder)


def test_a_truncated_safetensors_file_is_named(saved_model):
    path = saved_model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"model.safetensors' is not a readable safetensors"):
        PerceiverVL.from_pretrained(saved_model)


def test_a_missing_weights_file_is_named(saved_model):
    (saved_model / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors' not found"):
        PerceiverVL.from_pretrained(saved_model)


def test_a_file_given_as_the_model_folder_is_explained(saved_model):
    with pytest.raises(ValueError, match="is a file; pass the model directory"):
        PerceiverVL.from_pretrained(saved_model / "config.json")


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"hello, I am text\n", "neither a zip archive nor a pickle"),
        (b"", "empty"),
        (b"PK\x03\x04" + b"\x00" * 60, "zip archive without its end"),
    ],
    ids=["text", "empty", "truncated-zip"],
)
def test_files_that_are_not_checkpoints_are_named(tmp_path, content, phrase):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=phrase):
        load_torch_file(path)


def test_a_safetensors_file_given_as_a_checkpoint_is_explained(saved_model):
    with pytest.raises(ValueError, match="is a safetensors file, not a PyTorch checkpoint"):
        export_checkpoint(saved_model / "model.safetensors", saved_model.parent / "out")


def test_a_truncated_torch_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="last.ckpt"):
        load_torch_file(path)


def test_pickled_code_is_refused_and_never_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Boom()}, path)
    with pytest.raises(ValueError, match="never unpickles arbitrary code"):
        read_checkpoint_file(path)


def test_export_of_a_checkpoint_without_state_dict_is_explained(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="is not a Lightning training checkpoint"):
        export_checkpoint(path, tmp_path / "out")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_torch_file(tmp_path / "nothing.ckpt")


def test_loading_a_good_model_raises_no_warning(saved_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PerceiverVL.from_pretrained(saved_model)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"{not json", "is not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "is not valid UTF-8 JSON"),
        (b"[1, 2]", "holds a list, not an object"),
    ],
)
def test_a_damaged_config_json_is_named(saved_model, content, phrase):
    (saved_model / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=phrase):
        PerceiverVL.from_pretrained(saved_model)


def test_truncated_vit_npz_weights_are_named(tmp_path):
    from perceiver_vl.model.weights import read_vit_state_dict

    path = tmp_path / "vit.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="vit.npz' are not a readable .npz"):
        read_vit_state_dict(path)
