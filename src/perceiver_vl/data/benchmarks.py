"""Readers for the rest of the paper's benchmarks (Tables 1-2), each in its published format.

* :class:`LSMDC`: movie clips with one sentence each (text-to-video retrieval).
* :class:`ActivityNetCaptions`: paragraph-to-video retrieval (the sentences of a video in time
  order, one query), 16 frames in the paper.
* :class:`TGIFQA`: FrameQA (open-ended, classification over the training answers) and the
  repeating-action / state-transition tasks (5 candidate answers).
* :class:`NLVR2`: a sentence about a pair of images, true or false.

MSR-VTT, DiDeMo, MSRVTT-QA, VQAv2 and Flickr30k (Karpathy split) are in
:mod:`perceiver_vl.data.datasets`. Every reader yields the items described there; a row that
cannot be used is skipped and counted by the data set's `FailureTracker` (``bad_annotation``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from perceiver_vl.data.datasets import (
    AnswerVocab,
    Entry,
    MediaTextDataset,
    _clean_captions,
    _load_json,
    _need_file,
)
from perceiver_vl.data.failures import MediaError
from perceiver_vl.data.media import load_image, load_media


class _RowCounter:
    """Counts unusable annotation rows of one file and reports them to a tracker."""

    def __init__(self, dataset: MediaTextDataset, source: Path) -> None:
        self.dataset, self.source, self.bad, self.total = dataset, source, 0, 0

    def row(self) -> None:
        self.total += 1

    def skip(self, where: str, reason: str) -> None:
        self.bad += 1
        self.dataset.tracker.fail(f"{self.source} {where}", reason, "bad_annotation", check=False)

    def done(self) -> None:
        self.dataset.tracker.check_fraction(self.bad, max(1, self.total), f"{self.source} (rows)")


# ===================================================================== LSMDC
class LSMDC(MediaTextDataset):
    """LSMDC text-to-video retrieval (the 2016 challenge files, as used by later work).

    Layout: ``root/annotations/LSMDC16_annos_training.csv`` (train),
    ``LSMDC16_annos_val.csv`` (val) and ``LSMDC16_challenge_1000_publictect.csv`` (the 1,000-clip
    public test reported in papers): tab-separated, no header, columns ``clip_id,
    start_aligned, end_aligned, start_extracted, end_extracted, sentence``. Clips are at
    ``root/videos/<movie>/<clip_id>.avi`` where ``<movie>`` is the clip id up to its last
    ``_`` (the layout of the released ``avi`` archives); for clips converted to another
    container, name it with ``media_extension`` (a missing file is never replaced by another).
    """

    name = "lsmdc"
    FILES = {
        "train": "LSMDC16_annos_training.csv",
        "val": "LSMDC16_annos_val.csv",
        "test": "LSMDC16_challenge_1000_publictect.csv",
    }

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        video_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in self.FILES:
            raise ValueError(f"split={split!r} must be one of {sorted(self.FILES)}")
        root = Path(root)
        kwargs.setdefault("name", f"lsmdc-{split}")
        super().__init__([], Path(video_root) if video_root else root / "videos", **kwargs)
        path = _need_file(
            root / "annotations" / self.FILES[split],
            "root",
            f"put LSMDC's {self.FILES[split]} under root/annotations/",
        )
        rows = _RowCounter(self, path)
        merged: OrderedDict[str, Entry] = OrderedDict()
        with open(path, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(
                csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            ):
                rows.row()
                if len(row) < 6 or not row[0].strip() or "_" not in row[0]:
                    rows.skip(f"line {number + 1}", "expected 6 tab-separated columns")
                    continue
                clip = row[0].strip()
                movie = clip.rsplit("_", 1)[0]
                entry = merged.setdefault(clip, Entry(f"{movie}/{clip}.avi", [], clip))
                entry.captions.extend(_clean_captions(row[5]))
        rows.done()
        self.entries = self._filter_captionless(merged.values(), str(path))


# ===================================================================== ActivityNet Captions
class ActivityNetCaptions(MediaTextDataset):
    """ActivityNet Captions paragraph-to-video retrieval.

    Layout: ``root/annotations/{train,val_1,val_2}.json`` (the released files: ``{video_id:
    {"duration", "timestamps": [[start, end], ...], "sentences": [...]}}``) and
    ``root/videos/<video_id>.mp4`` (ids keep their ``v_`` prefix; other containers: set
    ``media_extension``). The sentences of a video are sorted by start time and joined into one paragraph.
    ``split="test"`` reads ``val_1.json``, the split later work reports on (ActivityNet's test
    annotations are not public); ``val_2`` is available as a split of its own.
    """

    name = "activitynet"
    FILES = {
        "train": "train.json",
        "val_1": "val_1.json",
        "val_2": "val_2.json",
        "test": "val_1.json",
    }

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        video_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in self.FILES:
            raise ValueError(f"split={split!r} must be one of {sorted(self.FILES)}")
        root = Path(root)
        kwargs.setdefault("name", f"activitynet-{split}")
        super().__init__([], Path(video_root) if video_root else root / "videos", **kwargs)
        path = _need_file(
            root / "annotations" / self.FILES[split],
            "root",
            f"put ActivityNet Captions' {self.FILES[split]} under root/annotations/",
        )
        data = _load_json(path, "root")
        if not isinstance(data, dict):
            raise ValueError(
                f"root: {str(path)!r} must map video ids to {{timestamps, sentences}}, as the "
                "released ActivityNet Captions files do"
            )
        rows = _RowCounter(self, path)
        entries = []
        for video_id, info in data.items():
            rows.row()
            sentences = info.get("sentences") if isinstance(info, dict) else None
            times = info.get("timestamps") if isinstance(info, dict) else None
            if not isinstance(sentences, list) or not isinstance(times, list):
                rows.skip(video_id, "no sentences/timestamps lists")
                continue
            if len(sentences) != len(times):
                rows.skip(video_id, f"{len(sentences)} sentences but {len(times)} timestamps")
                continue
            try:
                order = sorted(range(len(times)), key=lambda i: (float(times[i][0]), i))
            except (TypeError, ValueError, IndexError):
                rows.skip(video_id, f"timestamps {times!r} are not [start, end] pairs")
                continue
            parts = [p for i in order for p in _clean_captions(sentences[i])]
            entries.append(Entry(f"{video_id}.mp4", [" ".join(parts)] if parts else [], video_id))
        rows.done()
        self.entries = self._filter_captionless(entries, str(path))


# ===================================================================== TGIF-QA
class TGIFQA(MediaTextDataset):
    """TGIF-QA on animated GIFs: ``task="frameqa"``, ``"action"`` or ``"transition"``.

    Layout: ``root/annotations/{Train,Test}_<task>_question.tsv`` (the released tab-separated
    files with a header: ``gif_name, question, [a1..a5,] answer, [type,] vid_id, ...``) and
    ``root/gifs/<gif_name>.gif`` (decoded as a video; an ``.mp4`` with the same stem is found
    too). TGIF-QA has no validation split: carve one from training (``holdout:``).

    * ``frameqa``: open-ended; the answer vocabulary is the ``top_k`` most frequent training
      answers (1,540, the size later work uses); items carry ``answer``, ``answer_index``
      (-1 outside the vocabulary) and one-hot ``answer_scores``, as MSRVTT-QA's.
    * ``action`` / ``transition``: five candidate answers, ``answer`` is the index of the right
      one (0-4). Items carry ``choices``: the five texts ``"<question> <candidate>"``, each
      scored by the matching head (the usual practice: ClipBERT, VIOLET), and
      ``answer_index``.
    """

    name = "tgif-qa"
    TASKS = ("frameqa", "action", "transition")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        task: str = "frameqa",
        vocab: AnswerVocab | None = None,
        top_k: int = 1540,
        gif_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(
                f"split={split!r} must be 'train' or 'test' (TGIF-QA has no validation split; "
                "carve one from training with holdout:)"
            )
        if task not in self.TASKS:
            raise ValueError(f"task={task!r} must be one of {list(self.TASKS)}")
        root = Path(root)
        kwargs.setdefault("name", f"tgif-{task}-{split}")
        super().__init__([], Path(gif_root) if gif_root else root / "gifs", **kwargs)
        self.task = task

        def read(which: str) -> tuple[Path, list[dict[str, str]]]:
            name = f"{which.capitalize()}_{task}_question.tsv"
            path = _need_file(
                root / "annotations" / name, "root", f"put TGIF-QA's {name} under root/annotations/"
            )
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                wanted = {"gif_name", "question", "answer"}
                if task != "frameqa":
                    wanted |= {f"a{i}" for i in range(1, 6)}
                missing = wanted - set(reader.fieldnames or [])
                if missing:
                    raise ValueError(
                        f"root: {str(path)!r} lacks columns {sorted(missing)}; TGIF-QA's {task} "
                        f"files have a header with {sorted(wanted)}"
                    )
                return path, list(reader)

        path, rows = read(split)
        self.vocab: AnswerVocab | None = None
        if task == "frameqa":
            if vocab is None:
                train_rows = rows if split == "train" else read("train")[1]
                vocab = AnswerVocab.build((r["answer"].strip() for r in train_rows), top_k)
            self.vocab = vocab
        counter = _RowCounter(self, path)
        entries = []
        for number, row in enumerate(rows):
            counter.row()
            gif, question = (row.get("gif_name") or "").strip(), _clean_captions(row["question"])
            if not gif or not question:
                counter.skip(f"line {number + 2}", "no gif_name or question")
                continue
            extra: dict[str, Any] = {"question": question[0], "question_id": row.get("key", number)}
            if task == "frameqa":
                answer = (row.get("answer") or "").strip()
                if self.train and answer not in vocab:  # type: ignore[operator]
                    continue  # outside the vocabulary: cannot be learned (evaluation keeps it)
                extra["answer"] = answer
            else:
                candidates = [" ".join((row.get(f"a{i}") or "").split()) for i in range(1, 6)]
                try:
                    answer_index = int(row["answer"])
                except (TypeError, ValueError):
                    answer_index = -1
                if not all(candidates) or not 0 <= answer_index < 5:
                    counter.skip(f"line {number + 2}", "needs 5 candidates and an answer 0-4")
                    continue
                extra["choices"] = [f"{question[0]} {c}" for c in candidates]
                extra["answer_index"] = answer_index
            entries.append(Entry(f"{gif}.gif", question, gif, extra))
        counter.done()
        self.entries = self._filter_captionless(entries, str(path))

    @property
    def num_choices(self) -> int:
        """Candidates per question (0 for FrameQA)."""
        return 0 if self.task == "frameqa" else 5

    def load(self, entry: Entry, generator: torch.Generator | None):
        # GIFs are animations: decode every one as a video, never as a still image
        return load_media(
            self.resolve(entry.media),
            self.num_frames,
            self.size,
            self.train,
            generator,
            is_image=False,
        )

    def extra_fields(self, entry: Entry) -> dict[str, Any]:
        if self.vocab is None:
            return dict(entry.extra)
        answer = entry.extra["answer"]
        return {
            **entry.extra,
            "answer_index": self.vocab.index(answer),
            "answer_scores": self.vocab.scores({answer: 1.0}),
        }


# ===================================================================== NLVR2
class NLVR2(MediaTextDataset):
    """NLVR2: is a sentence true of a pair of images?

    Layout: ``root/annotations/{train,dev,test1}.json`` (the released JSON-lines files:
    ``{"identifier": "train-10171-0-0", "sentence", "label": "True"|"False", "directory"
    (train only), ...}``) and the images as released: ``root/images/train/<directory>/
    <pair>-img0.png`` / ``-img1.png``, ``root/images/{dev,test1}/<pair>-img{0,1}.png``, where
    ``<pair>`` is the identifier without its last ``-N``.

    The two images are fed as a 2-frame clip (left, right; the temporal embedding tells them
    apart), so the latents attend to both images and the sentence in one encoder pass: ViLT's
    "triplet" input, which needs no change to the model. The answer is a 2-class label
    (``answer_index`` 0 = False, 1 = True) for the QA head with cross-entropy. ``num_frames``
    must be at least 2.
    """

    name = "nlvr2"
    SPLITS = ("train", "dev", "test1")
    vocab = AnswerVocab(["False", "True"])

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_root: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split={split!r} must be one of {list(self.SPLITS)}")
        root = Path(root)
        kwargs.setdefault("name", f"nlvr2-{split}")
        super().__init__([], Path(image_root) if image_root else root / "images", **kwargs)
        if self.num_frames < 2:
            raise ValueError(
                f"num_frames={self.num_frames}: NLVR2 feeds its two images as a 2-frame clip; "
                "set data.num_frames: 2"
            )
        path = _need_file(
            root / "annotations" / f"{split}.json",
            "root",
            f"put NLVR2's {split}.json (JSON lines) under root/annotations/",
        )
        counter = _RowCounter(self, path)
        entries = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                counter.row()
                try:
                    row = json.loads(line)
                    identifier = str(row["identifier"])
                    label = str(row["label"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    counter.skip(f"line {number}", f"not an NLVR2 record ({err})")
                    continue
                if label not in ("True", "False") or identifier.count("-") < 3:
                    counter.skip(f"line {number}", f"label {label!r} / identifier {identifier!r}")
                    continue
                pair = identifier.rsplit("-", 1)[0]
                folder = f"{split}/{row['directory']}" if "directory" in row else split
                extra = {
                    "question": " ".join(str(row.get("sentence", "")).split()),
                    "question_id": identifier,
                    "answer": label,
                    "right": f"{folder}/{pair}-img1.png",
                }
                sentence = _clean_captions(row.get("sentence"))
                entries.append(Entry(f"{folder}/{pair}-img0.png", sentence, pair, extra))
        counter.done()
        self.entries = self._filter_captionless(entries, str(path))

    def load(self, entry: Entry, generator: torch.Generator | None):
        """(video (2, 3, H, W) = left and right image, mask (2,), is_image False)."""
        frames = []
        for media in (entry.media, entry.extra["right"]):
            path = self.resolve(media)
            if not path.exists():
                raise MediaError(path, "missing image of the pair", "missing")
            frames.append(load_image(path, self.size, train=self.train, generator=generator))
        video = torch.stack(frames)
        if self.num_frames > 2:  # pad to the configured clip length with masked frames
            pad = video.new_zeros(self.num_frames - 2, *video.shape[1:])
            video = torch.cat([video, pad])
        mask = torch.arange(video.shape[0]) < 2
        return video, mask, False

    def extra_fields(self, entry: Entry) -> dict[str, Any]:
        extra = {k: v for k, v in entry.extra.items() if k != "right"}
        index = self.vocab.index(entry.extra["answer"])
        return {
            **extra,
            "answer_index": index,
            "answer_scores": self.vocab.scores({extra["answer"]: 1.0}),
        }


__all__ = ["LSMDC", "NLVR2", "ActivityNetCaptions", "TGIFQA"]
