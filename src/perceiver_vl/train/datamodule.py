"""LightningDataModule around the data package: data set specs -> loaders with the Collator."""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from perceiver_vl.data import Collator, SharedWordBatchSampler, Tokenizer
from perceiver_vl.data.annotation_index import EntryTable
from perceiver_vl.fileio import atomic_write_json

from .resume import EpochSampler, stable_seed

# short names usable as "kind" in a data set spec
DATASET_KINDS: dict[str, str] = {
    "captions": "perceiver_vl.data.CaptionDataset",
    "webvid": "perceiver_vl.data.WebVid",
    "cc3m": "perceiver_vl.data.CC3M",
    "msrvtt": "perceiver_vl.data.MSRVTTRetrieval",
    "didemo": "perceiver_vl.data.DiDeMo",
    "karpathy": "perceiver_vl.data.KarpathyCaptions",
    "msrvtt_qa": "perceiver_vl.data.MSRVTTQA",
    "vqav2": "perceiver_vl.data.VQAv2",
    "lsmdc": "perceiver_vl.data.LSMDC",
    "activitynet": "perceiver_vl.data.ActivityNetCaptions",
    "tgif_qa": "perceiver_vl.data.TGIFQA",
    "nlvr2": "perceiver_vl.data.NLVR2",
    "webdataset": "perceiver_vl.data.WebDatasetShards",
    "synthetic": "synthetic",
    "synthetic_images": "synthetic_images",
}
_SYNTHETIC_DEFAULTS = {"num_train": 2000, "num_val": 200, "num_test": 500}


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"class path {path!r} must look like 'package.module.ClassName'")
    return getattr(importlib.import_module(module), name)


HOLDOUT = "holdout"  # data.val: validate on what the training specs' ``holdout:`` keep back


def _as_list(specs: Any, argument: str) -> list[dict[str, Any]]:
    if specs is None:
        return []
    if specs == HOLDOUT and argument == "data.val":
        return [{"kind": HOLDOUT}]
    if isinstance(specs, dict):
        specs = [specs]
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or not ("kind" in spec or "class_path" in spec):
            raise ValueError(
                f"{argument} entries must be mappings with 'kind' (one of "
                f"{sorted(DATASET_KINDS)}) or 'class_path', got {spec!r}"
            )
        out.append(dict(spec))
    return out


