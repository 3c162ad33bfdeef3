"""The weight-decay rule, the optimiser's parameter groups and the typed training options."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

from perceiver_vl.model import PerceiverVL, preset
from perceiver_vl.train.module import PerceiverVLModule
from perceiver_vl.train.optim import decays, parameter_groups, weight_decay_split
from perceiver_vl.train.options import (
    FreezingOptions,
    ObjectiveOptions,
    OptimizationOptions,
    TrainingOptions,
)

from .conftest import TINY_MODEL

#: What decays in the ``tiny`` preset: every Linear / Conv weight, the patch projection too.
TINY_DECAYED = [
    "visual_embed.patch_embed.proj.weight",
    *(
        f"encoder.cross_attention_blocks.{i}.{p}.weight"
        for i in (0, 1)
        for p in ("attn.q", "attn.kv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ),
    *(
        f"encoder.self_attention_blocks.{i}.{p}.weight"
        for i in range(4)
        for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ),
    *(
        f"decoder.block.{p}.weight"
        for p in ("attn.q", "attn.kv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ),
    "matching_head.dense.weight",
    "matching_head.fc.weight",
    "mlm_head.dense.weight",
    "mlm_head.decoder.weight",
    "contrastive_head.visual_proj.weight",
    "contrastive_head.text_proj.weight",
]

#: What does not, besides every bias and every norm parameter: learned positions, the frame
#: token, the latent array, the matching query, embedding tables, the temperature.
TINY_EXEMPT_NOT_BIAS_OR_NORM = [
    "visual_embed.cls_token",
    "visual_embed.pos_embed",
    "visual_embed.temporal_embed",
    "text_embed.word_embeddings.weight",
    "text_embed.position_embeddings.weight",
    "text_embed.token_type_embeddings.weight",
    "encoder.latents",
    "decoder.cls_query",
    "decoder.mlm_position.weight",
    "decoder.mlm_type.weight",
    "contrastive_head.logit_scale",
]


def _is_bias_or_norm(name: str, model: nn.Module) -> bool:
    owner = model.get_submodule(name.rpartition(".")[0])
    return name.endswith("bias") or isinstance(owner, nn.LayerNorm)


def test_tiny_preset_decays_linear_and_conv_weights_only():
    model = PerceiverVL(preset("tiny"))
    decayed, exempt = weight_decay_split(model)
    assert decayed == TINY_DECAYED
    assert [n for n in exempt if not _is_bias_or_norm(n, model)] == TINY_EXEMPT_NOT_BIAS_OR_NORM
    norms = [n for n in exempt if _is_bias_or_norm(n, model)]
    assert "encoder.norm.weight" in norms and "text_embed.LayerNorm.weight" in norms
    assert "mlm_head.bias" in norms and "encoder.self_attention_blocks.0.attn.qkv.bias" in norms
    assert sorted(decayed + exempt) == sorted(n for n, _ in model.named_parameters())


def test_decays_by_shape_owner_and_declaration_not_by_name():
    class Custom(nn.Module):
        no_weight_decay_params = ("queries",)

        def __init__(self) -> None:
            super().__init__()
            self.queries = nn.Parameter(torch.zeros(4, 8))
            self.table = nn.Parameter(torch.zeros(4, 8))  # undeclared 2-D: decays
            self.embed_proj = nn.Linear(8, 8)  # "embed" in the name does not exempt it

    custom = Custom()
    assert not decays(custom, "queries", custom.queries)
    assert decays(custom, "table", custom.table)
    assert decays(custom.embed_proj, "weight", custom.embed_proj.weight)
    assert not decays(custom.embed_proj, "bias", custom.embed_proj.bias)
    conv = nn.Conv1d(2, 3, 3)
    assert decays(conv, "weight", conv.weight)
    for layer in (nn.Embedding(5, 4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.BatchNorm1d(4)):
        assert not any(decays(layer, n, p) for n, p in layer.named_parameters())


def test_parameter_groups_follow_the_rule_and_the_switch():
    module = PerceiverVLModule(model=dict(TINY_MODEL, num_answers=3), objectives=["qa"])
    named = dict(module.named_parameters())
    decayed, exempt = weight_decay_split(module)
    groups = parameter_groups(module, OptimizationOptions(weight_decay=0.05))
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert [id(p) for p in groups[0]["params"]] == [id(named[n]) for n in decayed]
    assert [id(p) for p in groups[1]["params"]] == [id(named[n]) for n in exempt]
    assert "model.visual_embed.patch_embed.proj.weight" in decayed
    everything = parameter_groups(module, OptimizationOptions(weight_decay_exempt=False))
    assert len(everything[0]["params"]) == len(named) and not everything[1]["params"]
    head = parameter_groups(module, OptimizationOptions(lr=1e-3, head_lr_multiplier=10.0))
    assert head[2]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in head[2]["params"]} == {
        id(p) for n, p in named.items() if n.startswith("model.qa_head")
    }
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["weight_decay"] == module.options.optimization.weight_decay
    assert len(optimizer.param_groups[0]["params"]) == len(decayed)


def test_options_validate_and_name_the_option():
    with pytest.raises(ValueError, match=r"model\.lr must be > 0, got -1"):
        OptimizationOptions(lr=-1)
    with pytest.raises(ValueError, match=r"model\.betas"):
        OptimizationOptions(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"model\.end_lr_ratio"):
        OptimizationOptions(end_lr_ratio=2.0)
    with pytest.raises(ValueError, match=r"model\.loss_weights has unknown losses \['matchin'\]"):
        ObjectiveOptions(loss_weights={"matchin": 1.0})
    with pytest.raises(ValueError, match=r"model\.trainable='encoder'"):
        FreezingOptions(trainable="encoder")
    with pytest.raises(ValueError, match=r"model\.lr must be > 0"):
        PerceiverVLModule(model=TINY_MODEL, lr=0.0)
    with pytest.raises(TypeError, match="unknown training options"):
        TrainingOptions.from_flat(learning_rate=1e-3)


def test_flat_options_round_trip_through_the_groups():
    module = PerceiverVLModule(
        model=TINY_MODEL,
        objectives=["contrastive", "retrieval"],
        retrieval_stream=["mixed", "single"],
        retrieval_negatives=3,
        lr=3e-4,
        two_stage=5,
        locked_text_steps=2,
        eval_modes=["multi"],
        seed=7,
    )
    options = module.options
    assert options.objective.retrieval_streams == ("mixed", "single")
    assert options.optimization.lr == 3e-4 and options.seed == 7
    assert (options.freezing.first_mode, options.freezing.unfreeze_step) == ("cross_attention", 5)
    assert options.evaluation.eval_modes == ("multi",)
    # every flat argument of the module is an option or the model's own
    names = {
        f.name
        for group in (ObjectiveOptions, OptimizationOptions, FreezingOptions)
        for f in dataclasses.fields(group)
    }
    assert names < TrainingOptions.flat_names()
    assert set(module.hparams) == TrainingOptions.flat_names() | {
        "model",
        "pretrained",
        "vit_weights",
    }


def test_hparams_of_an_older_checkpoint_still_load(tmp_path):
    """A checkpoint written before the typed options (flat hparams, without the options added
    since) loads into the module, with the newer options at their defaults."""
    source = PerceiverVLModule(model=TINY_MODEL, objectives=["contrastive"], lr=5e-4)
    old = {k: v for k, v in source.hparams.items() if k not in ("end_lr_ratio", "eval_modes")}
    old["betas"] = list(old["betas"])  # as YAML gives them
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": source.state_dict(),
            "hyper_parameters": old,
            "pytorch-lightning_version": "2.4.0",
        },
        path,
    )
    loaded = PerceiverVLModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.options.optimization.lr == 5e-4
    assert loaded.options.optimization.betas == (0.9, 0.98)
    assert loaded.options.evaluation.eval_modes == ("multi", "mixed")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_the_plain_training_modules_import_without_lightning():
    code = (
        "import sys\n"
        "import perceiver_vl.train.build, perceiver_vl.train.latent_decoder\n"
        "import perceiver_vl.train.losses, perceiver_vl.train.optim\n"
        "import perceiver_vl.train.options, perceiver_vl.train.validation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', "
        "'pytorch_lightning', 'lightning_fabric')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_optimiser_runs_fused_and_updates_like_the_default_loop():
    from perceiver_vl.train.optim import build_optimizer

    def steps(model, fused):
        options = OptimizationOptions(lr=1e-2, weight_decay=0.1)
        if fused:
            optimizer, _ = build_optimizer(model, options, total_steps=10)
        else:  # the per-tensor loop, same groups and settings
            optimizer = torch.optim.AdamW(
                parameter_groups(model, options), lr=1e-2, betas=options.betas, eps=options.eps
            )
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        return optimizer

    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    loop_model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    loop_model.load_state_dict(fused_model.state_dict())
    fused = steps(fused_model, fused=True)
    assert fused.defaults["fused"] and all(g["fused"] for g in fused.param_groups)
    assert not steps(loop_model, fused=False).defaults["fused"]
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("32-true", 1.0, True), ("bf16-mixed", None, True), ("bf16-mixed", 1.0, False)],
)
def test_the_module_takes_the_fused_optimiser_where_lightning_allows_it(precision, clip, fused):
    import lightning.pytorch as pl

    module = PerceiverVLModule(model=dict(TINY_MODEL), objectives=["contrastive"])
    trainer = pl.Trainer(
        accelerator="cpu",
        precision=precision,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=1,
    )
    module.trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    # fused where Lightning allows it; the multi-tensor form where it would refuse clipping
    assert bool(optimizer.defaults["fused"]) is fused
    assert bool(optimizer.defaults["foreach"]) is not fused
