"""The model configuration: one typed dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import numbers
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from perceiver_vl.fileio import atomic_write_json

CrossAttentionResidual = Literal["normalized", "standard"]
QALoss = Literal["bce", "ce"]
ModalityAggregation = Literal["joint", "separate", "separate_plus"]
LatentPositionEncoding = Literal["none", "learned", "fourier"]


@dataclass
class PerceiverVLConfig:
    """Configuration of a :class:`~perceiver_vl.PerceiverVL` model.

    Defaults are the paper's / released model's settings (ViT-B/32 sized latent stack, MSRVTT input).
    Paper symbols in brackets.

    Attributes:
        hidden_size: Width of every token, latent and query [D]. 768.
        num_heads: Attention heads in every attention layer; must divide ``hidden_size``. 12.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``. 4.
        num_self_attention_layers: Latent self-attention layers [l]. 12.
        cross_attention_before_layers: The cross-attention schedule: a cross-attention block
            (latents read the input array) runs before each of these self-attention layer indices.
            ``(0, 4, 8)``: three blocks of one cross-attention + four self-attention layers.
        num_latents: Length of the learned latent array [N]. 128.
        patch_size: Side of the square patches [P]. 32.
        image_size: Frame side the position table was trained for; other sizes are accepted and
            the table is resized bilinearly. 384 (a 12 × 12 grid).
        max_frames: Rows of the temporal embedding table: the most frames a video may have [T].
            64 (the paper feeds 8).
        max_text_length: Rows of the text position table: the longest text [L_T]. 40.
        vocab_size: WordPiece vocabulary size (BERT-base-uncased). 30522.
        layer_norm_eps: Epsilon of the transformer LayerNorms. 1e-6.
        text_layer_norm_eps: Epsilon of the BERT-style LayerNorms (text embedding, MLM head). 1e-12.
        dropout: Dropout on embeddings, attention outputs and MLPs (training only). 0.1.
        attention_dropout: Dropout on attention probabilities (training only). 0.0.
        layerdrop: Probability of skipping each cross-attention block except the first, per
            training step [p_LD]. 0.5. Never applied in evaluation.
        layerdrop_seed: Seed shared by every data-parallel rank for the LayerDrop decisions, so
            that all ranks skip the same blocks in the same step.
        inference_cross_attention_blocks: Which cross-attention blocks run when the caller does
            not choose (indices into the schedule, 0 = the first block). ``None`` = all blocks.
            A model converted from the released checkpoint stores ``(0,)`` (see the spec).
        cross_attention_residual: ``"normalized"`` (the released model: the residual starts from
            the LayerNorm-ed latents) or ``"standard"`` (pre-LN: ``x + attn(norm(x))``).
        initializer_range: Standard deviation of every linear layer's weights at
            initialisation. ``None`` (default): ``1 / sqrt(fan_in)`` per layer (LeCun), which
            keeps each layer's output on the scale of its input at any width. A number: that
            fixed standard deviation for every linear layer; 0.02 is the ViT / released-code
            choice, made for D = 768 (0.02 x sqrt(768) = 0.55 per layer). At small widths a fixed
            0.02 shrinks every layer's output (x 0.23 at D = 128, x 0.11 at D = 32): attention
            starts uniform, the attention and MLP branches start near zero, and vision-text
            matching stays at chance for hundreds of steps (docs/analyses.md, "Why matching did
            not learn"). Irrelevant when weights are loaded.
        modality_embedding: Add a learned visual/text type embedding to every input token
            (paper §3.1; the released model has none). False.
        frame_difference: Also project each video patch's change from the same patch in the
            previous frame and add it to the patch's token (a causal two-frame tubelet; the
            first frame's change is zero; images are unaffected). Gives the encoder first-order
            motion features; not in the paper or the released model. False.
        visual_position_init_std: Standard deviation of the visual position and temporal tables at
            initialisation. 0.02 (ViT and the released code). Freshly initialised patch tokens
            have a standard deviation of about 0.26 per element on the demo's frames, so at 0.02
            "where" and "when" are almost invisible to a model trained from scratch for a few
            hundred steps; 0.2 puts them on the scale of the patch content (ours; the demo uses
            it). Irrelevant when weights are loaded.
        modality_aggregation: How the latents read the two modalities (paper §4.1, Fig. 3).
            ``"joint"``: one input array, one cross-attention per schedule position (default).
            ``"separate"``: a visual then a text cross-attention at each schedule position.
            ``"separate_plus"``: the visual cross-attention at the schedule position, the text one
            half-way through that block's self-attention layers.
        latent_position_encoding: Added to the latent array (paper §3.2): ``"none"`` (the learned
            latent array alone, default), ``"learned"`` or ``"fourier"`` (fixed sin/cos features of
            the latent index).
        contrastive_dim: Width of the multi-stream retrieval embedding. 256.
        contrastive_init_temperature: Initial temperature of the contrastive loss. 0.07.
        num_answers: Size of the QA answer vocabulary; 0 = no classification head. 0.
        qa_loss: ``"bce"`` (VQA soft scores) or ``"ce"`` (one answer per question).
    """

    hidden_size: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_self_attention_layers: int = 12
    cross_attention_before_layers: tuple[int, ...] = (0, 4, 8)
    num_latents: int = 128
    patch_size: int = 32
    image_size: int = 384
    max_frames: int = 64
    max_text_length: int = 40
    vocab_size: int = 30522
    layer_norm_eps: float = 1e-6
    text_layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.0
    layerdrop: float = 0.5
    layerdrop_seed: int = 0
    inference_cross_attention_blocks: tuple[int, ...] | None = None
    cross_attention_residual: CrossAttentionResidual = "normalized"
    initializer_range: float | None = None
    modality_embedding: bool = False
    frame_difference: bool = False
    visual_position_init_std: float = 0.02
    modality_aggregation: ModalityAggregation = "joint"
    latent_position_encoding: LatentPositionEncoding = "none"
    contrastive_dim: int = 256
    contrastive_init_temperature: float = 0.07
    num_answers: int = 0
    qa_loss: QALoss = "bce"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self)
        self.cross_attention_before_layers = tuple(self.cross_attention_before_layers)
        if self.inference_cross_attention_blocks is not None:
            self.inference_cross_attention_blocks = tuple(self.inference_cross_attention_blocks)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, its value and the fix when a setting is invalid."""

        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PerceiverVLConfig.{name} must be a positive int, got {value!r}")

        for name in (
            "hidden_size",
            "num_heads",
            "num_self_attention_layers",
            "num_latents",
            "patch_size",
            "image_size",
            "max_frames",
            "max_text_length",
            "vocab_size",
            "contrastive_dim",
        ):
            positive(name)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"PerceiverVLConfig.num_heads={self.num_heads} must divide "
                f"hidden_size={self.hidden_size}; pick e.g. num_heads={max(1, self.hidden_size // 64)}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"PerceiverVLConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        schedule = self.cross_attention_before_layers
        if not schedule:
            raise ValueError(
                "PerceiverVLConfig.cross_attention_before_layers is empty: the latents must read "
                "the input at least once; use e.g. (0,)"
            )
        if list(schedule) != sorted(set(schedule)):
            raise ValueError(
                "PerceiverVLConfig.cross_attention_before_layers must be strictly increasing, "
                f"got {schedule}"
            )
        if schedule[0] < 0 or schedule[-1] >= self.num_self_attention_layers:
            raise ValueError(
                f"PerceiverVLConfig.cross_attention_before_layers={schedule} must lie in "
                f"[0, num_self_attention_layers={self.num_self_attention_layers})"
            )
        if self.inference_cross_attention_blocks is not None:
            check_cross_attention_blocks(
                self.inference_cross_attention_blocks,
                len(schedule),
                "PerceiverVLConfig.inference_cross_attention_blocks",
            )
        if not 0.0 <= self.layerdrop < 1.0:
            raise ValueError(f"PerceiverVLConfig.layerdrop must be in [0, 1), got {self.layerdrop}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"PerceiverVLConfig.{name} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.cross_attention_residual not in ("normalized", "standard"):
            raise ValueError(
                "PerceiverVLConfig.cross_attention_residual must be 'normalized' or 'standard', "
                f"got {self.cross_attention_residual!r}"
            )
        if self.initializer_range is not None and not 0.0 < self.initializer_range <= 10.0:
            raise ValueError(
                "PerceiverVLConfig.initializer_range must be None (1 / sqrt(fan_in) per layer) or "
                f"in (0, 10], got {self.initializer_range}; 0.02 is the ViT / released-code value"
            )
        if not 0.0 <= self.visual_position_init_std <= 10.0:
            raise ValueError(
                "PerceiverVLConfig.visual_position_init_std must be in [0, 10], "
                f"got {self.visual_position_init_std}; the ViT default is 0.02"
            )
        if self.modality_aggregation not in ("joint", "separate", "separate_plus"):
            raise ValueError(
                "PerceiverVLConfig.modality_aggregation must be 'joint', 'separate' or "
                f"'separate_plus', got {self.modality_aggregation!r}"
            )
        if self.latent_position_encoding not in ("none", "learned", "fourier"):
            raise ValueError(
                "PerceiverVLConfig.latent_position_encoding must be 'none', 'learned' or 'fourier', "
                f"got {self.latent_position_encoding!r}"
            )
        if self.num_answers < 0:
            raise ValueError(f"PerceiverVLConfig.num_answers must be >= 0, got {self.num_answers}")
        if self.qa_loss not in ("bce", "ce"):
            raise ValueError(
                f"PerceiverVLConfig.qa_loss must be 'bce' or 'ce', got {self.qa_loss!r}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"PerceiverVLConfig.image_size={self.image_size} must be a multiple of "
                f"patch_size={self.patch_size}"
            )

    # -- derived ----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        """Side of the trained patch grid (image_size / patch_size)."""
        return self.image_size // self.patch_size

    @property
    def num_cross_attention_blocks(self) -> int:
        return len(self.cross_attention_before_layers)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cross_attention_before_layers"] = list(self.cross_attention_before_layers)
        if self.inference_cross_attention_blocks is not None:
            data["inference_cross_attention_blocks"] = list(self.inference_cross_attention_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerceiverVLConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "format_version"})
        if unknown:
            raise ValueError(
                f"unknown PerceiverVLConfig fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_file(self, path: str | Path) -> None:
        """Write the config as JSON to ``path`` (atomically)."""
        payload = {"model_type": "perceiver-vl", "format_version": 1, **self.to_dict()}
        atomic_write_json(path, payload, indent=2)

    @classmethod
    def from_json_file(cls, path: str | Path) -> PerceiverVLConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"config file {str(path)!r} is not valid UTF-8 JSON ({err}); restore it (the "
                "weights' own config is in model.safetensors' metadata)"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(
                f"config file {str(path)!r} holds a {type(data).__name__}, not an object of "
                "PerceiverVLConfig fields"
            )
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> PerceiverVLConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _type_error(cls: type, name: str, value: Any, expected: str) -> ValueError:
    hint = ""
    scalar = any(w in expected for w in ("an integer", "a number", "a boolean"))
    if isinstance(value, str) and scalar:
        hint = f"; write it without quotes (e.g. {name}: {value.strip()}) in YAML/JSON"
    return ValueError(
        f"{cls.__name__}.{name} must be {expected}, got {value!r} ({type(value).__name__}){hint}"
    )


def _matches(value: Any, annotation: Any) -> tuple[bool, str]:
    """Whether ``value`` is of the declared type (no coercion: a string is never a number, a
    number never a bool, 0.9 never an int), and the type in words."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return True, "anything"
    if origin is Union or origin is types.UnionType:
        results = [_matches(value, arg) for arg in args]
        return any(ok for ok, _ in results), " or ".join(words for _, words in results)
    if annotation is type(None):
        return value is None, "None"
    if origin is Literal:
        return value in args and isinstance(value, str), "one of " + ", ".join(map(repr, args))
    if annotation is bool:
        return isinstance(value, bool), "true or false (a boolean, not a string)"
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, "a number"
    if annotation is str:
        return isinstance(value, str), "a string"
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False, "a list of integers"
        item = args[0] if args else Any
        return all(_matches(v, item)[0] for v in value), "a list of integers"
    if origin is dict:
        return isinstance(value, dict), "a mapping"
    return True, str(annotation)


def check_field_types(config: Any) -> None:
    """Raise ``ValueError`` naming the first field of dataclass ``config`` whose value is not of
    its declared type (``"8"`` for an int, ``"false"`` for a bool, ``"01"`` for a list)."""
    hints = get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        ok, expected = _matches(value, hints[spec.name])
        if not ok:
            raise _type_error(type(config), spec.name, value, expected)


def check_cross_attention_blocks(blocks: Any, num_blocks: int, argument: str) -> tuple[int, ...]:
    """Validate a choice of cross-attention blocks (indices into the schedule)."""
    # no coercion: "01" is not [0, 1], 0.9 is not 0 and True is not 1
    is_index = isinstance(blocks, (list, tuple, range)) and all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in blocks
    )
    if not is_index:
        raise ValueError(
            f"{argument} must be a list of integer cross-attention block indices (e.g. [0, 1]), "
            f"got {blocks!r}"
        )
    chosen = tuple(int(i) for i in blocks)
    if not chosen:
        raise ValueError(f"{argument} is empty: at least one cross-attention block must run")
    bad = [i for i in chosen if not 0 <= i < num_blocks]
    if bad:
        raise ValueError(
            f"{argument}={list(chosen)} has indices {bad} out of range: the model has "
            f"{num_blocks} cross-attention blocks (indices 0..{num_blocks - 1})"
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{argument}={list(chosen)} repeats an index")
    return tuple(sorted(chosen))
