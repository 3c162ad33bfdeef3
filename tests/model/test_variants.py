"""The paper's design variants (§3.2, §4.1, §5.2.2) as options of the same model."""

import pytest
import torch

from perceiver_vl import PerceiverVL
from perceiver_vl.flops import count_flops_of

from ..conftest import make_inputs, tiny_config

VARIANTS = [
    dict(modality_aggregation="joint"),
    dict(modality_aggregation="separate"),
    dict(modality_aggregation="separate_plus"),
    dict(latent_position_encoding="learned"),
    dict(latent_position_encoding="fourier"),
    dict(modality_aggregation="separate_plus", latent_position_encoding="fourier"),
    dict(frame_difference=True),
]


@pytest.mark.parametrize("changes", VARIANTS)
def test_variant_forward_backward_and_masks(changes):
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config(**changes))
    video, ids, mask = make_inputs(length=5)
    model.train()
    out = model(video=video, text_ids=ids, text_mask=mask, matching_labels=torch.tensor([1.0, 0.0]))
    out.loss.backward()
    assert model.encoder.latents.grad is not None
    if model.encoder.text_cross_attention_blocks is not None:
        assert model.encoder.text_cross_attention_blocks[0].attn.q.weight.grad is not None
    model.eval()
    with torch.no_grad():
        ref = model(video=video, text_ids=ids, text_mask=mask)
        padded = model(
            video=torch.cat([video, torch.randn(2, 1, 3, 32, 32)], 1),
            video_mask=torch.tensor([[1, 1, 1, 0]] * 2, dtype=torch.bool),
            text_ids=torch.cat([ids, ids[:, :2]], 1),
            text_mask=torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1),
        )
        torch.testing.assert_close(
            padded.matching_logits, ref.matching_logits, atol=1e-5, rtol=1e-5
        )
        # single-modality encodings (multi/mixed stream) work in every variant
        assert model.encode(video=video).shape == (2, 8, 32)
        assert model.encode(text_ids=ids, text_mask=mask).shape == (2, 8, 32)


def test_joint_weights_load_into_separate_variants():
    joint = PerceiverVL(tiny_config())
    for aggregation in ("separate", "separate_plus"):
        other = PerceiverVL(tiny_config(modality_aggregation=aggregation))
        missing, unexpected = other.load_state_dict(joint.state_dict(), strict=False)
        assert not unexpected
        assert missing and all(
            k.startswith("encoder.text_cross_attention_blocks.") for k in missing
        )


def test_separate_plus_places_text_cross_attention_half_way():
    model = PerceiverVL(tiny_config(modality_aggregation="separate_plus"))  # blocks at 0 and 2 of 4
    assert model.encoder.plan == {
        0: [(0, "visual")],
        1: [(0, "text")],
        2: [(1, "visual")],
        3: [(1, "text")],
    }
    sep = PerceiverVL(tiny_config(modality_aggregation="separate"))
    assert sep.encoder.plan == {0: [(0, "visual"), (0, "text")], 2: [(1, "visual"), (1, "text")]}


def test_aggregation_flops_follow_the_cost_formula():
    """Per-modality cross-attentions cost the joint one plus k extra query-side projections
    and MLPs over the N latents (keys/values and attention over M are split, not repeated)."""
    video, ids, mask = make_inputs(batch=1, length=6)
    cfg = tiny_config()
    d, n, k = cfg.hidden_size, cfg.num_latents, cfg.num_cross_attention_blocks
    flops = {}
    for aggregation in ("joint", "separate", "separate_plus"):
        model = PerceiverVL(tiny_config(modality_aggregation=aggregation)).eval()
        flops[aggregation] = count_flops_of(model.encode, video=video, text_ids=ids, text_mask=mask)
    # extra per block: q projection + output projection (2 D^2) + MLP (2 * D * 4D), on N latents, x2 FLOPs
    extra = k * n * (2 * d * d + 2 * d * cfg.mlp_hidden_size) * 2
    assert flops["separate"] - flops["joint"] == extra
    assert flops["separate_plus"] == flops["separate"]


