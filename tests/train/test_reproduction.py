"""The reproduction protocol: held-out validation, effective batch, ViT-init strictness,
pretraining validation metrics, MSR-VTT / DiDeMo reading rules."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from perceiver_vl.data import DiDeMo, MSRVTTRetrieval, holdout_ids
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig
from perceiver_vl.train import fit
from perceiver_vl.train.module import PerceiverVLModule, accumulation_steps

from ..data.helpers import write_video
from .conftest import TINY_MODEL


def test_holdout_is_reproducible_and_order_free():
    ids = [f"video{i}" for i in range(1000)]
    held = holdout_ids(ids, 50, seed=0)
    assert len(held) == 50 and held <= set(ids)
    assert holdout_ids(reversed(ids), 50, seed=0) == held
    assert holdout_ids(ids + ids[:10], 50, seed=0) == held  # duplicates count once
    assert holdout_ids(ids, 50, seed=1) != held
    assert len(holdout_ids(ids, 0.1, seed=0)) == 100
    # ids added elsewhere move an id only across the cut, never arbitrarily
    grown = holdout_ids(ids + [f"extra{i}" for i in range(100)], 55, seed=0)
    assert len(held - grown) <= 5
    for bad in (0, -1, 1000, "5"):
        with pytest.raises(ValueError, match="holdout size"):
            holdout_ids(ids, bad)


def test_effective_batch_counts_every_training_set_and_rank():
    # WebVid + CC3M, 32 per device and set, 8 ranks: 512 samples per micro-step
    assert accumulation_steps(4096, 32, 2, 8) == (8, 4096)
    assert accumulation_steps(4096, 32, 1, 8) == (16, 4096)
    assert accumulation_steps(256, 24, 1, 1) == (11, 264)  # rounded up, never fewer


def _msrvtt(tmp_path):
    root = tmp_path / "msrvtt"
    (root / "annotations").mkdir(parents=True)
    data = {
        "videos": [{"video_id": f"video{i}", "split": "train"} for i in range(3)],
        "sentences": [
            {"video_id": f"video{i}", "caption": f"clip {i} caption {k}"}
            for i in range(3)
            for k in range(4)
        ],
    }
    (root / "annotations" / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "annotations" / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\n")
    return root


def test_msrvtt_val_is_never_the_test_split_and_training_sees_all_captions(tmp_path):
    root = _msrvtt(tmp_path)
    with pytest.raises(ValueError, match="1k-A test set"):
        MSRVTTRetrieval(root, "val", "9k")
    train = MSRVTTRetrieval(root, "train", "9k", train=True)
    assert len(train) == 12  # every caption of every video, every epoch
    assert len(MSRVTTRetrieval(root, "train", "9k")) == 3  # evaluation: one item per video
    assert len(MSRVTTRetrieval(root, "train", "9k", train=True, pairs=False)) == 3


def test_didemo_paragraph_follows_time_not_file_order(tmp_path):
    root = tmp_path / "didemo"
    (root / "annotations").mkdir(parents=True)
    rows = [
        {"video": "v.mp4", "description": "last.", "times": [[4, 5], [4, 4]]},
        {"video": "v.mp4", "description": "first.", "times": [[0, 0], [0, 1]]},
        {"video": "v.mp4", "description": "middle.", "times": [[2, 2]]},
        {"video": "v.mp4", "description": "untimed.", "times": None},
    ]
    (root / "annotations" / "test_data.json").write_text(json.dumps(rows))
    assert DiDeMo(root, "test").entries[0].captions == ["first. middle. last. untimed."]


def _vit_like(model: PerceiverVL, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        prefix = "encoder.self_attention_blocks."
        if key.startswith(prefix) and int(key[len(prefix) :].split(".")[0]) < layers:
            out["blocks." + key[len(prefix) :]] = value.clone()
    return out


def test_vit_init_refuses_missing_or_empty_and_reports(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.vit_weights"):
        PerceiverVLModule(model=dict(TINY_MODEL), vit_weights=str(tmp_path / "nope.safetensors"))
    save_file({"head.weight": torch.zeros(3, 3)}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="no tensor matched"):
        PerceiverVLModule(model=dict(TINY_MODEL), vit_weights=str(tmp_path / "empty.safetensors"))
    donor = PerceiverVL(PerceiverVLConfig.from_dict(dict(TINY_MODEL)))
    save_file(_vit_like(donor, 1), str(tmp_path / "partial.safetensors"))
    with pytest.warns(UserWarning, match="loaded only partly"):
        module = PerceiverVLModule(
            model=dict(TINY_MODEL), vit_weights=str(tmp_path / "partial.safetensors")
        )
    assert module.vit_report["loaded"] and module.vit_report["not_loaded"]
    loaded = module.model.state_dict()["encoder.self_attention_blocks.0.norm1.weight"]
    assert torch.equal(loaded, donor.state_dict()["encoder.self_attention_blocks.0.norm1.weight"])


def test_pretraining_validates_what_it_trains_and_saves_the_vit_report(make_config, tmp_path):
    donor = PerceiverVL(PerceiverVLConfig.from_dict(dict(TINY_MODEL)))
    save_file(_vit_like(donor, 4), str(tmp_path / "vit.safetensors"))
    config = make_config(limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None)
    config["model"].update(
        objectives=["matching", "mlm"], eval_modes=[], vit_weights=str(tmp_path / "vit.safetensors")
    )
    config["trainer"]["max_steps"] = 2
    result = fit(config)
    for key in ("val/matching_acc", "val/mlm_acc", "val/mlm_loss", "val/matching_loss"):
        assert key in result.metrics, sorted(result.metrics)
    assert not any("t2v" in key for key in result.metrics)
    report = json.loads((tmp_path / "run" / "checkpoints" / "vit_init_report.json").read_text())
    assert report["loaded"] and report["source"].endswith("vit.safetensors")


def test_holdout_validation_through_the_data_module(tmp_path):
    from perceiver_vl.train.datamodule import PerceiverVLDataModule

    root = _msrvtt(tmp_path)
    clip = write_video(tmp_path / "clip.mp4", 6, width=40, height=32)
    for i in range(3):
        (root / "videos").mkdir(exist_ok=True)
        (root / "videos" / f"video{i}.mp4").write_bytes(clip.read_bytes())
    spec = {"kind": "msrvtt", "root": str(root), "split": "train", "variant": "9k"}
    dm = PerceiverVLDataModule(
        train={**spec, "holdout": {"size": 1, "seed": 3}},
        val="holdout",
        num_frames=2,
        image_size=32,
    )
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(val.entries) == 1 and len(train.entries) == 2
    assert not {e.id for e in train.entries} & {e.id for e in val.entries}
    assert len(train) == 8 and len(val) == 1  # training pairs every caption; val one per video
    again = PerceiverVLDataModule(
        train={**spec, "holdout": {"size": 1, "seed": 3}},
        val="holdout",
        num_frames=2,
        image_size=32,
    )
    assert [e.id for e in again.dataset("val").entries] == [e.id for e in val.entries]
    with pytest.raises(ValueError, match="no data.train spec has holdout"):
        PerceiverVLDataModule(train=spec, val="holdout")
