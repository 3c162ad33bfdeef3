"""Every benchmark config of the paper's Tables 1-2, run end to end on a tiny fixture.

Each fixture is written at test time in the data set's published annotation format, with real
encoded media (H.264 clips, animated GIFs, PNG/JPEG images), under the relative paths the config
names (``datasets/<name>/...``, the test runs in a temporary folder). The shipped config is
used as it is except for the model size, the batch size and the step count: two ``fit`` steps
(with a validation on the media held out of training) and a ``perceiver-vl evaluate`` on the
test split. Bad annotation rows in the fixtures are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perceiver_vl.train import fit
from perceiver_vl.train.api import load_config
from perceiver_vl.train.evaluate_cli import add_arguments, run

from ..data.helpers import write_image, write_video
from .conftest import TINY_MODEL

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"
WORDS = ["dog", "cat", "car", "man", "girl", "ball", "tree", "boat", "bird", "horse"]


def _copies(source: Path, targets: list[Path]) -> None:
    data = source.read_bytes()
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _clip(tmp: Path, frames: int = 12) -> Path:
    return write_video(tmp / f"_clip{frames}.mp4", frames, width=40, height=32)


def _gif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(np.full((32, 40, 3), 20 * i, np.uint8)) for i in range(8)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return path


def _tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------ fixtures
def make_msrvtt(tmp: Path) -> None:
    root = tmp / "datasets" / "msrvtt"
    videos = [f"video{i}" for i in range(10)]
    splits = ["train"] * 6 + ["validate"] * 1 + ["test"] * 3
    data = {
        "videos": [{"video_id": v, "split": s} for v, s in zip(videos, splits)],
        "sentences": [
            {"video_id": v, "caption": f"a {WORDS[i]} number {k}", "sen_id": 2 * i + k}
            for i, v in enumerate(videos)
            for k in range(2)
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "MSRVTT_data.json").write_text(json.dumps(data))
    for variant in ("9k", "7k"):
        _tsv(root / "annotations" / f"MSRVTT_train.{variant}.csv", None, [["video_id"]])
        with open(root / "annotations" / f"MSRVTT_train.{variant}.csv", "a") as handle:
            handle.write("".join(f"{v}\n" for v in videos[:6]))
    with open(root / "annotations" / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, v in enumerate(videos[7:]):
            writer.writerow([f"ret{i}", f"msr{i}", v, f"a {WORDS[7 + i]} plays"])
    _copies(_clip(tmp), [root / "videos" / f"{v}.mp4" for v in videos])


def make_didemo(tmp: Path) -> None:
    root = tmp / "datasets" / "didemo"
    for split, count in (("train", 6), ("test", 3)):
        rows = []
        for i in range(count):
            video = f"{split}{i}_clip.mov"
            rows.append(
                {"video": video, "description": f"then a {WORDS[i]} leaves", "times": [[3, 4]]}
            )
            rows.append({"video": video, "description": f"a {WORDS[i]} enters", "times": [[0, 1]]})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}_data.json").write_text(json.dumps(rows))
        # converted to mp4, as usual; found by stem
        _copies(_clip(tmp), [root / "videos" / f"{split}{i}_clip.mp4" for i in range(count)])


def make_lsmdc(tmp: Path) -> None:
    root = tmp / "datasets" / "lsmdc"
    targets = []
    for split, name, count in (
        ("train", "LSMDC16_annos_training.csv", 6),
        ("test", "LSMDC16_challenge_1000_publictect.csv", 3),
    ):
        rows = []
        for i in range(count):
            clip = f"100{i}_Some_Movie_{split}_00.00.0{i}.000-00.00.0{i}.900"
            rows.append([clip, "0", "1", "0", "1", f"SOMEONE walks a {WORDS[i]}."])
            targets.append(root / "videos" / clip.rsplit("_", 1)[0] / f"{clip}.avi")
        rows.append(["broken row without columns"])  # skipped and counted
        _tsv(root / "annotations" / name, None, rows)
    # the released clips are .avi files
    clip = write_video(tmp / "_clip.avi", 12, width=40, height=32, container="avi")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(clip.read_bytes())


def make_activitynet(tmp: Path) -> None:
    root = tmp / "datasets" / "activitynet"
    clip = _clip(tmp, frames=20)
    for split, name, count in (("train", "train.json", 6), ("test", "val_1.json", 3)):
        data = {
            f"v_{split}{i}": {
                "duration": 10.0,
                "timestamps": [[5.0, 9.0], [0.0, 4.0]],
                "sentences": [f"then the {WORDS[i]} sits.", f"a {WORDS[i]} runs."],
            }
            for i in range(count)
        }
        data["v_bad"] = {"duration": 3.0, "timestamps": [[0, 1]], "sentences": []}  # counted
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / name).write_text(json.dumps(data))
        _copies(clip, [root / "videos" / f"v_{split}{i}.mp4" for i in range(count)])


def make_flickr(tmp: Path) -> None:
    root = tmp / "datasets" / "flickr30k"
    images = []
    for i in range(9):
        split = "train" if i < 6 else "test"
        name = f"{1000 + i}.jpg"
        write_image(root / "images" / name)
        images.append(
            {
                "filename": name,
                "imgid": i,
                "split": split,
                "sentences": [{"raw": f"a {WORDS[i]} on grass"}, {"raw": f"the {WORDS[i]}"}],
            }
        )
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))


def make_msrvtt_qa(tmp: Path) -> None:
    root = tmp / "datasets" / "msrvtt_qa"
    for split, start, count in (("train", 0, 6), ("test", 6, 3)):
        rows = [
            {
                "id": i,
                "video_id": start + i,
                "question": f"what is the {WORDS[i]}?",
                "answer": WORDS[i % 3],
            }
            for i in range(count)
        ]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}_qa.json").write_text(json.dumps(rows))
    _copies(_clip(tmp), [root / "videos" / f"video{i}.mp4" for i in range(9)])


def make_tgif(tmp: Path) -> None:
    root = tmp / "datasets" / "tgif_qa"
    gif = _gif(tmp / "_anim.gif")
    names = [f"tumblr_{i}" for i in range(9)]
    _copies(gif, [root / "gifs" / f"{n}.gif" for n in names])
    for split, chosen in (("Train", names[:6]), ("Test", names[6:])):
        frame_rows = [
            [n, f"what is {WORDS[i]} holding", WORDS[i % 3], "0", str(i), str(i)]
            for i, n in enumerate(chosen)
        ]
        frame_rows.append(["", "no gif", "x", "0", "0", "0"])  # skipped and counted
        _tsv(
            root / "annotations" / f"{split}_frameqa_question.tsv",
            ["gif_name", "question", "answer", "type", "vid_id", "key"],
            frame_rows,
        )
        for task in ("action", "transition"):
            rows = [
                [
                    n,
                    f"what does the {WORDS[i]} do",
                    "jump",
                    "run",
                    "sit",
                    "wave",
                    "nod",
                    str(i % 5),
                    str(i),
                    str(i),
                ]
                for i, n in enumerate(chosen)
            ]
            rows.append(
                [chosen[0], "bad", "a", "b", "c", "d", "e", "7", "0", "0"]
            )  # answer out of range
            _tsv(
                root / "annotations" / f"{split}_{task}_question.tsv",
                ["gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key"],
                rows,
            )


def make_vqav2(tmp: Path) -> None:
    root = tmp / "datasets"
    for subtype, start, count in (("train2014", 0, 6), ("val2014", 6, 3)):
        questions, annotations = [], []
        for i in range(count):
            image_id = start + i
            write_image(root / "coco" / subtype / f"COCO_{subtype}_{image_id:012d}.jpg")
            questions.append(
                {
                    "image_id": image_id,
                    "question": f"is there a {WORDS[i]}?",
                    "question_id": 10 * image_id,
                }
            )
            answer = "yes" if i % 2 else "no"
            annotations.append(
                {
                    "question_id": 10 * image_id,
                    "image_id": image_id,
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_id": k} for k in range(1, 11)],
                }
            )
        (root / "vqav2").mkdir(parents=True, exist_ok=True)
        (root / "vqav2" / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
            json.dumps({"data_subtype": subtype, "questions": questions})
        )
        (root / "vqav2" / f"v2_mscoco_{subtype}_annotations.json").write_text(
            json.dumps({"annotations": annotations})
        )


def make_nlvr2(tmp: Path) -> None:
    root = tmp / "datasets" / "nlvr2"
    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", 6), ("dev", 3)):
        lines = []
        for i in range(count):
            identifier = f"{split}-{100 + i}-0-{i % 2}"
            pair = identifier.rsplit("-", 1)[0]
            record = {
                "identifier": identifier,
                "sentence": f"both images show a {WORDS[i]}",
                "label": "True" if i % 2 else "False",
            }
            folder = root / "images" / split
            if split == "train":
                record["directory"] = i % 2
                folder = folder / str(i % 2)
            for side in (0, 1):
                write_image(folder / f"{pair}-img{side}.png")
            lines.append(json.dumps(record))
        lines.append('{"identifier": "broken"}')  # skipped and counted
        (root / "annotations" / f"{split}.json").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ the runs
CASES: dict[str, tuple[Callable[[Path], None], int]] = {
    # config -> (fixture writer, frames per clip in the tiny run)
    "msrvtt_retrieval": (make_msrvtt, 3),
    "msrvtt_retrieval_7k": (make_msrvtt, 3),
    "msrvtt_retrieval_full": (make_msrvtt, 3),
    "didemo_retrieval": (make_didemo, 3),
    "lsmdc_retrieval": (make_lsmdc, 3),
    "activitynet_retrieval": (make_activitynet, 16),
    "flickr30k_retrieval": (make_flickr, 1),
    "msrvtt_qa": (make_msrvtt_qa, 3),
    "tgif_frameqa": (make_tgif, 3),
    "tgif_action": (make_tgif, 3),
    "tgif_transition": (make_tgif, 3),
    "vqav2": (make_vqav2, 1),
    "nlvr2": (make_nlvr2, 2),
}


FIXTURE_ANSWERS = {"msrvtt_qa": 3, "tgif_frameqa": 3, "vqav2": 2}


def test_every_finetune_config_has_a_case():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_config_fits_and_evaluates(name, tmp_path, monkeypatch):
    writer, frames = CASES[name]
    monkeypatch.chdir(tmp_path)
    writer(tmp_path)
    config = load_config(CONFIGS / f"{name}.yaml")
    model_fields = {
        k: v for k, v in config["model"]["model"].items() if k in ("num_answers", "qa_loss")
    }
    config["model"]["model"] = {**TINY_MODEL, "max_frames": max(4, frames), **model_fields}
    if name in FIXTURE_ANSWERS:  # the head's size = the fixture's answer vocabulary
        config["model"]["model"]["num_answers"] = FIXTURE_ANSWERS[name]
    config["model"]["effective_batch_size"] = None
    if "retrieval_negatives" in config["model"]:
        config["model"]["retrieval_negatives"] = 1
    config["data"]["train"]["holdout"]["size"] = 2
    batch = config["data"]
    batch.update(
        batch_size=2,
        eval_batch_size=2,
        num_workers=0,
        num_frames=frames,
        image_size=32,
        max_text_length=16,
        pin_memory=False,
    )
    config["trainer"] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 2,
        "precision": "32",
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "logger": False,
        "default_root_dir": str(tmp_path / "run"),
    }
    result = fit(config)
    monitor = config["checkpoint"]["monitor"]
    assert monitor in result.metrics, sorted(result.metrics)
    held = result.datamodule.dataset("val")
    train_ids = {e.id for e in result.datamodule.dataset("train").entries}
    assert len({e.id for e in held.entries}) == 2 and not train_ids & {e.id for e in held.entries}

    result.model.save_pretrained(tmp_path / "exported")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    data_config = tmp_path / "data.yaml"
    import yaml

    data_config.write_text(yaml.safe_dump({"data": batch}))
    args = parser.parse_args(
        [
            "--model",
            str(tmp_path / "exported"),
            "--data",
            str(data_config),
            "--modes",
            "multi",
            "mixed",
            "--output",
            str(tmp_path / "eval.json"),
        ]
    )
    assert run(args) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    if "mc" in report:
        assert report["mc"]["num_questions"] == 3
    elif "qa" in report:
        assert report["qa"]["num_questions"] == 3
    else:
        assert report["info"]["num_videos"] == 3 and report["mixed"]["t2v_r1"] >= 0
