from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from perceiver_vl.data import (
    CC3M,
    MSRVTTQA,
    AnswerVocab,
    CaptionDataset,
    Collator,
    DiDeMo,
    FailureTracker,
    KarpathyCaptions,
    MediaError,
    MSRVTTRetrieval,
    Tokenizer,
    TooManyFailuresError,
    VQAv2,
    WebVid,
    normalize_answer,
    vqa_score,
)

from .helpers import write_image, write_video

SIZE = 32


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default(max_length=16)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One small mp4, copied wherever a test needs videos (cheap to write)."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 12, width=40, height=32)


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------ generic formats
def test_generic_jsonl_csv_json(tmp_path, clip):
    for i in range(3):
        _copy(clip, tmp_path / "media" / f"v{i}.mp4")
    write_image(tmp_path / "media" / "p.jpg")
    rows = [
        {"video": "v0.mp4", "caption": "a dog runs"},
        {"video": "v1.mp4", "caption": ["a cat sits", "a cat rests"]},
        {"video": "v0.mp4", "caption": "a dog jumps"},  # same media -> merged
        {"video": "p.jpg", "caption": "a flag"},
    ]
    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = CaptionDataset(jsonl, tmp_path / "media", num_frames=4, size=SIZE)
    assert len(ds) == 3
    item = ds[0]
    assert item["video"].shape == (4, 3, SIZE, SIZE) and item["video_mask"].all()
    assert item["texts"] == ["a dog runs", "a dog jumps"] and item["text"] == "a dog runs"
    assert item["video_id"] == "v0" and item["index"] == 0 and not item["is_image"]
    image_item = ds[2]
    assert image_item["is_image"] and image_item["video"].shape == (1, 3, SIZE, SIZE)

    pairs = CaptionDataset(jsonl, tmp_path / "media", num_frames=4, size=SIZE, pairs=True)
    assert len(pairs) == 5 and pairs[1]["text"] == "a dog jumps"
    texts, owners = pairs.caption_index()
    assert owners == [0, 0, 1, 1, 2]
    assert [vid for vid, _, _ in pairs.retrieval_items()] == ["v0", "v1", "p"]
    assert len(pairs.media_only()) == 3

    csv_path = _write_csv(
        tmp_path / "media" / "ann.csv", ["path", "text"], [["v2.mp4", "a bird flies"]]
    )
    ds = CaptionDataset(csv_path, num_frames=2, size=SIZE)  # media root = the CSV's folder
    assert ds[0]["text"] == "a bird flies"
    json_path = tmp_path / "ann.json"
    json_path.write_text(json.dumps([{"media": "v2.mp4", "sentence": "x y"}]))
    assert CaptionDataset(json_path, tmp_path / "media", size=SIZE)[0]["text"] == "x y"
    with pytest.raises(ValueError, match="caption_key"):
        CaptionDataset(jsonl, tmp_path, caption_key="nope")
    with pytest.raises(FileNotFoundError, match="annotations"):
        CaptionDataset(tmp_path / "missing.jsonl")


def test_train_randomness_is_seeded_per_epoch(tmp_path, clip):
    long = write_video(tmp_path / "long.mp4", 60, width=48, height=32)
    ann = tmp_path / "a.jsonl"
    captions = [f"caption {i}" for i in range(8)]
    ann.write_text(json.dumps({"video": long.name, "caption": captions}) + "\n")
    ds = CaptionDataset(ann, num_frames=4, size=SIZE, train=True, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["video"], b["video"]) and a["text"] == b["text"]
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        seen.add((item["text"], float(item["video"].sum())))
    assert len(seen) > 1


