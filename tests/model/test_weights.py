"""Our safetensors format, the released checkpoint (golden fixture), ViT initialisation."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from perceiver_vl import PerceiverVL
from perceiver_vl.model.weights import ConversionReport, load_vit_weights, official_config

from ..conftest import REPO, make_inputs, tiny_config

# outputs of the authors' implementation for a tiny state dict (tests/fixtures/README.md)
FIXTURE = REPO / "tests" / "fixtures" / "reference_image.safetensors"


def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = PerceiverVL.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny_model.config
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    video, ids, mask = make_inputs()
    assert torch.equal(
        tiny_model(video=video, text_ids=ids).matching_logits,
        loaded(video=video, text_ids=ids).matching_logits,
    )


def test_separate_key_value_weights_are_fused_on_load(tmp_path, tiny_model):
    """Files written before the fused key/value projection (``attn.k`` / ``attn.v``) still load."""
    tiny_model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    fused = [k for k in state if k.endswith(".attn.kv.weight")]
    assert fused  # every cross-attention block, the decoder's included
    for key in [k for k in state if ".attn.kv." in k]:
        keys, values = state.pop(key).chunk(2)
        state[key.replace(".kv.", ".k.")] = keys.contiguous()
        state[key.replace(".kv.", ".v.")] = values.contiguous()
    save_file(state, path)
    with pytest.warns(UserWarning, match="checksum"):  # the rewritten file has lost its checksum
        loaded = PerceiverVL.from_pretrained(tmp_path / "m")
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    strict = PerceiverVL(tiny_model.config)
    strict.load_state_dict(state)  # plain load_state_dict fuses too
    assert torch.equal(strict.decoder.block.attn.kv.weight, tiny_model.decoder.block.attn.kv.weight)


def test_from_pretrained_errors(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="config.json"):
        PerceiverVL.from_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_latents"] = 9
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        PerceiverVL.from_pretrained(tmp_path)


def _fixture():
    sd = load_file(str(FIXTURE))
    golden = {k: v for k, v in sd.items() if k.startswith("golden.")}
    state = {k: v for k, v in sd.items() if not k.startswith("golden.")}
    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    return state, golden, meta


def test_released_layout_reproduces_the_reference_outputs():
    state, g, meta = _fixture()
    tol = meta["tolerance"]
    model = PerceiverVL.from_official_checkpoint(state, num_heads=meta["config"]["num_heads"])
    assert model.config.cross_attention_before_layers == tuple(meta["config"]["perceiver_ct_index"])
    image = g["golden.image.input.image"]
    with torch.no_grad():
        out = model(
            images=image,
            text_ids=g["golden.text_ids"],
            text_mask=g["golden.text_masks"],
            cross_attention_layers=[0, 1],  # the fixture ran every block
        )
        torch.testing.assert_close(
            out.latents, g["golden.image.match.latents"], atol=tol["features_atol"], rtol=0
        )
        torch.testing.assert_close(
            out.decoder_states,
            g["golden.image.match.decoder_feats"],
            atol=tol["features_atol"],
            rtol=0,
        )
        torch.testing.assert_close(
            out.matching_logits,
            g["golden.image.match.logit"][:, 0],
            atol=tol["logits_atol"],
            rtol=0,
        )
        mlm = model(
            images=image,
            text_ids=g["golden.text_ids_mlm"],
            text_mask=g["golden.text_masks"],
            mlm_labels=g["golden.text_labels_mlm"],
            cross_attention_layers=[0, 1],
        )
        torch.testing.assert_close(
            mlm.latents, g["golden.image.mlm.latents"], atol=tol["features_atol"], rtol=0
        )
        torch.testing.assert_close(
            mlm.decoder_states,
            g["golden.image.mlm.decoder_feats"],
            atol=tol["features_atol"],
            rtol=0,
        )
        torch.testing.assert_close(
            mlm.mlm_logits, g["golden.image.mlm.logits"], atol=tol["logits_atol"], rtol=0
        )


def test_released_model_runs_only_the_first_block_by_default(tmp_path):
    state, g, _ = _fixture()
    model = PerceiverVL.from_official_checkpoint(state, num_heads=4)
    assert model.config.inference_cross_attention_blocks == (0,)
    out = model(images=g["golden.image.input.image"], text_ids=g["golden.text_ids"])
    assert out.cross_attention_blocks == (0,)
    # the conversion survives our format, default included
    model.save_pretrained(tmp_path)
    again = PerceiverVL.from_pretrained(tmp_path)
    assert again.config.inference_cross_attention_blocks == (0,)


def test_checkpoint_file_in_lightning_layout_and_cli(tmp_path):
    state, g, _ = _fixture()
    ckpt = tmp_path / "perceivervl_mlm_itm_vtm.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, ckpt)
    model = PerceiverVL.from_official_checkpoint(ckpt, num_heads=4, cross_attention_schedule=(0, 2))
    ref = PerceiverVL.from_official_checkpoint(state, num_heads=4)
    assert torch.equal(model.encoder.latents, ref.encoder.latents)
    from perceiver_vl.cli import main

    assert main(["convert-official", str(ckpt), str(tmp_path / "out"), "--num-heads", "4"]) == 0
    converted = PerceiverVL.from_pretrained(tmp_path / "out")
    out = converted(
        images=g["golden.image.input.image"],
        text_ids=g["golden.text_ids"],
        text_mask=g["golden.text_masks"],
        cross_attention_layers=[0, 1],
    )
    torch.testing.assert_close(
        out.matching_logits, g["golden.image.match.logit"][:, 0], atol=1e-4, rtol=0
    )


def test_pickled_objects_are_refused_with_a_clear_error(tmp_path):
    import argparse

    path = tmp_path / "bad.ckpt"
    # Lightning checkpoints can carry arbitrary pickled objects (hyper-parameter namespaces).
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        PerceiverVL.from_official_checkpoint(path)


def test_not_a_release_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="transformer.latents"):
        PerceiverVL.from_official_checkpoint({"foo": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        PerceiverVL.from_official_checkpoint(tmp_path / "missing.ckpt")


def test_config_is_read_off_the_shapes(tiny_model):
    # Build a release-layout dict from a model by inverting the renames, then read it back.
    from perceiver_vl.model.weights import _OFFICIAL_RENAMES

    state = {}
    for key, value in tiny_model.state_dict().items():
        for theirs, ours in _OFFICIAL_RENAMES:
            if ours is not None and key.startswith(ours):
                state[theirs + key[len(ours) :]] = value
                break
    state["transformer.cls_token_decoder"] = torch.zeros(1, 64, 32)
    cfg = official_config(state, num_heads=2)
    want = tiny_model.config
    assert (cfg.hidden_size, cfg.num_latents, cfg.patch_size, cfg.image_size) == (32, 8, 8, 32)
    assert (cfg.num_self_attention_layers, cfg.cross_attention_before_layers) == (4, (0, 2))
    assert (cfg.max_frames, cfg.max_text_length, cfg.vocab_size) == (
        want.max_frames,
        want.max_text_length,
        want.vocab_size,
    )
    with pytest.raises(ValueError, match="cross_attention_schedule"):
        official_config(state, cross_attention_schedule=(0,))


def _timm_vit(depth=2, dim=32, patch=8, grid=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + grid * grid, dim),
        "norm.weight": r(dim),
        "norm.bias": r(dim),
        "head.weight": r(10, dim),
    }
    for i in range(depth):
        for name, shape in [
            ("norm1", (dim,)),
            ("norm2", (dim,)),
            ("attn.qkv", (3 * dim, dim)),
            ("attn.proj", (dim, dim)),
            ("mlp.fc1", (4 * dim, dim)),
            ("mlp.fc2", (dim, 4 * dim)),
        ]:
            sd[f"blocks.{i}.{name}.weight"] = r(*shape)
            sd[f"blocks.{i}.{name}.bias"] = r(shape[0])
    return sd


def test_vit_init_from_safetensors_and_pth(tmp_path):
    vit = _timm_vit(depth=2, grid=2)  # a 2x2 grid: resized to the model's 4x4
    save_file(vit, tmp_path / "vit.safetensors")
    torch.save(vit, tmp_path / "vit.pth")
    for path in (tmp_path / "vit.safetensors", tmp_path / "vit.pth"):
        model = PerceiverVL(tiny_config())
        before = model.encoder.cross_attention_blocks[0].attn.q.weight.clone()
        report = load_vit_weights(model, path)
        assert isinstance(report, ConversionReport)
        assert torch.equal(
            model.encoder.self_attention_blocks[1].attn.qkv.weight, vit["blocks.1.attn.qkv.weight"]
        )
        assert torch.equal(
            model.visual_embed.patch_embed.proj.weight, vit["patch_embed.proj.weight"]
        )
        assert torch.equal(model.visual_embed.pos_embed[0, 0], vit["pos_embed"][0, 0])
        assert model.visual_embed.pos_embed.shape == (1, 17, 32)
        assert torch.equal(model.encoder.cross_attention_blocks[0].attn.q.weight, before)
        # layers 2, 3 are deeper than the ViT: reported as not loaded; the ViT head is ignored
        assert any(k.startswith("encoder.self_attention_blocks.3.") for k in report.not_loaded)
        assert "head.weight" in report.ignored
        assert "visual_embed.temporal_embed" in report.not_loaded


def test_vit_init_from_original_npz(tmp_path):
    vit = _timm_vit(depth=1, grid=4)
    dim, heads = 32, 2
    arrays = {
        "embedding/kernel": vit["patch_embed.proj.weight"].permute(2, 3, 1, 0).numpy(),
        "embedding/bias": vit["patch_embed.proj.bias"].numpy(),
        "cls": vit["cls_token"].numpy(),
        "Transformer/posembed_input/pos_embedding": vit["pos_embed"].numpy(),
        "Transformer/encoder_norm/scale": vit["norm.weight"].numpy(),
        "Transformer/encoder_norm/bias": vit["norm.bias"].numpy(),
    }
    p = "Transformer/encoderblock_0/"
    a = p + "MultiHeadDotProductAttention_1/"
    qkv_w, qkv_b = vit["blocks.0.attn.qkv.weight"], vit["blocks.0.attn.qkv.bias"]
    for j, n in enumerate(("query", "key", "value")):
        arrays[a + f"{n}/kernel"] = (
            qkv_w[j * dim : (j + 1) * dim].T.reshape(dim, heads, dim // heads).numpy()
        )
        arrays[a + f"{n}/bias"] = (
            qkv_b[j * dim : (j + 1) * dim].reshape(heads, dim // heads).numpy()
        )
    arrays[a + "out/kernel"] = (
        vit["blocks.0.attn.proj.weight"].T.reshape(heads, dim // heads, dim).numpy()
    )
    arrays[a + "out/bias"] = vit["blocks.0.attn.proj.bias"].numpy()
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
        arrays[p + f"{theirs}/scale"] = vit[f"blocks.0.{ours}.weight"].numpy()
        arrays[p + f"{theirs}/bias"] = vit[f"blocks.0.{ours}.bias"].numpy()
    for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
        arrays[p + f"MlpBlock_3/{theirs}/kernel"] = vit[f"blocks.0.mlp.{ours}.weight"].T.numpy()
        arrays[p + f"MlpBlock_3/{theirs}/bias"] = vit[f"blocks.0.mlp.{ours}.bias"].numpy()
    np.savez(tmp_path / "vit.npz", **arrays)
    model = PerceiverVL(tiny_config())
    load_vit_weights(model, tmp_path / "vit.npz")
    ref = PerceiverVL(tiny_config())
    load_vit_weights(ref, vit)
    for key in (
        "encoder.self_attention_blocks.0.attn.qkv.weight",
        "encoder.self_attention_blocks.0.attn.proj.weight",
        "encoder.self_attention_blocks.0.mlp.fc1.weight",
        "visual_embed.patch_embed.proj.weight",
        "visual_embed.pos_embed",
        "encoder.norm.weight",
    ):
        torch.testing.assert_close(model.state_dict()[key], ref.state_dict()[key])
