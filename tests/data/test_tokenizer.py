from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from perceiver_vl.data import IGNORE_INDEX, MLMCollator, Tokenizer, mask_tokens


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def test_reference_ids(tok):
    ids, mask = tok(["a man is playing a guitar"])
    assert ids.shape == (1, 40) and mask.shape == (1, 40)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, :8].tolist() == [101, 1037, 2158, 2003, 2652, 1037, 2858, 102]
    assert mask[0, :8].all() and not mask[0, 8:].any()
    assert (ids[0, 8:] == 0).all()


def test_special_ids_and_vocab(tok):
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 101, 102, 103)


def test_uncased_and_truncation():
    tok = Tokenizer.default(max_length=6)
    ids, mask = tok(["A MAN Is Playing A Guitar loudly", "hi"])
    assert ids.shape == (2, 6)
    assert ids[0].tolist() == [101, 1037, 2158, 2003, 2652, 102]  # [SEP] kept at the end
    assert mask[0].all()
    assert mask[1].sum() == 3


def test_decode_roundtrip(tok):
    ids, _ = tok(["a man is playing a guitar"])
    assert tok.decode(ids[0]) == "a man is playing a guitar"


def test_from_vocab_file_and_tokenizer_json(tmp_path, tok):
    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "##s", "sit"]
    vocab.write_text("\n".join(words) + "\n")
    small = Tokenizer.from_file(vocab, max_length=8)
    ids, mask = small(["Cats sit", "a dog"])
    assert ids[0, :5].tolist() == [2, 6, 7, 8, 3]
    assert ids[1, :4].tolist() == [2, 5, 1, 3]  # unknown word -> [UNK]
    assert small.vocab_size == len(words)
    json_path = tmp_path / "tokenizer.json"
    tok.backend.save(str(json_path))
    again = Tokenizer.from_file(json_path, max_length=12)
    ids, mask = again(["a man is playing a guitar"])
    assert ids.shape == (1, 12)
    assert ids[0, :8].tolist() == [101, 1037, 2158, 2003, 2652, 1037, 2858, 102]
    assert again.decode(ids[0]) == "a man is playing a guitar"
    assert json.loads(json_path.read_text())["model"]["type"] == "WordPiece"


def test_bad_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="vocab.txt or tokenizer.json"):
        Tokenizer.from_file(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        Tokenizer.from_file(bad)
    with pytest.raises(ValueError, match="texts\\[1\\]"):
        tok(["ok", 3])  # type: ignore[list-item]


def test_missing_default_vocab_message(monkeypatch):
    import perceiver_vl.data.tokenizer as module

    monkeypatch.setattr(module, "_DEFAULT_VOCAB", module._DEFAULT_VOCAB.with_name("gone.txt"))
    with pytest.raises(FileNotFoundError, match="reinstall the package"):
        module.Tokenizer.default()


def test_default_vocabulary_is_the_shipped_bert_uncased_one():
    from perceiver_vl.data import default_vocab_path

    path = default_vocab_path()
    assert path.parent.name == "vocab" and (path.parent / "NOTICE").is_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522
    assert lines[:1] == ["[PAD]"] and lines[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_the_vocabulary_and_its_attribution_are_declared_package_data():
    from perceiver_vl.data import default_vocab_path

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["perceiver_vl"]
    package = default_vocab_path().parents[2]
    for name in ("bert-base-uncased.txt", "NOTICE"):
        shipped = (default_vocab_path().parent / name).relative_to(package).as_posix()
        assert shipped in declared
    notice = (default_vocab_path().parent / "NOTICE").read_text()
    assert "Apache License" in notice and "google-research/bert" in notice


# ---------------------------------------------------------------------------- masked LM
def _batch(tok, n=64):
    texts = [f"a man number {i} is playing a wonderful guitar in the park" for i in range(n)]
    return tok(texts)


def test_mask_tokens_statistics(tok):
    ids, mask = _batch(tok, 512)
    gen = torch.Generator().manual_seed(0)
    corrupted, labels = mask_tokens(
        ids,
        mask,
        vocab_size=tok.vocab_size,
        mask_id=tok.mask_id,
        special_ids=tok.special_ids,
        generator=gen,
    )
    special = torch.isin(ids, torch.tensor(tok.special_ids))
    eligible = mask & ~special
    targets = labels != IGNORE_INDEX
    assert not (targets & ~eligible).any()  # never special tokens or padding
    assert torch.equal(labels[targets], ids[targets])
    assert torch.equal(corrupted[~targets], ids[~targets])
    frac = targets.sum() / eligible.sum()
    assert 0.13 < frac < 0.17
    n = targets.sum().float()
    as_mask = (corrupted[targets] == tok.mask_id).sum() / n
    kept = (corrupted[targets] == ids[targets]).sum() / n
    assert 0.76 < as_mask < 0.84
    assert 0.07 < kept < 0.13
    replaced = corrupted[targets & (corrupted != tok.mask_id) & (corrupted != ids)]
    assert not torch.isin(replaced, torch.tensor(tok.special_ids)).any()


def test_mask_tokens_seeded(tok):
    ids, mask = _batch(tok)
    kwargs = dict(vocab_size=tok.vocab_size, mask_id=tok.mask_id, special_ids=tok.special_ids)
    a = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3), **kwargs)
    b = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3), **kwargs)
    c = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_whole_word_masking(tok):
    texts = ["unbelievably overcomplicated tokenization"] * 200
    ids, mask = tok(texts)
    continuation = tok.continuation_table()[ids]
    assert continuation.any()
    corrupted, labels = mask_tokens(
        ids,
        mask,
        vocab_size=tok.vocab_size,
        mask_id=tok.mask_id,
        special_ids=tok.special_ids,
        generator=torch.Generator().manual_seed(0),
        whole_word=True,
        tokenizer=tok,
        probability=0.3,
    )
    targets = labels != IGNORE_INDEX
    assert targets.any()
    # A word is a start piece plus its ## continuations: all chosen or none.
    for row in range(ids.shape[0]):
        word = -1
        state: dict[int, set[bool]] = {}
        for pos in range(1, int(mask[row].sum()) - 1):
            if not continuation[row, pos]:
                word += 1
            state.setdefault(word, set()).add(bool(targets[row, pos]))
        assert all(len(v) == 1 for v in state.values())
    with pytest.raises(ValueError, match="tokenizer"):
        mask_tokens(ids, mask, vocab_size=10, mask_id=3, special_ids=[0], whole_word=True)


def test_ensure_one_and_collator(tok):
    ids, mask = tok(["a cat"] * 50)
    collator = MLMCollator(tok, probability=0.01, seed=1, ensure_one=True)
    _, labels = collator(ids, mask)
    assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()
    collator_ww = MLMCollator(tok, probability=0.01, seed=1, ensure_one=True, whole_word=True)
    _, labels = collator_ww(ids, mask)
    assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()