# ------------------------------------------------------------------------------ bad data
def test_bad_samples_are_skipped_counted_and_reported(tmp_path, clip, caplog):
    media = tmp_path / "m"
    for i in range(6):
        _copy(clip, media / f"ok{i}.mp4")
    (media / "zero.mp4").write_bytes(b"")
    (media / "text.mp4").write_text("not a video")
    (media / "cut.mp4").write_bytes(clip.read_bytes()[:200])
    rows = [{"video": f"ok{i}.mp4", "caption": f"fine {i}"} for i in range(6)]
    rows += [
        {"video": "gone.mp4", "caption": "missing file"},
        {"video": "zero.mp4", "caption": "zero bytes"},
        {"video": "text.mp4", "caption": "not media"},
        {"video": "cut.mp4", "caption": "truncated"},
        {"video": "ok0.mp4", "caption": ""},  # merged into ok0, empty caption dropped
        {"video": "ok5.mp4", "caption": "   "},
    ]
    rows.append({"video": "nocap.mp4", "caption": ""})
    ann = tmp_path / "a.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows))
    log = tmp_path / "failures.jsonl"
    with caplog.at_level(logging.WARNING, logger="perceiver_vl.data"):
        ds = CaptionDataset(
            ann, media, num_frames=4, size=SIZE, failure_log=log, max_failure_fraction=0.9
        )
        assert len(ds) == 10  # nocap.mp4 dropped at load time
        results = [ds[i] for i in range(len(ds))]
    assert sum(r is None for r in results) == 4
    counts = ds.tracker.counts
    assert counts["ok"] == 6 and counts["missing"] == 1 and counts["empty_file"] == 1
    assert counts["undecodable"] == 2 and counts["empty_caption"] == 1
    summary = ds.tracker.report()
    assert "gone.mp4" in summary and "5 skipped" in summary
    assert "gone.mp4" in caplog.text and "cut.mp4" in caplog.text
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {entry["kind"] for entry in logged} >= {"missing", "empty_file", "undecodable"}

    with pytest.raises(ValueError, match="strict=True"):  # the caption-less row
        CaptionDataset(ann, media, num_frames=4, size=SIZE, strict=True)
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(json.dumps(r) for r in rows[:10]))
    strict = CaptionDataset(clean, media, num_frames=4, size=SIZE, strict=True)
    assert strict[0] is not None
    with pytest.raises(MediaError, match="gone.mp4"):
        strict[6]

    tracker = FailureTracker(max_failure_fraction=0.2, min_samples=5)
    fragile = CaptionDataset(ann, media, num_frames=4, size=SIZE, tracker=tracker)
    with pytest.raises(TooManyFailuresError, match="max_failure_fraction"):
        for i in range(len(fragile)):
            fragile[i]


def test_failure_counts_cross_loader_workers(tmp_path, clip, tok):
    media = tmp_path / "m"
    rows = []
    for i in range(6):
        _copy(clip, media / f"ok{i}.mp4")
        rows.append({"video": f"ok{i}.mp4", "caption": f"clip number {i}"})
    rows.append({"video": "gone.mp4", "caption": "missing"})
    rows.append({"video": "gone2.mp4", "caption": "missing too"})
    ann = tmp_path / "a.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows))
    ds = CaptionDataset(ann, media, num_frames=4, size=SIZE, max_failure_fraction=0.5)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collator(tok))
    batches = [b for b in loader if b is not None]
    assert sum(b["video"].shape[0] for b in batches) == 6
    assert ds.tracker.counts["ok"] == 6 and ds.tracker.counts["missing"] == 2


def test_too_many_bad_annotation_rows(tmp_path):
    rows = [{"video": f"v{i}.mp4", "caption": ""} for i in range(30)]
    ann = tmp_path / "a.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TooManyFailuresError, match="entries are unusable"):
        CaptionDataset(ann, tmp_path)


# ------------------------------------------------------------------------------ collate
def test_collate_shapes_mlm_images_and_none(tmp_path, clip, tok):
    _copy(clip, tmp_path / "v.mp4")
    write_image(tmp_path / "i.png")
    write_video(tmp_path / "s.mp4", 2, width=32, height=32)
    ann = tmp_path / "a.jsonl"
    rows = [("v.mp4", "a moving thing"), ("s.mp4", "short clip"), ("i.png", "an image")]
    ann.write_text("\n".join(json.dumps({"video": v, "caption": c}) for v, c in rows))
    ds = CaptionDataset(ann, num_frames=4, size=SIZE)
    collate = Collator(tok, mlm_probability=0.5, seed=0)
    batch = collate([ds[0], None, ds[1], ds[2]])
    assert batch["video"].shape == (3, 4, 3, SIZE, SIZE)
    assert batch["video_mask"].tolist() == [
        [True] * 4,
        [True, True, False, False],
        [True, False, False, False],
    ]
    assert batch["text_ids"].shape == (3, 16) and batch["text_mask"].dtype == torch.bool
    assert batch["mlm_ids"].shape == (3, 16) and batch["mlm_labels"].shape == (3, 16)
    targets = batch["mlm_labels"] != -100
    assert targets.any() and not (targets & ~batch["text_mask"]).any()
    assert batch["is_image"].tolist() == [False, False, True] and "images" not in batch
    assert batch["index"].tolist() == [0, 1, 2] and batch["video_id"] == ["v", "s", "i"]
    images = collate([ds[2], ds[2]])
    assert images["images"].shape == (2, 3, SIZE, SIZE)
    assert collate([None, None]) is None
    no_tok = Collator()([ds[0]])
    assert no_tok["text"] == ["a moving thing"] and "text_ids" not in no_tok


