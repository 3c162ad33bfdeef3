"""Benchmark cases, the sweeps over them, and the runner that measures them.

A :class:`BenchCase` is one configuration (model, frames, frame size, N, cross-attention blocks
kept, dtype, batch, mode). :func:`run_benchmark` measures a list of cases and returns one row
(a dict) per case with at least :data:`ROW_KEYS`; :func:`efficiency_rows` is the short form for
"Perceiver-VL against the joint baseline at these frame counts".

Conventions of a row:
- ``gflops`` / ``gmacs``: forward FLOPs of the whole timed call (all ``batch`` samples; a
  multiply-add is 2 FLOPs = 1 MAC), counted by :func:`perceiver_vl.flops.count_flops` in fp32
  (attention included, element-wise work excluded). They do not depend on the dtype.
- ``latency_ms_*``: per call (the whole batch); ``samples_per_s = batch / median``. For the
  retrieval modes a "sample" is a scored (text, video) pair.
- ``peak_mem_mb``: peak live tensor memory during one call (see :mod:`.measure`).
- ``fraction_of_matmul_peak``: achieved GFLOP/s over the square-matmul GFLOP/s of the same
  dtype measured in the same run (:mod:`.matmul`).
- A case whose estimated call time exceeds ``max_forward_s`` is not timed (``status`` says so);
  its FLOPs are still counted.
- A configuration that appears in several sweeps of one run is measured once; its rows differ
  only in ``sweep``.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from perceiver_vl.flops import count_flops, count_flops_of
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model.streams import StreamMode, single_stream_scores

from .baseline import JointTransformer
from .matmul import MatmulThroughput, matmul_throughput
from .measure import DTYPES, inference_context, peak_memory_mb, time_callable

MODELS: tuple[str, ...] = ("perceiver-vl", "joint")
# "forward": one forward of aligned pairs; the stream modes score all n x n pairs
MODES: tuple[str, ...] = ("forward", StreamMode.SINGLE, StreamMode.MULTI, StreamMode.MIXED)
SWEEPS: tuple[str, ...] = ("frames", "image-size", "latents", "blocks", "streams")

#: Keys every row has (the documented JSON schema).
ROW_KEYS: tuple[str, ...] = (
    "model",
    "frames",
    "image_size",
    "latents",
    "cross_attention_layers",
    "dtype",
    "batch",
    "gflops",
    "gmacs",
    "latency_ms_median",
    "latency_ms_p10",
    "latency_ms_p90",
    "peak_mem_mb",
    "samples_per_s",
)
#: Further keys every row has.
EXTRA_KEYS: tuple[str, ...] = (
    "mode",
    "sweep",
    "text_length",
    "pairs",
    "threads",
    "repeats",
    "gflops_per_s",
    "matmul_gflops_per_s",
    "fraction_of_matmul_peak",
    "compiled",
    "load_avg_1min",
    "status",
)

# The paper configuration (MSRVTT retrieval): 8 frames of 384^2, 40 text tokens, N = 128.
PAPER_FRAMES = 8
PAPER_IMAGE_SIZE = 384
PAPER_TEXT_LENGTH = 40
PAPER_LATENTS = 128
ALL_BLOCKS = (0, 1, 2)


@dataclass(frozen=True)
class BenchCase:
    """One benchmark configuration.

    Attributes:
        model: ``"perceiver-vl"`` or ``"joint"`` (the ViLT-style baseline).
        frames: Video frames T (1..64).
        image_size: Frame side in pixels (a multiple of 32).
        latents: Perceiver-VL latent size N (ignored by the baseline).
        cross_attention_layers: Perceiver-VL cross-attention blocks kept (ignored by the baseline).
        dtype: ``"fp32"`` or ``"bf16"``.
        batch: Samples per call; for the retrieval modes, n videos and n texts (n x n pairs).
        text_length: Text tokens L.
        mode: ``"forward"`` (single-stream forward of aligned pairs) or a retrieval mode scoring
            all n x n pairs: ``"single"`` (every pair through the encoder, the model's exact
            fast path), ``"multi"`` (n + n encodings, dot products), ``"mixed"`` (n + n
            encodings, decoder per pair).
        sweep: A label saying which sweep the case belongs to (``"main"`` by default).
    """

    model: str = "perceiver-vl"
    frames: int = PAPER_FRAMES
    image_size: int = PAPER_IMAGE_SIZE
    latents: int = PAPER_LATENTS
    cross_attention_layers: tuple[int, ...] = ALL_BLOCKS
    dtype: str = "fp32"
    batch: int = 1
    text_length: int = PAPER_TEXT_LENGTH
    mode: str = "forward"
    sweep: str = "main"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.mode != "forward" and self.model != "perceiver-vl":
            raise ValueError(
                f"mode={self.mode!r} (retrieval scoring) is measured for perceiver-vl only; "
                f"use mode='forward' for model={self.model!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 1 <= self.frames <= 64:
            raise ValueError(f"frames must lie in 1..64 (the temporal table), got {self.frames}")
        for name in ("image_size", "latents", "batch", "text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.text_length > 512:
            raise ValueError(f"text_length must be at most 512, got {self.text_length}")
        blocks = tuple(self.cross_attention_layers)
        if not blocks or any(not 0 <= b < len(ALL_BLOCKS) for b in blocks):
            raise ValueError(
                f"cross_attention_layers must be a non-empty subset of {ALL_BLOCKS}, got {blocks}"
            )
        object.__setattr__(self, "cross_attention_layers", blocks)


@dataclass
class BenchSettings:
    """How cases are measured.

    Attributes:
        warmup: Untimed calls before timing (the peak-memory call counts as the first).
        min_repeats / max_repeats: Bounds on the timed calls per case.
        budget_s: Timed calls stop after this many seconds once ``min_repeats`` are done.
        max_forward_s: Cases whose estimated call time (FLOPs at half the measured matmul
            throughput) is above this are not timed.
        memory: Measure peak memory (one extra profiled call, used as warm-up).
        compile: Wrap each model in ``torch.compile`` (the first call compiles, untimed).
        bf16: ``"weights"`` (a bf16 copy of the model; bf16 activations) or ``"autocast"``
            (fp32 weights under CPU autocast).
        matmul_size: Side of the square matmul that measures the machine's throughput.
        threads: torch intra-op threads for the run (None = leave as it is).
        seed: Seed of the random weights and inputs.
        base_config: The configuration cases modify (N, frame size); default the paper's
            (:class:`~perceiver_vl.PerceiverVLConfig` defaults). Tests pass a tiny one.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 30
    budget_s: float = 3.0
    max_forward_s: float = 30.0
    memory: bool = True
    compile: bool = False
    bf16: str = "weights"
    matmul_size: int = 4096
    threads: int | None = None
    seed: int = 0
    base_config: PerceiverVLConfig | None = None

    def __post_init__(self) -> None:
        if self.bf16 not in ("weights", "autocast"):
            raise ValueError(f"bf16 must be 'weights' or 'autocast', got {self.bf16!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_forward_s <= 0:
            raise ValueError(f"max_forward_s must be positive, got {self.max_forward_s}")


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
def default_cases(
    frames: Sequence[int] = (8, 32),
    *,
    models: Sequence[str] = MODELS,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    batches: Sequence[int] = (1, 16),
    image_size: int = PAPER_IMAGE_SIZE,
) -> list[BenchCase]:
    """The paper configuration for every model x frames x dtype x batch."""
    return [
        BenchCase(model=m, frames=t, dtype=d, batch=b, image_size=image_size)
        for m in models
        for d in dtypes
        for b in batches
        for t in frames
    ]


def sweep_cases(
    name: str,
    *,
    models: Sequence[str] = MODELS,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    frames: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    image_sizes: Sequence[int] = (224, 288, 384, 480, 576),
    latents: Sequence[int] = (32, 64, 128, 256, 512),
    blocks: Sequence[Sequence[int]] = ((0,), (0, 1), (0, 1, 2)),
    block_frames: Sequence[int] = (8, 32),
    stream_sizes: Sequence[int] = (2, 4, 8),
) -> list[BenchCase]:
    """The cases of one sweep (batch 1, paper configuration except the swept setting).

    ``frames``: T over ``frames`` for every model; ``image-size``: frame side over
    ``image_sizes`` at 8 frames, every model; ``latents``: N over ``latents``, Perceiver-VL;
    ``blocks``: the cross-attention blocks kept, at ``block_frames``, Perceiver-VL;
    ``streams``: scoring n x n (text, video) pairs for n in ``stream_sizes`` in each retrieval
    mode, Perceiver-VL, 8 frames.
    """
    if name == "frames":
        return [
            BenchCase(model=m, frames=t, dtype=d, sweep=name)
            for m in models
            for d in dtypes
            for t in frames
        ]
    if name == "image-size":
        return [
            BenchCase(model=m, image_size=s, dtype=d, sweep=name)
            for m in models
            for d in dtypes
            for s in image_sizes
        ]
    if name == "latents":
        return [BenchCase(latents=n, dtype=d, sweep=name) for d in dtypes for n in latents]
    if name == "blocks":
        return [
            BenchCase(frames=t, cross_attention_layers=tuple(b), dtype=d, sweep=name)
            for d in dtypes
            for t in block_frames
            for b in blocks
        ]
    if name == "streams":
        return [
            BenchCase(mode=mode, batch=n, dtype=d, sweep=name)
            for d in dtypes
            for mode in (StreamMode.MULTI, StreamMode.MIXED, StreamMode.SINGLE)
            for n in stream_sizes
        ]
    raise ValueError(f"unknown sweep {name!r}; choose from {SWEEPS}")


# ----------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------
def bench_config(case: BenchCase, base: PerceiverVLConfig | None = None) -> PerceiverVLConfig:
    """The model configuration a case runs: ``base`` (default: the paper configuration) with the
    case's N, frame size and (if longer) text length."""
    base = base or PerceiverVLConfig()
    if case.image_size % base.patch_size:
        raise ValueError(
            f"image_size must be a multiple of the patch size {base.patch_size}, got "
            f"{case.image_size} (e.g. 224, 384)"
        )
    if case.frames > base.max_frames:
        raise ValueError(
            f"frames={case.frames} exceeds the configuration's max_frames={base.max_frames}"
        )
    return base.replace(
        num_latents=case.latents,
        image_size=case.image_size,
        max_text_length=max(base.max_text_length, case.text_length),
    )


def build_model(
    case: BenchCase,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    base_config: PerceiverVLConfig | None = None,
) -> nn.Module:
    """A randomly initialised model for ``case`` (eval mode, fp32)."""
    torch.manual_seed(seed)
    config = bench_config(case, base_config)
    with torch.device(device):
        model = PerceiverVL(config) if case.model == "perceiver-vl" else JointTransformer(config)
    return model.eval()


def make_inputs(
    case: BenchCase,
    *,
    batch: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    vocab_size: int = 30522,
) -> dict[str, Tensor]:
    """Seeded inputs: ``video`` (B, T, 3, S, S) in [-1, 1], ``text_ids`` (B, L) in
    [1, vocab_size) starting with [CLS] (101), an all-True ``text_mask``; fp32 (the models cast
    frames to their own dtype). ``device="meta"`` gives shape-only tensors (no mask)."""
    b = case.batch if batch is None else batch
    if device == "meta":
        return {
            "video": torch.empty(
                b, case.frames, 3, case.image_size, case.image_size, device=device
            ),
            "text_ids": torch.empty(b, case.text_length, dtype=torch.long, device=device),
        }
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(b, case.frames, 3, case.image_size, case.image_size, generator=g) * 2 - 1
    text_ids = torch.randint(1, vocab_size, (b, case.text_length), generator=g)
    text_ids[:, 0] = min(101, vocab_size - 1)  # [CLS]
    return {
        "video": video,
        "text_ids": text_ids,
        "text_mask": torch.ones(b, case.text_length, dtype=torch.bool),
    }


def _call_for(case: BenchCase, model: nn.Module, inputs: dict[str, Tensor]) -> Callable[[], Any]:
    """The timed callable of a case."""
    layers = list(case.cross_attention_layers)
    if case.model == "joint":
        return lambda: model(**inputs)
    if case.mode == "forward":
        return lambda: model(**inputs, cross_attention_layers=layers)
    video, text_ids, text_mask = inputs["video"], inputs["text_ids"], inputs["text_mask"]
    if case.mode == StreamMode.SINGLE:
        return lambda: single_stream_scores(
            model,
            text_ids=text_ids,
            text_mask=text_mask,
            video=video,
            cross_attention_layers=layers,
        )

    def encode_both() -> tuple[Tensor, Tensor]:
        v = model.encode(video=video, cross_attention_layers=layers)
        t = model.encode(text_ids=text_ids, text_mask=text_mask, cross_attention_layers=layers)
        return v, t

    if case.mode == StreamMode.MULTI:
        return lambda: model.multi_stream_scores(*encode_both())
    return lambda: model.mixed_stream_scores(*encode_both())


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------
class Benchmark:
    """Measures cases, caching models, FLOP counts and the matmul throughput between them."""

    def __init__(
        self,
        settings: BenchSettings | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        max_cached_models: int = 4,
    ) -> None:
        self.settings = settings or BenchSettings()
        self.progress = progress or (lambda message: None)
        self.matmul: dict[str, MatmulThroughput] = {}
        self._models: OrderedDict[tuple, nn.Module] = OrderedDict()
        self._flops: dict[tuple, int] = {}
        self._max_cached = max(1, max_cached_models)

    # -- machine ---------------------------------------------------------------------------
    def measure_matmul(self, dtypes: Iterable[str]) -> dict[str, MatmulThroughput]:
        """Measure (once per dtype) the square-matmul throughput."""
        for dtype in dtypes:
            if dtype not in self.matmul:
                self.progress(f"matmul {dtype} {self.settings.matmul_size}^2 ...")
                self.matmul[dtype] = matmul_throughput(dtype, size=self.settings.matmul_size)
        return self.matmul

    # -- models ----------------------------------------------------------------------------
    def _inputs(self, case: BenchCase) -> dict[str, Tensor]:
        vocab = (self.settings.base_config or PerceiverVLConfig()).vocab_size
        return make_inputs(case, seed=self.settings.seed, vocab_size=vocab)

    def _fp32_model(self, case: BenchCase) -> nn.Module:
        """The uncompiled fp32 model of the case (cached with the others)."""
        key = (case.model, case.latents, case.image_size, case.text_length, "fp32", False)
        if key not in self._models:
            self._models[key] = build_model(
                case, seed=self.settings.seed, base_config=self.settings.base_config
            )
            self._evict()
        self._models.move_to_end(key)
        return self._models[key]

    def _evict(self) -> None:
        while len(self._models) > self._max_cached:
            self._models.popitem(last=False)

    def _model(self, case: BenchCase) -> nn.Module:
        s = self.settings
        convert = case.dtype == "bf16" and s.bf16 == "weights"
        if not convert and not s.compile:
            return self._fp32_model(case)
        key = (case.model, case.latents, case.image_size, case.text_length, case.dtype, s.compile)
        if key not in self._models:
            model = self._fp32_model(case)
            if convert:
                model = copy.deepcopy(model).to(torch.bfloat16)
            if s.compile:
                model = torch.compile(model)
            self._models[key] = model
            self._evict()
        self._models.move_to_end(key)
        return self._models[key]

    def flops(self, case: BenchCase) -> int:
        """FLOPs of the case's timed call (counted in fp32; batch-linear forwards at batch 1)."""
        key = (
            case.model,
            case.mode,
            case.frames,
            case.image_size,
            case.latents,
            case.cross_attention_layers,
            case.text_length,
            case.batch if case.mode != "forward" else 1,
        )
        if key not in self._flops:
            one = replace(case, dtype="fp32", batch=key[-1])
            if case.model == "joint":
                # No data-dependent work: count on the meta device (no arithmetic is done).
                model = build_model(one, device="meta", base_config=self.settings.base_config)
                self._flops[key] = count_flops(model, **make_inputs(one, device="meta"))
            else:
                model = self._fp32_model(one)
                call = _call_for(one, model, self._inputs(one))
                # (autograd stays on: FlopCounterMode's module tracker needs it)
                self._flops[key] = count_flops_of(call)
        per_call = self._flops[key]
        return per_call * case.batch if case.mode == "forward" else per_call

    # -- one case --------------------------------------------------------------------------
    def run_case(self, case: BenchCase) -> dict[str, Any]:
        """Measure one case -> one row."""
        s = self.settings
        self.measure_matmul([case.dtype])
        flops = self.flops(case)
        peak = self.matmul[case.dtype].gflops_per_s
        row: dict[str, Any] = {
            "model": case.model,
            "frames": case.frames,
            "image_size": case.image_size,
            "latents": case.latents if case.model == "perceiver-vl" else None,
            "cross_attention_layers": (
                list(case.cross_attention_layers) if case.model == "perceiver-vl" else None
            ),
            "dtype": case.dtype,
            "batch": case.batch,
            "gflops": flops / 1e9,
            "gmacs": flops / 2e9,
            "latency_ms_median": None,
            "latency_ms_p10": None,
            "latency_ms_p90": None,
            "peak_mem_mb": None,
            "samples_per_s": None,
            "mode": case.mode,
            "sweep": case.sweep,
            "text_length": case.text_length,
            "pairs": case.batch * case.batch if case.mode != "forward" else None,
            "threads": torch.get_num_threads(),
            "repeats": 0,
            "gflops_per_s": None,
            "matmul_gflops_per_s": peak,
            "fraction_of_matmul_peak": None,
            "compiled": s.compile,
            "load_avg_1min": _load_average(),
            "status": "ok",
        }
        estimate_s = flops / (0.5 * peak * 1e9)
        if estimate_s > s.max_forward_s:
            row["status"] = (
                f"not timed: estimated {estimate_s:.0f} s per call > max_forward_s "
                f"{s.max_forward_s:g}"
            )
            return row
        model = self._model(case)
        inputs = self._inputs(case)
        call = _call_for(case, model, inputs)
        with inference_context(case.dtype, autocast=s.bf16 == "autocast"):
            warmup = s.warmup
            if s.memory:
                row["peak_mem_mb"] = peak_memory_mb(call)
                warmup = max(0, warmup - 1)
            timing = time_callable(
                call,
                warmup=warmup,
                min_repeats=s.min_repeats,
                max_repeats=s.max_repeats,
                budget_s=s.budget_s,
            )
        seconds = timing.median_ms / 1e3
        samples = row["pairs"] if case.mode != "forward" else case.batch
        row.update(
            latency_ms_median=timing.median_ms,
            latency_ms_p10=timing.p10_ms,
            latency_ms_p90=timing.p90_ms,
            samples_per_s=samples / seconds,
            repeats=timing.repeats,
            gflops_per_s=flops / 1e9 / seconds,
            fraction_of_matmul_peak=flops / 1e9 / seconds / peak,
            load_avg_1min=_load_average(),
        )
        return row

    def run(
        self, cases: Sequence[BenchCase], *, on_row: Callable[[dict], None] | None = None
    ) -> list[dict[str, Any]]:
        """Measure ``cases`` in order (the matmul throughput first) -> rows."""
        previous = torch.get_num_threads()
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)
        try:
            self.measure_matmul(dict.fromkeys(c.dtype for c in cases))
            rows = []
            measured: dict[BenchCase, dict[str, Any]] = {}
            for i, case in enumerate(cases, 1):
                same = replace(case, sweep="main")
                if same in measured:  # the same configuration in another sweep: measured once
                    row = {**measured[same], "sweep": case.sweep}
                else:
                    self.progress(f"[{i}/{len(cases)}] {describe_case(case)}")
                    row = measured[same] = self.run_case(case)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
            return rows
        finally:
            torch.set_num_threads(previous)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def describe_case(case: BenchCase) -> str:
    """A one-line description of a case."""
    parts = [case.model, case.mode, f"T={case.frames}", f"{case.image_size}px", case.dtype]
    parts.append(f"B={case.batch}")
    if case.model == "perceiver-vl":
        parts += [f"N={case.latents}", f"blocks={list(case.cross_attention_layers)}"]
    return " ".join(parts)