class PerceiverVLDataModule(pl.LightningDataModule):
    """Data sets for fit / validate / test, batched by :class:`perceiver_vl.data.Collator`.

    A data set spec is a mapping: ``kind`` (``captions``, ``webvid``, ``cc3m``, ``msrvtt``,
    ``didemo``, ``karpathy``, ``msrvtt_qa``, ``vqav2``, ``webdataset``, ``synthetic``,
    ``synthetic_images``) or ``class_path`` (any data set class taking the common keyword
    arguments), plus the class's own arguments; ``name`` optionally names it in logs. The module
    adds ``num_frames``, ``size``, ``train`` and ``seed``. The synthetic kinds take ``root``,
    ``split`` and ``generate`` (arguments of ``generate_benchmark``, run once in
    ``prepare_data``). QA evaluation sets share the training set's answer vocabulary (or
    ``vocab: answers.json``).

    Validation carved from training (model selection never reads a reported test split): a
    training spec with ``holdout: {size: 500, seed: 0}`` keeps that many of its media (or that
    fraction, when < 1) out of training, chosen by a keyed hash of their ids
    (:func:`~perceiver_vl.data.splits.holdout_ids`: reproducible, independent of file order);
    ``val: holdout`` validates on them (read in evaluation mode: middle frames, centre crops,
    one item per media).

    Several training data sets (e.g. WebVid videos + CC3M images) are iterated together: every
    training step receives one batch of each (Lightning's CombinedLoader, ``train_mode``), so a
    run mixes image-text and video-text batches.

    Args:
        train, val, test: a spec or a list of specs per stage; ``val: holdout`` validates on
            the media the training specs hold out (``holdout:``).
        batch_size: samples per device per step (per training data set).
        eval_batch_size: batch size for val/test (default: ``batch_size``).
        num_workers: loader worker processes.
        num_frames: frames per video clip (T).
        image_size: frame side (pixels).
        max_text_length: token budget per caption (must not exceed the model's).
        vocab: a ``vocab.txt`` / ``tokenizer.json``; None = bert-base-uncased (offline).
        mlm_probability: masked-LM target fraction (0 = no masked-LM inputs).
        whole_word_masking: mask whole words.
        train_mode: CombinedLoader mode for several training sets (``max_size_cycle`` or
            ``min_size``).
        seed: data randomness (frames, crops, captions, masking).
        caption_group_size: > 1 builds each training batch from groups of this many captions
            that share content words (:class:`~perceiver_vl.data.SharedWordBatchSampler`), so
            the in-batch negatives of contrastive and retrieval losses include near misses;
            1 (the default) = shuffled batches. The grouped order is drawn from (seed, epoch)
            like the plain one, so resumption stays exact; under data parallelism each rank
            takes every ``world_size``-th item of it, so a group is split between the ranks.
        drop_last: drop the last incomplete training batch.
        pin_memory: pin loader memory (GPU runs).
        progress: show progress bars for one-off work (``cache: true`` decoding).
        index_cache: where readers that index a large annotation file (``cc3m``, ``captions``
            with a ``.jsonl`` file) keep the index: ``true`` (the default) =
            ``<trainer.default_root_dir>/index_cache`` when a Trainer runs the module (no cache
            without one), a folder path, or ``false`` (every process parses the file). The
            first process of each node builds it in ``prepare_data``, while Lightning holds the
            other ranks at a barrier; they then load it in ``setup``.
    """

    def __init__(
        self,
        train: list[dict[str, Any]] | dict[str, Any] | None = None,
        val: list[dict[str, Any]] | dict[str, Any] | str | None = None,
        test: list[dict[str, Any]] | dict[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        num_frames: int = 8,
        image_size: int = 224,
        max_text_length: int = 40,
        vocab: str | None = None,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        train_mode: str = "max_size_cycle",
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
        progress: bool = True,
        caption_group_size: int = 1,
        index_cache: str | bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(index_cache, (str, bool)) or index_cache == "":
            raise ValueError(
                f"data.index_cache={index_cache!r} must be true (beside the run), false (no "
                "cache) or a folder path"
            )
        self.index_cache = index_cache
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if train_mode not in ("max_size_cycle", "min_size"):
            raise ValueError(
                f"data.train_mode={train_mode!r} must be 'max_size_cycle' or 'min_size'"
            )
        self.specs = {
            "train": _as_list(train, "data.train"),
            "val": _as_list(val, "data.val"),
            "test": _as_list(test, "data.test"),
        }
        self.batch_size = batch_size
        self.progress = progress
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_frames = num_frames
        self.image_size = image_size
        self.max_text_length = max_text_length
        self.vocab = vocab
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.train_mode = train_mode
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        if caption_group_size < 1 or batch_size % caption_group_size:
            raise ValueError(
                f"data.caption_group_size={caption_group_size} must be >= 1 and divide "
                f"data.batch_size={batch_size}"
            )
        self.caption_group_size = caption_group_size
        self.datasets: dict[str, list[tuple[str, Dataset]]] = {}
        self._tokenizer: Tokenizer | None = None
        self._held: dict[int, tuple[set[str], tuple[str, Dataset]]] = {}
        holdout_val = bool(self.specs["val"]) and self.specs["val"][0].get("kind") == HOLDOUT
        if holdout_val and not any("holdout" in spec for spec in self.specs["train"]):
            raise ValueError(
                "data.val: holdout validates on media held out of training, but no data.train "
                "spec has holdout: {size: N, seed: S}; add one or give data.val explicitly"
            )
        # the training loaders' samplers (resumption), and where a restored run starts
        self._train_samplers: list[EpochSampler] = []
        self._resume_at: dict[str, Any] | None = None

    # ----------------------------------------------------------------- building blocks
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = (
                Tokenizer.from_file(self.vocab, max_length=self.max_text_length)
                if self.vocab
                else Tokenizer.default(max_length=self.max_text_length)
            )
        return self._tokenizer

    def collator(self, stage: str) -> Collator:
        return Collator(
            self.tokenizer,
            mlm_probability=self.mlm_probability,
            whole_word=self.whole_word_masking,
            seed=self.seed + {"train": 0, "val": 1, "test": 2}.get(stage, 3),
        )

    def _synthetic_roots(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(kind, root) -> generate options, merged over every spec naming that root."""
        roots: dict[tuple[str, str], dict[str, Any]] = {}
        for specs in self.specs.values():
            for spec in specs:
                kind = spec.get("kind")
                if kind not in ("synthetic", "synthetic_images"):
                    continue
                if not spec.get("root"):
                    raise ValueError(f"a {kind!r} data set spec needs root=<folder>, got {spec!r}")
                options = roots.setdefault((kind, str(spec["root"])), {})
                options.update(spec.get("generate") or {})
        return roots

    def prepare_data(self) -> None:
        """Generate the synthetic benchmarks named in the specs and build the annotation
        indexes into :attr:`index_cache_dir` (Lightning runs this on local rank 0 only, the
        other ranks waiting at a barrier until it returns)."""
        for (kind, root), options in self._synthetic_roots().items():
            complete = all((Path(root) / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))
            # explicit options: (re)generate unless identical output exists (the generator
            # checks); none: keep whatever benchmark is there, generate defaults only if absent
            if options or not complete:
                self._generate(kind, root, options)
        if self.index_cache_dir is None:
            return
        for stage, specs in self.specs.items():
            for position, spec in enumerate(specs):
                if self._indexed_class(spec) is None:
                    continue
                if stage == "train" and "holdout" in spec:
                    self._holdout(position)  # writes the index and the held-out ids
                    self._held.pop(position)
                else:
                    spec = {k: v for k, v in spec.items() if k not in ("holdout", "cache")}
                    self._build_dataset(spec, stage)  # writes the cache; the data set is dropped

    @property
    def index_cache_dir(self) -> Path | None:
        """The folder of annotation indexes (see ``index_cache``), or None."""
        if self.index_cache is False:
            return None
        if isinstance(self.index_cache, str):
            return Path(self.index_cache)
        trainer = self.trainer  # set when a Trainer runs this module
        return None if trainer is None else Path(trainer.default_root_dir) / "index_cache"

    @staticmethod
    def _indexed_class(spec: dict[str, Any]) -> Any:
        """The data set class of ``spec`` when it takes ``index_cache``, else None."""
        class_path = spec.get("class_path") or DATASET_KINDS.get(spec.get("kind") or "")
        if not class_path or class_path in ("synthetic", "synthetic_images"):
            return None
        cls = _import(class_path)
        return cls if "index_cache" in inspect.signature(cls.__init__).parameters else None

    @staticmethod
    def _generate(kind: str, root: str, options: dict[str, Any]) -> None:
        from perceiver_vl.data import synthetic

        options = {**_SYNTHETIC_DEFAULTS, **options}
        options.setdefault("progress", False)
        if kind == "synthetic":
            synthetic.generate_benchmark(root, **options)
        else:
            options.pop("frames", None)
            synthetic.generate_image_benchmark(root, **options)

    def _holdout(self, position: int) -> tuple[set[str], tuple[str, Dataset]]:
        """(held-out ids, the evaluation-mode data set they were drawn from) of training spec
        ``position``; the ids always come from the evaluation-mode reading, so fit, validate and
        ``perceiver-vl evaluate --split val`` hold out the same media."""
        if position not in self._held:
            from perceiver_vl.data.splits import holdout_ids, parse_holdout

            spec = dict(self.specs["train"][position])
            spec.pop("cache", None)
            spec.pop("pairs", None)  # validation reads one item per media
            size, seed = parse_holdout(spec.pop("holdout"), f"data.train[{position}].holdout")
            name, dataset = self._build_dataset(spec, "val")
            entries = getattr(dataset, "entries", None)
            if isinstance(entries, EntryTable):
                ids: Any = entries.id_list
            elif isinstance(entries, list):
                ids = lambda: (e.id for e in entries)  # noqa: E731
            else:
                raise ValueError(
                    f"data.train[{position}].holdout: {type(dataset).__name__} has no entry list "
                    "to carve a validation split from (streamed shards cannot); give data.val"
                )
            held = self._cached_holdout(entries, size, seed, lambda: holdout_ids(ids(), size, seed))
            self._held[position] = (held, (f"{name}-holdout", dataset))
        return self._held[position]

    def _cached_holdout(self, entries: Any, size: float, seed: int, draw: Any) -> set[str]:
        """The held-out ids, kept beside the annotation index (hashing millions of ids costs
        more than loading the index): JSON keyed by the index's source file stamp, size and
        seed; recomputed when absent or unreadable."""
        source = getattr(entries, "source", None)
        folder = self.index_cache_dir
        if source is None or folder is None:
            return draw()
        import hashlib
        import json

        key = json.dumps([source, size, seed], sort_keys=True)
        file = folder / f"holdout-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
            if saved.get("key") == key and isinstance(saved.get("ids"), list):
                return set(saved["ids"])
        except (OSError, ValueError, AttributeError):
            pass
        held = draw()
        try:
            atomic_write_json(file, {"key": key, "ids": sorted(held)})
        except OSError as err:
            warnings.warn(f"could not write the hold-out cache {file} ({err})", stacklevel=2)
        return held

    def _build_split(self, split: str) -> list[tuple[str, Dataset]]:
        from perceiver_vl.data.splits import restrict_entries

        built = []
        if split == "val" and self.specs["val"] and self.specs["val"][0].get("kind") == HOLDOUT:
            for position, spec in enumerate(self.specs["train"]):
                if "holdout" in spec:
                    held, (name, dataset) = self._holdout(position)
                    restrict_entries(dataset, held, True, f"data.train[{position}].holdout")
                    built.append((name, dataset))
            return built
        for position, spec in enumerate(self.specs[split]):
            if split == "train" and "holdout" in spec:
                held, _ = self._holdout(position)
                spec = {k: v for k, v in spec.items() if k != "holdout"}
                name, dataset = self.build_dataset(spec, split)
                if isinstance(dataset, IterableDataset) or not hasattr(dataset, "entries"):
                    raise ValueError(
                        f"data.train[{position}].holdout needs a data set with entries; "
                        f"{type(dataset).__name__} has none (drop cache: true or holdout:)"
                    )
                restrict_entries(dataset, held, False, f"data.train[{position}].holdout")
                built.append((name, dataset))
            else:
                built.append(self.build_dataset(spec, split))
        return built

    def build_dataset(self, spec: dict[str, Any], stage: str) -> tuple[str, Dataset]:
        """Instantiate one spec for ``stage`` ("train", "val" or "test").

        ``cache: true`` in a spec decodes the data set once into memory
        (:class:`~perceiver_vl.data.CachedClips`), for small data sets that are cheaper to
        train on than to decode.
        """
        spec = dict(spec)
        cache = bool(spec.pop("cache", False))
        name, dataset = self._build_dataset(spec, stage)
        if cache and not isinstance(dataset, IterableDataset):
            from perceiver_vl.data import CachedClips

            dataset = CachedClips(
                dataset,
                num_workers=self.num_workers,
                description=f"decoding {name}",
                progress=self.progress,
            )
        return name, dataset

    def _build_dataset(self, spec: dict[str, Any], stage: str) -> tuple[str, Dataset]:
        original, spec = spec, dict(spec)
        kind = spec.pop("kind", None)
        class_path = spec.pop("class_path", None) or DATASET_KINDS.get(kind or "")
        if class_path is None:
            raise ValueError(
                f"unknown data set kind {kind!r}; use one of {sorted(DATASET_KINDS)} or give "
                "class_path: package.module.Class"
            )
        name = spec.pop("name", None)
        spec.pop("generate", None)
        common = {
            "num_frames": self.num_frames,
            "size": self.image_size,
            "train": stage == "train",
            "seed": self.seed,
        }
        if class_path in ("synthetic", "synthetic_images"):
            if "root" not in spec:
                raise ValueError(f"a {kind!r} data set spec needs root=<folder>, got {original!r}")
            root = Path(spec.pop("root"))
            split = spec.pop("split", stage)
            if not (root / f"{split}.jsonl").is_file():  # no Trainer ran prepare_data
                options = self._synthetic_roots().get((kind, str(original["root"])), {})
                self._generate(kind, str(original["root"]), options)
            from perceiver_vl.data import CaptionDataset

            dataset: Dataset = CaptionDataset(
                root / f"{split}.jsonl",
                root,
                **{**common, **spec, "name": name or f"{kind}-{split}"},
            )
            return name or f"{kind}-{split}", dataset
        cls = _import(class_path)
        cache_dir = self.index_cache_dir
        if cache_dir is not None and "index_cache" not in spec and self._indexed_class(original):
            spec["index_cache"] = str(cache_dir)
        if isinstance(spec.get("vocab"), str):  # a saved answer vocabulary (JSON list)
            from perceiver_vl.data import AnswerVocab

            spec["vocab"] = AnswerVocab.load(spec["vocab"])
        elif kind == "vqav2" and stage != "train" and "vocab" not in spec:
            spec["vocab"] = self._train_vocab(kind)
        kwargs = {**common, **spec}
        if name is not None:
            kwargs.setdefault("name", name)
        try:
            dataset = cls(**kwargs)
        except KeyError as err:  # an annotation row without a field the format needs
            raise ValueError(
                f"data set {kind or class_path!r} ({ {k: v for k, v in spec.items()} }): an "
                f"annotation entry lacks the field {err}; check the annotation files of this "
                "spec"
            ) from err
        return name or getattr(dataset, "name", type(dataset).__name__), dataset

    def _train_vocab(self, kind: str) -> Any:
        """The answer vocabulary of the training set of ``kind`` (val/test must share it)."""
        for position, spec in enumerate(self.specs["train"]):
            if spec.get("kind") == kind:
                built = self.datasets.get("train")
                spec = {k: v for k, v in spec.items() if k != "holdout"}  # same vocabulary
                dataset = built[position][1] if built else self.build_dataset(spec, "train")[1]
                return getattr(dataset, "vocab", None)
        return None

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._build_split(split)

    # ----------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, stage: str) -> DataLoader:
        """A loader whose order, worker seeds and masking depend only on the seed and the epoch
        (never on the global RNG), so resumed training sees the batches the uninterrupted run
        saw (see :mod:`perceiver_vl.train.resume`)."""
        train = stage == "train"
        iterable = isinstance(dataset, IterableDataset)
        collator = self.collator(stage)
        # the workers' base seed comes from this generator, not from the global RNG
        generator = torch.Generator().manual_seed(stable_seed("loader", self.seed, stage))
        sampler = None
        if not iterable:
            listeners: list[Any] = [collator.set_epoch]
            if train and hasattr(dataset, "set_epoch"):
                listeners.append(dataset.set_epoch)
            if train:
                listeners.append(
                    lambda epoch: generator.manual_seed(stable_seed("loader", self.seed, epoch))
                )
            trainer = self.trainer
            distributed = trainer is not None and trainer.world_size > 1
            grouped = train and self.caption_group_size > 1
            sampler = EpochSampler(
                len(dataset),  # type: ignore[arg-type]
                shuffle=train,
                seed=self.seed,
                shuffled_order=self._caption_groups(dataset).order if grouped else None,
                num_replicas=trainer.world_size if distributed else 1,
                rank=trainer.global_rank if distributed else 0,
                on_epoch=listeners,
            )
            if train:
                self._train_samplers.append(sampler)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collator,
            drop_last=train and self.drop_last,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            generator=generator,
        )

    def _caption_groups(self, dataset: Dataset) -> SharedWordBatchSampler:
        """The grouped order of ``caption_group_size``: consecutive runs of ``batch_size``
        indices of :meth:`SharedWordBatchSampler.order` are the batches."""
        return SharedWordBatchSampler(
            _item_texts(dataset),
            self.batch_size,
            self.caption_group_size,
            seed=self.seed,
            drop_last=self.drop_last,
        )

    def train_dataloader(self) -> Any:
        sets = self.datasets.get("train") or []
        if not sets:
            raise ValueError("no training data: set data.train (e.g. a 'synthetic' spec)")
        self._train_samplers = []
        if len(sets) == 1:
            loader: Any = self._loader(sets[0][1], "train")
        else:
            from lightning.pytorch.utilities import CombinedLoader

            loader = CombinedLoader(
                {name: self._loader(ds, "train") for name, ds in sets}, mode=self.train_mode
            )
        self._apply_resume()
        return loader

    # ----------------------------------------------------------------- resumption
    def _batches_consumed(self) -> int:
        """Training batches of the current epoch the fit loop has taken (0 without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the data (saved in every checkpoint): the epoch, the batches
        of it consumed, and what the order depends on (checked on resume)."""
        if not self._train_samplers:
            return {}
        return {
            "epoch": self._train_samplers[0].epoch,
            "batches": self._batches_consumed(),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "lengths": [sampler.length for sampler in self._train_samplers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where a restored run starts; applied when the training loader is built."""
        self._resume_at = dict(state_dict) if state_dict else None

    def _apply_resume(self) -> None:
        state, self._resume_at = self._resume_at, None
        if not state:
            return
        if not self._train_samplers:
            warnings.warn(
                "resuming with an iterable training data set (e.g. webdataset shards): the run "
                "continues from the saved step, but its samples start from the beginning of the "
                "stream, so it will not match the uninterrupted run exactly",
                stacklevel=2,
            )
            return
        # Lightning cannot see that the position is restored here, and would warn otherwise
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
        lengths = [sampler.length for sampler in self._train_samplers]
        saved = (state.get("batch_size"), state.get("seed"), state.get("lengths"))
        if saved != (self.batch_size, self.seed, lengths):
            warnings.warn(
                "resuming with other data settings than the checkpoint's (batch_size, seed, "
                f"data set lengths: saved {saved}, now {(self.batch_size, self.seed, lengths)}): "
                "the run continues from the saved step, but not with the batches the "
                "uninterrupted run would have seen",
                stacklevel=2,
            )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        per_epoch = [self._batches_per_epoch(sampler) for sampler in self._train_samplers]
        # the epoch's length: the longest loader (max_size_cycle) or the shortest (min_size)
        epoch_length = max(per_epoch) if self.train_mode == "max_size_cycle" else min(per_epoch)
        for sampler, count in zip(self._train_samplers, per_epoch):
            if batches >= epoch_length:  # saved after the epoch's last batch
                sampler.resume_at(epoch + 1, 0)
            else:  # a shorter loader cycles within the epoch
                sampler.resume_at(epoch, (batches % max(1, count)) * self.batch_size)

    def _batches_per_epoch(self, sampler: EpochSampler) -> int:
        full, rest = divmod(len(sampler), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def val_dataloader(self) -> Any:
        return [self._loader(ds, "val") for _, ds in self.datasets.get("val") or []]

    def test_dataloader(self) -> Any:
        return [self._loader(ds, "test") for _, ds in self.datasets.get("test") or []]

    # ----------------------------------------------------------------- skipped samples
    def skipped_samples(self) -> list[dict[str, Any]]:
        """Per data set that skipped samples: its name, counts by reason and recent failures."""
        out, seen = [], set()
        for split, sets in self.datasets.items():
            for name, dataset in sets:
                tracker = getattr(dataset, "tracker", None)
                if tracker is None or id(tracker) in seen or not tracker.failed:
                    continue
                seen.add(id(tracker))
                out.append(
                    {
                        "split": split,
                        "dataset": name,
                        "seen": tracker.seen,
                        "skipped": tracker.failed,
                        "by_reason": {k: v for k, v in tracker.counts.items() if k != "ok" and v},
                        "first_paths": [
                            {"path": p, "kind": k, "reason": r}
                            for p, k, r in tracker.first_failures
                        ],
                        "summary": tracker.summary(),
                    }
                )
        return out

    def report_skipped(self, out_dir: str | Path | None) -> Path | None:
        """Print the skipped-sample summary (if anything was skipped) to stderr and write it as
        ``skipped_samples.json`` into ``out_dir``; returns the file written."""
        import sys

        skipped = self.skipped_samples()
        if not skipped:
            return None
        for entry in skipped:
            print(f"[perceiver-vl] skipped samples: {entry['summary']}", file=sys.stderr)
        if out_dir is None:
            return None
        path = Path(out_dir) / "skipped_samples.json"
        atomic_write_json(path, skipped, indent=2)
        print(f"[perceiver-vl] skipped-sample summary written to {path}", file=sys.stderr)
        return path

    def teardown(self, stage: str) -> None:
        """At the end of every fit / validate / test: the skipped-sample summary, printed and
        written beside the run's outputs (``<default_root_dir>/skipped_samples.json``)."""
        trainer = self.trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        self.report_skipped(trainer.default_root_dir if trainer is not None else None)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to data sets with per-epoch randomness."""
        for sets in self.datasets.values():
            for _, dataset in sets:
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)

    def dataset(self, split: str, index: int = 0) -> Dataset:
        """The ``index``-th data set of ``split`` (built on demand)."""
        if split not in self.datasets:
            self.datasets[split] = self._build_split(split)
        sets = self.datasets[split]
        if not sets:
            raise ValueError(f"no {split!r} data set configured (set data.{split})")
        return sets[index][1]


def _item_texts(dataset: Dataset) -> list[str]:
    """One caption text per item of a map-style training set (what caption grouping keys on)."""
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            "data.caption_group_size > 1 needs a map-style data set (it orders the items); "
            f"{type(dataset).__name__} is iterable (e.g. webdataset shards): use 1"
        )
    items = getattr(dataset, "items", None)
    if isinstance(items, list) and all("text" in item for item in items):
        return [str(item["text"]) for item in items]
    entries = getattr(dataset, "entries", None)
    if isinstance(entries, (list, EntryTable)):
        pairs = getattr(dataset, "_pairs", None)
        if pairs is not None:
            return [entries[e].captions[c] for e, c in pairs]
        return [" ".join(entry.captions) for entry in entries]
    raise ValueError(
        f"data.caption_group_size > 1: {type(dataset).__name__} exposes no captions "
        "(neither cached items with 'text' nor caption entries); use 1"
    )
