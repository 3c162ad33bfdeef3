"""``perceiver-vl export CKPT OUT_DIR``: a Lightning checkpoint -> ``config.json`` +
``model.safetensors`` (loadable with ``PerceiverVL.from_pretrained``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from perceiver_vl.model import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model.weights import load_torch_file


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Read a training checkpoint (``weights_only=True``) and write the model with
    ``save_pretrained``. Returns ``out_dir``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint={str(checkpoint)!r} does not exist; pass a .ckpt from "
            "<default_root_dir>/checkpoints (e.g. last.ckpt)"
        )
    state = load_torch_file(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(
            f"checkpoint={str(checkpoint)!r} is not a Lightning training checkpoint (no "
            "'state_dict'); export takes a .ckpt written by `perceiver-vl fit` (e.g. "
            "<default_root_dir>/checkpoints/last.ckpt)"
        )
    if "perceiver_vl_config" in state:
        config = PerceiverVLConfig.from_dict(state["perceiver_vl_config"])
    else:
        hparams = state.get("hyper_parameters", {})
        if hparams.get("pretrained"):
            raise ValueError(
                f"checkpoint={str(checkpoint)!r} lacks perceiver_vl_config; it was not written by "
                "perceiver-vl's PerceiverVLModule"
            )
        config = PerceiverVLConfig.from_dict(dict(hparams.get("model") or {}))
    weights = {
        key[len("model.") :]: value
        for key, value in state["state_dict"].items()
        if key.startswith("model.")
    }
    model = PerceiverVL(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint={str(checkpoint)!r} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return Path(model.save_pretrained(out_dir))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) written by `fit`")
    parser.add_argument("out_dir", help="output folder for config.json + model.safetensors")


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


__all__ = ["add_arguments", "export_checkpoint", "run"]