# ------------------------------------------------------------------------------ standard sets
def test_webvid(tmp_path, clip):
    _copy(clip, tmp_path / "videos" / "001" / "123.mp4")
    _copy(clip, tmp_path / "videos" / "002" / "456.mp4")
    csv_path = _write_csv(
        tmp_path / "results_2M_train.csv",
        ["videoid", "name", "page_dir", "duration", "contentUrl"],
        [
            ["123", "Aerial view of a lake", "001", "PT00H00M10S", "https://x/1.mp4"],
            ["456", "Man, walking; outdoors", "002", "PT00H00M12S", "https://x/2.mp4"],
        ],
    )
    ds = WebVid(csv_path, tmp_path / "videos", num_frames=2, size=SIZE)
    assert [ds[i]["text"] for i in range(2)] == ["Aerial view of a lake", "Man, walking; outdoors"]
    assert ds[1]["video_id"] == "456"
    bad = _write_csv(tmp_path / "bad.csv", ["id", "caption"], [["1", "x"]])
    with pytest.raises(ValueError, match="page_dir"):
        WebVid(bad, tmp_path / "videos")


def test_cc3m_img2dataset_layout(tmp_path):
    # img2dataset --output_format files names data row i: shard i // 10000, key shard + i % 10000
    root = tmp_path / "cc3m"
    write_image(root / "00000" / "000000000.jpg")
    write_image(root / "00000" / "000000002.jpg")  # row 1's download failed: no file
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text(
        "a red and blue flag\thttp://a/0.jpg\nfailed download\thttp://a/1.jpg\n"
        "two colours side by side\thttp://a/2.jpg\n"
    )
    ds = CC3M(tsv, root, size=SIZE)
    assert [e.media for e in ds.entries] == [f"00000/00000000{i}.jpg" for i in range(3)]
    assert [e.id for e in ds.entries] == ["000000000", "000000001", "000000002"]
    item = ds[2]
    assert item["text"] == "two colours side by side" and item["is_image"]
    assert item["video"].shape == (1, 3, SIZE, SIZE)
    assert ds[1] is None and ds.tracker.counts["missing"] == 1
    # the header img2dataset needs (either column order) is not a row; shards roll over
    with_header = tmp_path / "with_header.tsv"
    rows = "".join(f"http://a/{i}.jpg\tcaption {i}\n" for i in range(5))
    with_header.write_text("url\tcaption\n" + rows)
    ds = CC3M(with_header, root, samples_per_shard=2, shard_digits=3)
    assert [e.media for e in ds.entries][:3] == ["000/0000.jpg", "000/0001.jpg", "001/0010.jpg"]
    assert ds.entries[4].captions == ["caption 4"] and ds.entries[4].media == "002/0020.jpg"


def test_cc3m_builds_without_touching_media(tmp_path, monkeypatch):
    # construction reads the annotation file only: the image folder need not even exist
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("".join(f"caption number {i}\thttp://a/{i}.jpg\n" for i in range(30)))
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    ds = CC3M(tsv, tmp_path / "no_such_folder", size=SIZE)
    monkeypatch.undo()
    assert opened == [str(tsv)]
    assert len(ds) == 30 and ds.entries[29].captions == ["caption number 29"]
    assert ds[0] is None
    assert ds.tracker.counts["missing"] == 1
    assert "no_such_folder/00000/000000000.jpg" in ds.tracker.recent[-1][0]


def test_cc3m_jsonl_manifest_and_bad_input(tmp_path):
    root = tmp_path / "images"
    write_image(root / "00003" / "000030007.jpg")
    manifest = tmp_path / "downloaded.jsonl"
    lines = [{"image": "00003/000030007.jpg", "caption": "a dog on a beach"}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ds = CC3M(manifest, root, size=SIZE)
    assert len(ds) == 1 and ds[0]["text"] == "a dog on a beach"
    with pytest.raises(FileNotFoundError, match="annotations=.*caption<TAB>url TSV"):
        CC3M(tmp_path / "absent.tsv", root)
    with pytest.raises(ValueError, match="annotations=.*extension '.parquet'"):
        (tmp_path / "x.parquet").write_bytes(b"")
        CC3M(tmp_path / "x.parquet", root)
    with pytest.raises(ValueError, match="samples_per_shard=0"):
        CC3M(manifest, root, samples_per_shard=0)
    short = tmp_path / "short.tsv"  # a row without its url is skipped, counted, keeps numbering
    short.write_text("one\thttp://a/0.jpg\njust a caption\nthree\thttp://a/2.jpg\n")
    ds = CC3M(short, root)
    assert [e.media for e in ds.entries] == ["00000/000000000.jpg", "00000/000000002.jpg"]
    assert ds.tracker.counts["bad_annotation"] == 1


@pytest.fixture
def msrvtt(tmp_path, clip):
    root = tmp_path / "msrvtt"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    videos = [f"video{i}" for i in range(6)]
    splits = ["train"] * 3 + ["validate"] + ["test"] * 2
    data = {
        "videos": [{"video_id": v, "split": s} for v, s in zip(videos, splits)],
        "sentences": [
            {"video_id": v, "caption": f"{v} caption {k}", "sen_id": 3 * i + k}
            for i, v in enumerate(videos)
            for k in range(3)
        ],
    }
    (ann / "MSRVTT_data.json").write_text(json.dumps(data))
    _write_csv(ann / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in videos[:4]])
    _write_csv(ann / "MSRVTT_train.7k.csv", ["video_id"], [[v] for v in videos[:2]])
    _write_csv(
        ann / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [[f"ret{i}", f"msr{i}", v, f"test sentence {i}"] for i, v in enumerate(videos[4:])],
    )
    for v in videos:
        _copy(clip, root / "videos" / f"{v}.mp4")
    return root


