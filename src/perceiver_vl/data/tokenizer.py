"""BERT uncased WordPiece tokenisation through the ``tokenizers`` library.

The default vocabulary is bert-base-uncased's (30,522 entries, Apache-2.0; see
``vocab/NOTICE``), shipped with the package. A user's ``vocab.txt`` or ``tokenizer.json`` works
as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

DEFAULT_MAX_LENGTH = 40
_DEFAULT_VOCAB = Path(__file__).with_name("vocab") / "bert-base-uncased.txt"


def default_vocab_path() -> Path:
    """Return the path of the bert-base-uncased ``vocab.txt`` shipped with the package.

    Raises:
        FileNotFoundError: the installation lacks its package data (a broken install).
    """
    if not _DEFAULT_VOCAB.is_file():
        raise FileNotFoundError(
            f"the default BERT vocabulary {str(_DEFAULT_VOCAB)!r} is missing from this "
            "installation of perceiver-vl; reinstall the package (`pip install --force-reinstall "
            "perceiver-vl`), or pass your own vocabulary with "
            "Tokenizer.from_file('path/to/vocab.txt' or 'path/to/tokenizer.json')."
        )
    return _DEFAULT_VOCAB


def _build_from_vocab(vocab_path: Path) -> _HFTokenizer:
    vocab: dict[str, int] = {}
    with open(vocab_path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n").rstrip("\r")
            if token and token not in vocab:
                vocab[token] = index
    for required in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        if required not in vocab:
            raise ValueError(
                f"vocab={str(vocab_path)!r} lacks the special token {required}; "
                "pass a BERT-style vocab.txt (one token a line, with [PAD] [UNK] [CLS] [SEP] [MASK])"
            )
    tok = _HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(
        [AddedToken(t, special=True) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    )
    return tok


class Tokenizer:
    """BERT uncased WordPiece tokenizer producing fixed-length id and mask tensors.

    Args:
        backend: a ``tokenizers.Tokenizer`` with a BERT-style vocabulary.
        max_length: every output is truncated or padded to this many tokens ([CLS] and [SEP]
            included).

    Example:
        >>> tok = Tokenizer.default()
        >>> ids, mask = tok(["a man is playing a guitar"])   # ids: (1, 40), mask: (1, 40)
    """

    def __init__(self, backend: _HFTokenizer, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length={max_length!r} is too small; it must be an int >= 2 to hold [CLS] and [SEP]"
            )
        self.max_length = max_length
        self._tok = backend
        ids = {name: backend.token_to_id(name) for name in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
        missing = [name for name, value in ids.items() if value is None]
        if missing:
            raise ValueError(
                f"the tokenizer vocabulary lacks {missing}; use a BERT-style vocabulary"
            )
        self._pad_id = int(ids["[PAD]"])
        self._cls_id = int(ids["[CLS]"])
        self._sep_id = int(ids["[SEP]"])
        self._mask_id = int(ids["[MASK]"])
        unk = backend.token_to_id("[UNK]")
        self._unk_id = int(unk) if unk is not None else None
        backend.no_truncation()
        backend.no_padding()
        backend.enable_truncation(max_length=max_length)
        backend.enable_padding(
            direction="right", pad_id=self._pad_id, pad_token="[PAD]", length=max_length
        )
        self._continuation: torch.Tensor | None = None
        # positions (in the last call's batch) of texts cut to max_length, for callers that warn
        self.last_truncated: list[int] = []

    # ----------------------------------------------------------------- construction
    @classmethod
    def default(cls, max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
        """The bert-base-uncased tokenizer from the offline vocabulary (see `default_vocab_path`)."""
        return cls(_build_from_vocab(default_vocab_path()), max_length=max_length)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
        """Load a ``vocab.txt`` (one WordPiece token a line) or a ``tokenizer.json``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: ``path`` is neither a ``.json`` tokenizer nor a vocabulary text file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"path={str(path)!r} does not exist; pass a vocab.txt or tokenizer.json file"
            )
        if path.suffix == ".json":
            try:
                backend = _HFTokenizer.from_file(str(path))
            except Exception as err:  # tokenizers raises a plain Exception on bad files
                raise ValueError(
                    f"path={str(path)!r} is not a valid tokenizer.json ({err}); "
                    "pass a file saved by the `tokenizers` library or a vocab.txt"
                ) from err
            return cls(backend, max_length=max_length)
        return cls(_build_from_vocab(path), max_length=max_length)

    # ----------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary (30,522 for bert-base-uncased)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def cls_id(self) -> int:
        return self._cls_id

    @property
    def sep_id(self) -> int:
        return self._sep_id

    @property
    def mask_id(self) -> int:
        return self._mask_id

    @property
    def special_ids(self) -> list[int]:
        """Ids never chosen as masked-LM targets: [PAD], [CLS], [SEP], [MASK] (and [UNK])."""
        ids = [self._pad_id, self._cls_id, self._sep_id, self._mask_id]
        if self._unk_id is not None:
            ids.append(self._unk_id)
        return ids

    @property
    def backend(self) -> _HFTokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    # ----------------------------------------------------------------- encode / decode
    def __call__(self, texts: Sequence[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch of texts.

        Args:
            texts: B strings (a single string is treated as a batch of one).

        Returns:
            ids: (B, L) int64 token ids, L = ``max_length``, padded with ``pad_id``.
            mask: (B, L) bool, True = real token ([CLS]/[SEP] included), False = padding.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{position}]={text!r} is not a string; pass a list of str")
        if not texts:
            empty = torch.zeros(0, self.max_length, dtype=torch.long)
            return empty, empty.bool()
        encodings = self._tok.encode_batch(texts)
        self.last_truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return ids, mask

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Turn ids (L,) back into text (WordPiece pieces re-joined; padding dropped)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if skip_special:
            dropped = {self._pad_id, self._cls_id, self._sep_id}
            ids = [i for i in ids if i not in dropped]
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def tokens(self, text: str) -> list[str]:
        """The WordPiece tokens of one text (with [CLS]/[SEP], without padding)."""
        encoding = self._tok.encode(text)
        return [t for t, m in zip(encoding.tokens, encoding.attention_mask) if m]

    def continuation_table(self) -> torch.Tensor:
        """(vocab_size,) bool: True where the token continues a word (WordPiece ``##`` prefix)."""
        if self._continuation is None:
            table = torch.zeros(self.vocab_size, dtype=torch.bool)
            for token, index in self._tok.get_vocab(with_added_tokens=True).items():
                if token.startswith("##") and index < table.numel():
                    table[index] = True
            self._continuation = table
        return self._continuation

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
