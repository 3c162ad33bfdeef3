"""Weights in and out: our safetensors format, the authors' released checkpoint, ViT initialisation.

This module reads and writes files and fills a model it is given; it never builds one (the
model's ``from_pretrained`` / ``from_official_checkpoint`` do, from what it reads), so it sits
below ``modeling`` in the package's import order.

- ``save_pretrained`` / ``read_pretrained`` + ``load_pretrained_state``: ``config.json`` +
  ``model.safetensors``, written atomically (a crash never leaves a half-written file under the
  final name).
- ``convert_official_state_dict`` / ``read_official_checkpoint`` + ``load_official_state``: the
  released PyTorch Lightning checkpoint (``ckpt["state_dict"]``), config read off the tensor
  shapes, loaded with ``weights_only=True``.
- ``load_vit_weights``: a timm-layout ViT state dict (``.safetensors``, ``.pth``) or the original
  ``.npz`` into the patch projection, position table, frame token and self-attention layers.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from perceiver_vl.fileio import atomic_path

from .attention import fuse_key_value_projections
from .config import PerceiverVLConfig
from .embeddings import resize_position_grid

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------------------------
# Our format
# ----------------------------------------------------------------------------------------------
# Fields that do not change what the weights compute at inference (training-time settings and
# initialisation): config.json may change them without the weights being re-saved.
RUNTIME_FIELDS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "layerdrop",
        "layerdrop_seed",
        "inference_cross_attention_blocks",
        "qa_loss",
        "initializer_range",
        "visual_position_init_std",
        "extra",
    }
)


def state_checksum(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_safetensors(
    path: str | Path, *, device: str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file; a truncated or corrupt file is a
    ``ValueError`` naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupt: {err}); "
            "write it again (save_pretrained / `perceiver-vl export`) or re-download it"
        ) from err
    return state, metadata


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns it.

    The safetensors metadata records the config (``perceiver_vl_config``) and a SHA-256 of the
    tensors (``sha256``, see :func:`state_checksum`); :func:`read_pretrained` verifies both."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "perceiver_vl_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "sha256": state_checksum(state),
    }
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    model.config.to_json_file(directory / CONFIG_NAME)
    return directory


def _check_against_saved_config(
    config: PerceiverVLConfig, metadata: Mapping[str, str], config_path: Path, weights_path: Path
) -> None:
    """Refuse a config.json whose architecture differs from the one the weights were saved with
    (num_heads, residual form, schedule, ...: what the tensor shapes cannot reveal)."""
    recorded = metadata.get("perceiver_vl_config")
    if recorded is None:
        return
    saved = json.loads(recorded)
    current = config.to_dict()
    differ = [
        f"{name}: config.json {current.get(name)!r}, weights {saved[name]!r}"
        for name in sorted(saved)
        if name not in RUNTIME_FIELDS and current.get(name) != saved[name]
    ]
    if differ:
        raise ValueError(
            f"{str(config_path)!r} disagrees with the config {str(weights_path)!r} was saved with "
            f"({'; '.join(differ[:6])}); restore config.json (the weights' own config is in the "
            "safetensors metadata) or save the model again. Only "
            f"{sorted(RUNTIME_FIELDS - {'extra'})} may change without re-saving."
        )


@dataclass
class PretrainedFiles:
    """What :func:`read_pretrained` found in a model directory (already verified)."""

    config: PerceiverVLConfig
    state: dict[str, Tensor]
    config_path: Path
    weights_path: Path


def read_pretrained(directory: str | Path, *, map_location: str = "cpu") -> PretrainedFiles:
    """Read a directory written by :func:`save_pretrained`.

    Verified on the way: the tensors' checksum (a flipped bit is refused) and config.json against
    the config recorded with the weights. Directories written before checksums existed load with
    a warning. :func:`load_pretrained_state` then checks every tensor's shape against the model."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if directory.is_file():
        raise ValueError(
            f"{str(directory)!r} is a file; pass the model directory that holds {CONFIG_NAME} "
            f"and {WEIGHTS_NAME}"
        )
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{str(p)!r} not found: a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by save_pretrained or `perceiver-vl convert-official`/`export`)"
            )
    config = PerceiverVLConfig.from_json_file(config_path)
    state, metadata = load_safetensors(weights_path, device=map_location)
    expected = metadata.get("sha256")
    if expected is None:
        warnings.warn(
            f"{str(weights_path)!r} carries no checksum (written before perceiver-vl recorded "
            "one): its integrity and its match with config.json cannot be verified; save it "
            "again with save_pretrained to add one",
            stacklevel=3,
        )
    elif state_checksum(state) != expected:
        raise ValueError(
            f"{str(weights_path)!r} fails its checksum (the tensors changed after saving: a "
            "damaged copy or an edit); re-copy or re-export the model"
        )
    _check_against_saved_config(config, metadata, config_path, weights_path)
    return PretrainedFiles(config, state, config_path, weights_path)