def test_msrvtt_splits(msrvtt):
    train = MSRVTTRetrieval(msrvtt, "train", "9k", num_frames=2, size=SIZE)
    assert len(train) == 4 and len(train.entries[0].captions) == 3
    assert len(MSRVTTRetrieval(msrvtt, "train", "7k")) == 2
    test = MSRVTTRetrieval(msrvtt, "test", num_frames=2, size=SIZE)
    assert [e.captions for e in test.entries] == [["test sentence 0"], ["test sentence 1"]]
    assert test[0]["video_id"] == "video4"
    full_test = MSRVTTRetrieval(msrvtt, "test", "full")
    assert len(full_test) == 2 and len(full_test.entries[0].captions) == 3
    assert [e.id for e in MSRVTTRetrieval(msrvtt, "val", "full").entries] == ["video3"]
    assert len(MSRVTTRetrieval(msrvtt, "train", "9k", pairs=True)) == 12
    with pytest.raises(ValueError, match="variant"):
        MSRVTTRetrieval(msrvtt, "train", "8k")
    with pytest.raises(FileNotFoundError, match="MSRVTT_data.json"):
        MSRVTTRetrieval(msrvtt / "nowhere")


def test_didemo_paragraphs(tmp_path, clip):
    root = tmp_path / "didemo"
    (root / "annotations").mkdir(parents=True)
    rows = [
        {"video": "a@b_1.mov", "description": "a girl walks in.", "times": [[0, 0]]},
        {"video": "c_2.mp4", "description": "a car passes.", "times": [[1, 1]]},
        {"video": "a@b_1.mov", "description": "she waves.", "times": [[2, 3]]},
    ]
    (root / "annotations" / "test_data.json").write_text(json.dumps(rows))
    _copy(clip, root / "videos" / "a@b_1.mp4")  # converted from .mov
    _copy(clip, root / "videos" / "c_2.mp4")
    # a missing .mov is never silently replaced by the .mp4 beside it; converted media are
    # named explicitly
    assert DiDeMo(root, "test", num_frames=2, size=SIZE)[0] is None
    ds = DiDeMo(root, "test", num_frames=2, size=SIZE, media_extension=".mp4")
    assert len(ds) == 2
    item = ds[0]
    assert item is not None and item["text"] == "a girl walks in. she waves."


def test_karpathy_coco_and_flickr(tmp_path):
    write_image(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000001.jpg")
    write_image(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000002.jpg")
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000001.jpg",
            "split": "restval",
            "cocoid": 1,
            "sentences": [{"raw": "A flag."}, {"raw": "Red and blue."}],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000002.jpg",
            "split": "train",
            "cocoid": 2,
            "sentences": [{"raw": "Two colours."}],
        },
        {
            "filepath": "val2014",
            "filename": "x.jpg",
            "split": "test",
            "cocoid": 3,
            "sentences": [{"raw": "Test."}],
        },
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    train = KarpathyCaptions(path, tmp_path / "coco", "train", size=SIZE)
    assert len(train) == 2 and train[0]["texts"] == ["A flag.", "Red and blue."]
    assert train[0]["video_id"] == "1"
    assert len(KarpathyCaptions(path, tmp_path / "coco", "train", include_restval=False)) == 1
    assert len(KarpathyCaptions(path, tmp_path / "coco", "test")) == 1
    write_image(tmp_path / "flickr" / "1000.jpg")
    flickr = tmp_path / "dataset_flickr30k.json"
    flickr.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "filename": "1000.jpg",
                        "split": "val",
                        "imgid": 0,
                        "sentences": [{"raw": "Hi."}],
                    }
                ]
            }
        )
    )
    assert KarpathyCaptions(flickr, tmp_path / "flickr", "val", size=SIZE)[0]["text"] == "Hi."


