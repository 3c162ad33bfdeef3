"""``perceiver-vl info`` and ``perceiver-vl convert-official``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import PerceiverVLConfig
from .flops import count_flops
from .modeling import PerceiverVL
from .presets import preset, preset_names
from .weights import ConversionReport


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments_for(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "info":
        parser.add_argument(
            "--model",
            help="a model directory (config.json + model.safetensors); "
            "default: the paper configuration with random weights",
        )
        parser.add_argument(
            "--preset",
            choices=preset_names(),
            default=None,
            help="a named model size with random weights instead of --model "
            f"({', '.join(preset_names())})",
        )
        parser.add_argument(
            "--frames",
            type=int,
            default=None,
            help="frames of the FLOPs input (0 = one image; default: 8, or the model's "
            "max_frames when smaller)",
        )
        parser.add_argument(
            "--text-length",
            type=int,
            default=None,
            help="text tokens of the FLOPs input (default: 40, or the model's max_text_length "
            "when smaller)",
        )
        parser.add_argument(
            "--cross-attention-layers",
            type=_int_tuple,
            default=None,
            help="cross-attention blocks to run, e.g. 0 or 0,1,2 (default: the model's)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    else:
        parser.add_argument(
            "checkpoint", help="the released .ckpt (or a .safetensors/.pth state dict)"
        )
        parser.add_argument("out_dir", help="output directory for config.json + model.safetensors")
        parser.add_argument(
            "--num-heads",
            type=int,
            default=None,
            help="attention heads (not recoverable from shapes; default hidden_size/64)",
        )
        parser.add_argument(
            "--cross-attention-schedule",
            type=_int_tuple,
            default=None,
            help="self-attention layer indices the cross-attention blocks precede "
            "(default: evenly spaced from 0, e.g. 0,4,8 for the release)",
        )


def run_for(command: str, args: argparse.Namespace) -> int:
    return _info(args) if command == "info" else _convert(args)


def _info(args: argparse.Namespace) -> int:
    if args.model and args.preset:
        raise ValueError(
            f"--model {args.model!r} and --preset {args.preset!r} both name a model; pass one"
        )
    if args.model:
        model = PerceiverVL.from_pretrained(args.model)
    else:
        model = PerceiverVL(preset(args.preset or "paper"))
    model.eval()
    cfg = model.config
    _fit_input_to_model(args, cfg)
    size = cfg.image_size
    visual = (
        {"video": torch.zeros(1, args.frames, 3, size, size)}
        if args.frames > 0
        else {"images": torch.zeros(1, 3, size, size)}
    )
    ids = torch.full((1, args.text_length), 1000 % cfg.vocab_size, dtype=torch.long)
    flops = count_flops(
        model, **visual, text_ids=ids, cross_attention_layers=args.cross_attention_layers
    )
    blocks = model.select_cross_attention_blocks(args.cross_attention_layers)
    per_frame = 1 + (size // cfg.patch_size) ** 2
    m = per_frame * max(1, args.frames) + args.text_length
    info = {
        "config": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "input_tokens_M": m,
        "flops_input": f"{max(args.frames, 1)} x {size}x{size} {'frames' if args.frames else 'image'} + "
        f"{args.text_length} text tokens, batch 1",
        "cross_attention_blocks_run": list(blocks),
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"Perceiver-VL  D={cfg.hidden_size}  heads={cfg.num_heads}  N={cfg.num_latents} latents  "
        f"{cfg.num_self_attention_layers} self-attention layers  "
        f"cross-attention before {list(cfg.cross_attention_before_layers)}"
    )
    print(f"parameters      {info['parameters'] / 1e6:.1f} M")
    print(f"input array     M = {m} tokens ({info['flops_input']})")
    print(f"blocks run      {list(blocks)}")
    print(
        f"forward cost    {info['gflops']:.2f} GFLOPs = {info['gmacs']:.2f} GMACs "
        "(a multiply-add = 2 FLOPs; attention included)"
    )
    return 0


def _fit_input_to_model(args: argparse.Namespace, cfg: PerceiverVLConfig) -> None:
    """Default the FLOPs input to what the model takes; refuse explicit values it cannot."""
    for name, option, default, limit, field in (
        ("frames", "--frames", 8, cfg.max_frames, "max_frames"),
        ("text_length", "--text-length", 40, cfg.max_text_length, "max_text_length"),
    ):
        value = getattr(args, name)
        if value is None:
            setattr(args, name, min(default, limit))
        elif value < 0 or value > limit or (name == "text_length" and value == 0):
            low = 0 if name == "frames" else 1
            raise ValueError(
                f"{option}={value} is outside what this model takes: its {field} is {limit}; "
                f"pass {low}..{limit} or leave {option} out"
            )


def _convert(args: argparse.Namespace) -> int:
    report = ConversionReport()
    model = PerceiverVL.from_official_checkpoint(
        args.checkpoint,
        num_heads=args.num_heads,
        cross_attention_schedule=args.cross_attention_schedule,
        report=report,
    )
    out = model.save_pretrained(Path(args.out_dir))
    cfg = model.config
    print(f"converted {args.checkpoint} -> {out}")
    print(
        f"config: D={cfg.hidden_size}, heads={cfg.num_heads}, N={cfg.num_latents}, "
        f"layers={cfg.num_self_attention_layers}, cross-attention before "
        f"{list(cfg.cross_attention_before_layers)}, inference blocks "
        f"{list(cfg.inference_cross_attention_blocks or [])} (the release trained only the first)"
    )
    print(report.summary(), file=sys.stderr)
    return 0