def load_pretrained_state(model: nn.Module, files: PretrainedFiles) -> None:
    """Fill ``model`` (built from ``files.config``) with ``files.state``: every tensor must
    exist in the model with its shape, and every weight must be finite."""
    own = model.state_dict()
    bad = [
        f"{k}: file {tuple(v.shape)} vs config {tuple(own[k].shape)}"
        for k, v in files.state.items()
        if k in own and own[k].shape != v.shape
    ]
    where = f"{str(files.weights_path)!r} does not match {str(files.config_path)!r}"
    if bad:
        raise ValueError(f"{where}: " + "; ".join(bad[:8]))
    missing, unexpected = model.load_state_dict(files.state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{where}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    check_finite_weights(model, str(files.weights_path))


def all_finite(tensor: Tensor) -> bool:
    """Whether every value is finite. One summing pass decides when the sum is finite (a NaN or
    inf anywhere makes the sum NaN or inf); only a non-finite sum, which finite values can also
    give by overflowing, is checked value by value. ``isfinite(t).all()`` makes several passes
    over the tensor, which on a training batch of video is tens of milliseconds. The sum is
    taken in fp32 (fp64 for fp64 input) so that half-precision frames rarely overflow it."""
    total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer holding NaN or inf."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not all_finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{source}: weight {name!r} holds {bad} non-finite values (NaN or inf); the "
                "model diverged or the file is damaged: use an earlier checkpoint"
            )