def test_msrvtt_qa(tmp_path, clip):
    root = tmp_path / "qa"
    (root / "annotations").mkdir(parents=True)
    train = [
        {"question": f"what is it {i}?", "answer": a, "video_id": i % 2, "id": i}
        for i, a in enumerate(["dog", "dog", "cat", "dog", "cat", "bird"])
    ]
    test = [
        {"question": "what runs?", "answer": "dog", "video_id": 0, "id": 10},
        {"question": "what flies?", "answer": "plane", "video_id": 1, "id": 11},
    ]
    (root / "annotations" / "train_qa.json").write_text(json.dumps(train))
    (root / "annotations" / "test_qa.json").write_text(json.dumps(test))
    _copy(clip, root / "videos" / "video0.mp4")
    _copy(clip, root / "videos" / "video1.mp4")
    ds = MSRVTTQA(root, "train", top_k=2, train=True, num_frames=2, size=SIZE)
    assert ds.vocab.answers == ["dog", "cat"]
    assert len(ds) == 5  # "bird" is outside the top 2
    item = ds[2]
    assert item["text"] == "what is it 2?" and item["answer_index"] == 1
    assert item["answer_scores"].tolist() == [0.0, 1.0]
    evaluation = MSRVTTQA(root, "test", vocab=ds.vocab, num_frames=2, size=SIZE)
    assert len(evaluation) == 2 and evaluation[1]["answer_index"] == -1
    assert evaluation[1]["answer_scores"].sum() == 0
    vocab_path = tmp_path / "answers.json"
    ds.vocab.save(vocab_path)
    assert AnswerVocab.load(vocab_path).answers == ["dog", "cat"]


def test_vqa_scores_and_dataset(tmp_path):
    assert [round(vqa_score(n), 2) for n in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert normalize_answer("Two Dogs!") == "2 dogs"
    assert normalize_answer("a red car") == "red car"
    write_image(tmp_path / "train2014" / "COCO_train2014_000000000042.jpg")
    questions = {
        "data_subtype": "train2014",
        "questions": [
            {"image_id": 42, "question": "What colour is the left?", "question_id": 420},
        ],
    }
    answers = ["red"] * 4 + ["Red!"] * 2 + ["pink"] * 2 + ["orange"] + ["maroon"]
    annotations = {
        "annotations": [
            {
                "question_id": 420,
                "image_id": 42,
                "multiple_choice_answer": "red",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i}
                    for i, a in enumerate(answers)
                ],
            }
        ]
    }
    q_path = tmp_path / "q.json"
    a_path = tmp_path / "a.json"
    q_path.write_text(json.dumps(questions))
    a_path.write_text(json.dumps(annotations))
    vocab = AnswerVocab(["red", "pink", "orange", "blue"])
    ds = VQAv2(q_path, a_path, tmp_path / "train2014", vocab=vocab, size=SIZE)
    item = ds[0]
    assert item["text"] == "What colour is the left?" and item["is_image"]
    assert [round(v, 2) for v in item["answer_scores"].tolist()] == [1.0, 0.6, 0.3, 0.0]
    built = VQAv2(q_path, a_path, tmp_path / "train2014", top_k=10)
    assert built.vocab.answers == ["red"]
    with pytest.raises(ValueError, match="vocab"):
        VQAv2(q_path, None, tmp_path / "train2014")


def test_collator_stacks_equal_clips_and_pads_unequal_ones_alike():
    from perceiver_vl.data.collate import _stack_videos

    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(3, 3, 8, 8, generator=g) for _ in range(3)]
    items = [{"video": c, "video_mask": torch.ones(3, dtype=torch.bool)} for c in clips]
    items[1]["video_mask"] = torch.tensor([True, True, False])  # a masked frame kept as given
    del items[2]["video_mask"]  # no mask: every frame real
    video, mask = _stack_videos(items)
    assert torch.equal(video, torch.stack(clips))
    assert mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    # a shorter clip is padded with zero, masked frames; the others are unchanged
    items[0] = {"video": clips[0][:2]}
    video, mask = _stack_videos(items)
    assert torch.equal(video[0, :2], clips[0][:2]) and not video[0, 2].any()
    assert torch.equal(video[1:], torch.stack(clips[1:]))
    assert mask.tolist() == [[True, True, False], [True, True, False], [True] * 3]