def test_latent_position_encodings_change_the_latents():
    torch.manual_seed(0)
    base = PerceiverVL(tiny_config()).eval()
    video, ids, _ = make_inputs()
    for kind in ("learned", "fourier"):
        model = PerceiverVL(tiny_config(latent_position_encoding=kind)).eval()
        model.load_state_dict(base.state_dict(), strict=False)
        assert not torch.allclose(model.encode(video=video), base.encode(video=video))
    fourier = PerceiverVL(tiny_config(latent_position_encoding="fourier"))
    assert "encoder.latent_position" not in fourier.state_dict()  # fixed features, not weights


@pytest.mark.parametrize("method", ["fresh", "interpolate"])
def test_with_num_latents(method):
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config(latent_position_encoding="learned")).eval()
    resized = model.with_num_latents(16, method=method)
    assert resized.config.num_latents == 16 and resized.encoder.latents.shape == (16, 32)
    assert torch.equal(
        resized.encoder.self_attention_blocks[0].attn.qkv.weight,
        model.encoder.self_attention_blocks[0].attn.qkv.weight,
    )
    video, ids, _ = make_inputs()
    assert resized(video=video, text_ids=ids).latents.shape == (2, 16, 32)
    if method == "interpolate":
        # end points are kept exactly (linear, align_corners=True)
        torch.testing.assert_close(resized.encoder.latents[0], model.encoder.latents[0])
        torch.testing.assert_close(resized.encoder.latents[-1], model.encoder.latents[-1])
        same = model.with_num_latents(8, method="interpolate")
        torch.testing.assert_close(same.encoder.latents, model.encoder.latents)
    with pytest.raises(ValueError, match="method"):
        model.with_num_latents(4, method="nearest")


def test_frame_difference_adds_only_the_change_between_frames():
    torch.manual_seed(0)
    plain = PerceiverVL(tiny_config()).eval()
    motion = PerceiverVL(tiny_config(frame_difference=True)).eval()
    missing, unexpected = motion.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["visual_embed.difference_proj.weight"] and not unexpected
    video, _, _ = make_inputs()
    still = video[:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    with torch.no_grad():
        # a still video and an image carry no change: the tokens are the plain model's
        assert torch.equal(
            motion.visual_embed(still, is_video=True), plain.visual_embed(still, is_video=True)
        )
        assert torch.equal(
            motion.visual_embed(video[:, :1], is_video=False),
            plain.visual_embed(video[:, :1], is_video=False),
        )
        moving, ref = (
            motion.visual_embed(video, is_video=True),
            plain.visual_embed(video, is_video=True),
        )
        per_frame = moving.shape[1] // 3
        # the first frame has no predecessor; later patch tokens move by the projected change
        assert torch.equal(moving[:, :per_frame], ref[:, :per_frame])
        assert (
            moving[:, per_frame + 1 : 2 * per_frame] - ref[:, per_frame + 1 : 2 * per_frame]
        ).abs().min() > 0
        # the per-frame tokens carry no patch content and stay as they were
        assert torch.equal(moving[:, per_frame], ref[:, per_frame])
        # the same change projected by hand for frame 1, patch 0
        p = plain.config.patch_size
        change = (video[:, 1, :, :p, :p] - video[:, 0, :, :p, :p]).reshape(2, -1)
        expected = ref[:, per_frame + 1] + change @ motion.visual_embed.difference_proj.weight.T
        assert torch.allclose(moving[:, per_frame + 1], expected, atol=1e-5)


def test_visual_position_init_std_sets_the_scale_of_where_and_when():
    torch.manual_seed(0)
    default = PerceiverVL(tiny_config())
    wide = PerceiverVL(tiny_config(visual_position_init_std=0.2))
    for model, std in ((default, 0.02), (wide, 0.2)):
        for table in (model.visual_embed.pos_embed, model.visual_embed.temporal_embed):
            assert abs(table.std().item() - std) < 0.3 * std
    # only the two tables differ in kind: every other parameter has the default's shape
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in wide.state_dict().items()
    }
    with pytest.raises(ValueError, match="visual_position_init_std"):
        tiny_config(visual_position_init_std=-1.0)