def load_torch_file(path: str | Path, argument: str = "checkpoint") -> object:
    """``torch.load(weights_only=True)`` of ``path`` with a clear ``ValueError`` for what is not
    a PyTorch checkpoint: a missing file, a text file, a safetensors file, a truncated archive,
    pickled code (never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={str(path)!r} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{argument}={str(path)!r} is a safetensors file, not a PyTorch checkpoint; load it "
            "with PerceiverVL.from_pretrained(<its folder>) (it is already exported)"
        )
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        if head.startswith(b"PK\x03\x04"):
            kind = "a zip archive without its end: truncated, e.g. by a crash or a full disk"
        else:
            kind = "empty" if not head else "neither a zip archive nor a pickle"
        raise ValueError(
            f"{argument}={str(path)!r} is not a PyTorch checkpoint ({kind}; a truncated copy or "
            "another kind of file); pass a .ckpt/.pt written by torch.save"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{str(path)!r} holds pickled objects that torch.load(weights_only=True) refuses "
            f"({str(err).splitlines()[0]}). perceiver-vl never unpickles arbitrary code. If you "
            "trust the file, extract its tensors yourself, e.g. `sd = torch.load(path, "
            "weights_only=False)['state_dict']` in a trusted session, and pass that dict or save "
            "it with safetensors."
        ) from err
    except (RuntimeError, EOFError, KeyError, IndexError, OSError) as err:
        raise ValueError(
            f"{argument}={str(path)!r} is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); use another copy or an "
            "earlier checkpoint"
        ) from err


# ----------------------------------------------------------------------------------------------
# The released checkpoint
# ----------------------------------------------------------------------------------------------
def read_checkpoint_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.ckpt`` / ``.pt`` / ``.pth`` (safe unpickling only) or ``.safetensors``.

    Lightning checkpoints are unwrapped (``ckpt["state_dict"]``); ``model`` / ``module`` wrappers
    too. Untrusted pickles are never executed: if ``weights_only=True`` refuses the file, the
    error says so and what to do instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    obj = load_torch_file(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


_OFFICIAL_REQUIRED = (
    "transformer.latents",
    "transformer.patch_embed.proj.weight",
    "transformer.pos_embed",
    "transformer.temporal_embed",
    "text_embeddings.word_embeddings.weight",
    "text_embeddings.position_embeddings.weight",
)

# released prefix -> our prefix, applied in order (first match wins)
_OFFICIAL_RENAMES = (
    ("transformer.patch_embed.", "visual_embed.patch_embed."),
    ("transformer.cls_token_decoder", None),  # handled separately (slot 0 only)
    ("transformer.cls_token", "visual_embed.cls_token"),
    ("transformer.pos_embed", "visual_embed.pos_embed"),
    ("transformer.temporal_embed", "visual_embed.temporal_embed"),
    ("transformer.latents", "encoder.latents"),
    ("transformer.co_norm.", "encoder.input_norm."),
    ("transformer.crossatt_blocks_visual.", "encoder.cross_attention_blocks."),
    ("transformer.blocks.", "encoder.self_attention_blocks."),
    ("transformer.norm.", "encoder.norm."),
    ("transformer.mlm_pos.", "decoder.mlm_position."),
    ("transformer.mlm_type.", "decoder.mlm_type."),
    ("transformer.decoder_block_text.0.", "decoder.block."),
    ("transformer.decoder_norm.", "decoder.norm."),
    ("text_embeddings.position_ids", None),  # a buffer of 0..L-1, recomputed
    ("text_embeddings.", "text_embed."),
    ("token_type_embeddings.", None),  # present in the release, never used
    ("matching_score.pooler.dense.", "matching_head.dense."),
    ("matching_score.fc.", None),  # handled separately (column 1 only)
    ("mlm_score.transform.dense.", "mlm_head.dense."),
    ("mlm_score.transform.LayerNorm.", "mlm_head.norm."),
    ("mlm_score.decoder.", "mlm_head.decoder."),
    ("mlm_score.bias", "mlm_head.bias"),
    ("vqa_classifier.", "qa_head.classifier."),
    ("pooler.dense.", "qa_head.pooler."),
)


def _count_indexed(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for k in state if (m := pattern.match(k))})


def evenly_spaced_schedule(num_blocks: int, depth: int) -> tuple[int, ...]:
    """Cross-attention positions spread evenly over ``depth`` layers, starting at 0."""
    return tuple(int(round(j * depth / num_blocks)) for j in range(num_blocks))


def official_config(
    state: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    cross_attention_schedule: tuple[int, ...] | None = None,
) -> PerceiverVLConfig:
    """Read a :class:`PerceiverVLConfig` off the shapes of a released-layout state dict."""
    missing = [k for k in _OFFICIAL_REQUIRED if k not in state]
    if missing:
        raise ValueError(
            f"not a Perceiver-VL release checkpoint: keys {missing} are missing "
            f"(found e.g. {sorted(state)[:5]}). For our own format use PerceiverVL.from_pretrained."
        )
    latents = state["transformer.latents"]
    d = latents.shape[1]
    patch = state["transformer.patch_embed.proj.weight"].shape[-1]
    grid_tokens = state["transformer.pos_embed"].shape[1] - 1
    grid = math.isqrt(grid_tokens)
    if grid * grid != grid_tokens:
        raise ValueError(f"transformer.pos_embed has {grid_tokens} grid rows, not a square grid")
    depth = _count_indexed(state, "transformer.blocks.")
    num_cross = _count_indexed(state, "transformer.crossatt_blocks_visual.")
    if depth == 0 or num_cross == 0:
        raise ValueError(
            f"checkpoint has {depth} self-attention and {num_cross} cross-attention blocks; "
            "expected transformer.blocks.* and transformer.crossatt_blocks_visual.*"
        )
    schedule = cross_attention_schedule or evenly_spaced_schedule(num_cross, depth)
    if len(schedule) != num_cross:
        raise ValueError(
            f"cross_attention_schedule={tuple(schedule)} names {len(schedule)} positions but the "
            f"checkpoint has {num_cross} cross-attention blocks"
        )
    fc1 = state["transformer.blocks.0.mlp.fc1.weight"]
    answers = state.get("vqa_classifier.3.weight")
    return PerceiverVLConfig(
        hidden_size=d,
        num_heads=num_heads or max(1, d // 64),
        mlp_ratio=fc1.shape[0] / d,
        num_self_attention_layers=depth,
        cross_attention_before_layers=tuple(schedule),
        num_latents=latents.shape[0],
        patch_size=patch,
        image_size=grid * patch,
        max_frames=state["transformer.temporal_embed"].shape[1],
        max_text_length=state["text_embeddings.position_embeddings.weight"].shape[0],
        vocab_size=state["text_embeddings.word_embeddings.weight"].shape[0],
        inference_cross_attention_blocks=(0,),
        cross_attention_residual="normalized",
        num_answers=0 if answers is None else answers.shape[0],
    )


@dataclass
class ConversionReport:
    """What a weight conversion loaded, left at initialisation, and ignored."""

    loaded: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.not_loaded:
            lines.append(
                f"left at initialisation ({len(self.not_loaded)}): {', '.join(self.not_loaded)}"
            )
        if self.ignored:
            lines.append(
                f"ignored from the source ({len(self.ignored)}): {', '.join(self.ignored)}"
            )
        return "\n".join(lines)


def convert_official_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a released-layout state dict to ours. Returns (our state dict, ignored keys)."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key == "transformer.cls_token_decoder":
            out["decoder.cls_query"] = value[:, :1].clone()
            continue
        if key in ("matching_score.fc.weight", "matching_score.fc.bias"):
            # The released head is a 2-way fc of which only output 1 is ever used.
            out[key.replace("matching_score.fc.", "matching_head.fc.")] = value[1:2].clone()
            continue
        for prefix, target in _OFFICIAL_RENAMES:
            if key.startswith(prefix):
                if target is None:
                    ignored.append(key)
                else:
                    out[target + key[len(prefix) :]] = value
                break
        else:
            ignored.append(key)
    return fuse_key_value_projections(out), ignored


def read_official_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    cross_attention_schedule: tuple[int, ...] | None = None,
) -> tuple[PerceiverVLConfig, dict[str, Tensor]]:
    """(config read off the tensor shapes, the released-layout state dict) of the authors'
    checkpoint: a ``.ckpt`` path or a state dict (Lightning's ``state_dict`` wrapper allowed)."""
    if isinstance(path_or_state_dict, (str, Path)):
        state = read_checkpoint_file(path_or_state_dict)
    elif isinstance(path_or_state_dict, Mapping):
        state = dict(path_or_state_dict)
        if "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = dict(state["state_dict"])
        state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    else:
        raise ValueError(
            "path_or_state_dict must be a checkpoint path or a state dict, got "
            f"{type(path_or_state_dict).__name__}"
        )
    config = official_config(
        state, num_heads=num_heads, cross_attention_schedule=cross_attention_schedule
    )
    return config, state


def load_official_state(
    model: nn.Module, state: Mapping[str, Tensor], *, report: ConversionReport | None = None
) -> None:
    """Convert a released-layout ``state`` and load it into ``model`` (built from the config
    :func:`read_official_checkpoint` read); ``report`` receives what was loaded and ignored."""
    converted, ignored = convert_official_state_dict(state)
    own = model.state_dict()
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad_shapes:
        raise ValueError(
            "checkpoint tensors do not fit the inferred config: " + "; ".join(bad_shapes)
        )
    unexpected = [k for k in converted if k not in own]
    missing, _ = model.load_state_dict(
        {k: v for k, v in converted.items() if k in own}, strict=False
    )
    # The contrastive head is ours (the release has no multi-stream training), so it stays random.
    required_missing = [k for k in missing if not k.startswith(("contrastive_head.", "qa_head."))]
    if required_missing:
        raise ValueError(f"checkpoint lacks tensors the model needs: {required_missing}")
    if report is not None:
        report.loaded = sorted(k for k in converted if k in own)
        report.not_loaded = sorted(missing)
        report.ignored = sorted(ignored + unexpected)


# ----------------------------------------------------------------------------------------------
# ViT initialisation (paper §4.2)
# ----------------------------------------------------------------------------------------------
def _npz_to_timm(arrays: Mapping[str, object]) -> dict[str, Tensor]:
    """The original (big_vision / ViT-jax) ``.npz`` naming -> timm's ViT naming."""

    def t(name: str) -> Tensor:
        return torch.as_tensor(arrays[name]).float()

    out: dict[str, Tensor] = {}
    if "embedding/kernel" in arrays:
        out["patch_embed.proj.weight"] = t("embedding/kernel").permute(3, 2, 0, 1)  # HWIO -> OIHW
        out["patch_embed.proj.bias"] = t("embedding/bias")
    if "cls" in arrays:
        out["cls_token"] = t("cls").reshape(1, 1, -1)
    if "Transformer/posembed_input/pos_embedding" in arrays:
        out["pos_embed"] = t("Transformer/posembed_input/pos_embedding")
    if "Transformer/encoder_norm/scale" in arrays:
        out["norm.weight"] = t("Transformer/encoder_norm/scale")
        out["norm.bias"] = t("Transformer/encoder_norm/bias")
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in arrays:
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        q, k, v = (t(a + f"{n}/kernel") for n in ("query", "key", "value"))  # (D, heads, hd)
        d = q.shape[0]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [x.reshape(d, -1).T for x in (q, k, v)], dim=0
        )
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
            [t(a + f"{n}/bias").reshape(-1) for n in ("query", "key", "value")]
        )
        out[f"blocks.{i}.attn.proj.weight"] = t(a + "out/kernel").reshape(-1, d).T
        out[f"blocks.{i}.attn.proj.bias"] = t(a + "out/bias")
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"blocks.{i}.{ours}.weight"] = t(p + f"{theirs}/scale")
            out[f"blocks.{i}.{ours}.bias"] = t(p + f"{theirs}/bias")
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"blocks.{i}.mlp.{ours}.weight"] = t(p + f"MlpBlock_3/{theirs}/kernel").T
            out[f"blocks.{i}.mlp.{ours}.bias"] = t(p + f"MlpBlock_3/{theirs}/bias")
        i += 1
    return out