def run_benchmark(
    cases: Sequence[BenchCase] | None = None,
    *,
    settings: BenchSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure ``cases`` (default: :func:`default_cases`) -> one row per case.

    Every row has :data:`ROW_KEYS` and :data:`EXTRA_KEYS`. Example::

        rows = run_benchmark([BenchCase(frames=8), BenchCase(model="joint", frames=8)])
    """
    cases = default_cases() if cases is None else list(cases)
    if not cases:
        raise ValueError("cases is empty: pass at least one BenchCase (or None for the defaults)")
    return Benchmark(settings, progress=progress).run(cases)


def efficiency_rows(
    frames: Sequence[int] = (8, 16, 32),
    *,
    models: Sequence[str] = MODELS,
    dtypes: Sequence[str] = ("fp32",),
    batch: int = 1,
    image_size: int = PAPER_IMAGE_SIZE,
    settings: BenchSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """GFLOPs and latency of Perceiver-VL and the joint baseline at each frame count (paper
    configuration otherwise; ``image_size`` the frame side) -> rows, ready for
    :func:`perceiver_vl.bench.plots.plot_efficiency`."""
    if not frames:
        raise ValueError("frames is empty: pass frame counts such as (8, 16, 32)")
    cases = [
        BenchCase(model=m, frames=t, dtype=d, batch=batch, image_size=image_size, sweep="frames")
        for m in models
        for d in dtypes
        for t in frames
    ]
    return run_benchmark(cases, settings=settings, progress=progress)


def case_as_dict(case: BenchCase) -> dict[str, Any]:
    """A case as plain data (for logs)."""
    data = asdict(case)
    data["cross_attention_layers"] = list(case.cross_attention_layers)
    return data


__all__ = [
    "ALL_BLOCKS",
    "EXTRA_KEYS",
    "MODELS",
    "MODES",
    "ROW_KEYS",
    "SWEEPS",
    "BenchCase",
    "BenchSettings",
    "Benchmark",
    "bench_config",
    "build_model",
    "case_as_dict",
    "default_cases",
    "describe_case",
    "efficiency_rows",
    "make_inputs",
    "run_benchmark",
    "sweep_cases",
]