def read_vit_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A timm-layout ViT state dict from ``.safetensors``, ``.pth``/``.pt``/``.bin`` or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ViT weights {str(path)!r} do not exist")
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                return _npz_to_timm({k: arrays[k] for k in arrays.files})
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"ViT weights {str(path)!r} are not a readable .npz (truncated or corrupt: "
                f"{err}); download them again"
            ) from err
    return read_checkpoint_file(path)


def load_vit_weights(
    model: nn.Module, source: str | Path | Mapping[str, Tensor], *, load_final_norm: bool = True
) -> ConversionReport:
    """Initialise the patch projection, position table (resized), frame token and the latent
    self-attention layers from a ViT (timm names). Cross-attention blocks stay random.

    Returns a report of the model tensors loaded and left at initialisation, and of the source
    tensors ignored.
    """
    vit = read_vit_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    vit = {k.removeprefix("module.").removeprefix("model."): v for k, v in vit.items()}
    own = model.state_dict()
    updates: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, value: Tensor | None = None) -> None:
        value = vit[src] if value is None else value
        if dst in own and own[dst].shape == value.shape:
            updates[dst] = value.to(own[dst].dtype)
            used.add(src)

    for suffix in ("weight", "bias"):
        if f"patch_embed.proj.{suffix}" in vit:
            take(f"patch_embed.proj.{suffix}", f"visual_embed.patch_embed.proj.{suffix}")
    if "cls_token" in vit:
        take("cls_token", "visual_embed.cls_token")
    if "pos_embed" in vit:
        pos = vit["pos_embed"]
        grid_tokens = pos.shape[1] - 1
        g = math.isqrt(grid_tokens)
        target = model.config.grid_size
        if g * g == grid_tokens and pos.shape[-1] == model.config.hidden_size:
            grid = resize_position_grid(pos[0, 1:].float(), (g, g), (target, target))
            take("pos_embed", "visual_embed.pos_embed", torch.cat([pos[0, :1].float(), grid])[None])
    depth = len(model.encoder.self_attention_blocks)
    pattern = re.compile(r"blocks\.(\d+)\.(.+)")
    for key in vit:
        m = pattern.fullmatch(key)
        if m and int(m.group(1)) < depth:
            take(key, f"encoder.self_attention_blocks.{m.group(1)}.{m.group(2)}")
    if load_final_norm:
        for suffix in ("weight", "bias"):
            if f"norm.{suffix}" in vit:
                take(f"norm.{suffix}", f"encoder.norm.{suffix}")
    model.load_state_dict(updates, strict=False)
    relevant = ("visual_embed.", "encoder.self_attention_blocks.", "encoder.norm.")
    return ConversionReport(
        loaded=sorted(updates),
        not_loaded=sorted(k for k in own if k.startswith(relevant) and k not in updates),
        ignored=sorted(k for k in vit if k not in used),
    )
