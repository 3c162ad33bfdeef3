"""Shapes, masking invariants, LayerDrop, cross-attention subsets, bad input."""

import pytest
import torch
import torch.nn.functional as F

from perceiver_vl import PerceiverVL
from perceiver_vl.model.embeddings import resize_position_grid
from perceiver_vl.model.encoder import concat_contexts, layerdrop_decisions

from ..conftest import make_inputs, tiny_config


def test_shapes_every_mode(tiny_model):
    video, ids, mask = make_inputs()
    cfg = tiny_model.config
    out = tiny_model(video=video, text_ids=ids, text_mask=mask)
    assert out.latents.shape == (2, cfg.num_latents, cfg.hidden_size)
    assert out.decoder_states.shape == (2, 1, cfg.hidden_size)
    assert out.matching_logits.shape == (2,)
    assert out.loss is None and out.mlm_logits is None
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    images = video[:, 0]
    out = tiny_model(images=images, text_ids=ids, text_mask=mask, mlm_labels=labels)
    assert out.mlm_logits.shape == (2, 7, cfg.vocab_size)
    assert out.decoder_states.shape == (2, 8, cfg.hidden_size)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert tiny_model.encode(video=video).shape == (2, 8, 32)
    assert tiny_model.encode(images=images).shape == (2, 8, 32)
    assert tiny_model.encode(text_ids=ids, text_mask=mask).shape == (2, 8, 32)
    # text-only forward: no matching logit, MLM still works
    out = tiny_model(text_ids=ids, mlm_labels=labels)
    assert out.matching_logits is None and out.mlm_logits.shape == (2, 7, 100)


def test_matching_and_mlm_in_one_decoder_call_agree_with_separate_calls(tiny_model):
    video, ids, mask = make_inputs()
    labels = torch.full_like(ids, -100)
    labels[:, 1] = 3
    joint = tiny_model(video=video, text_ids=ids, text_mask=mask, mlm_labels=labels)
    alone = tiny_model(video=video, text_ids=ids, text_mask=mask)
    torch.testing.assert_close(joint.matching_logits, alone.matching_logits)


def test_losses_and_backward():
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config(num_answers=5)).train()
    video, ids, mask = make_inputs()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = model(
        video=video,
        text_ids=ids,
        text_mask=mask,
        mlm_labels=labels,
        matching_labels=torch.tensor([1, 0]),
        answer_targets=(answer_targets := torch.rand(2, 5)),
    )
    assert out.answer_logits.shape == (2, 5)
    # each loss is the standard one on the logits the forward returned
    torch.testing.assert_close(
        out.matching_loss,
        F.binary_cross_entropy_with_logits(out.matching_logits, torch.tensor([1.0, 0.0])),
    )
    torch.testing.assert_close(out.mlm_loss, F.cross_entropy(out.mlm_target_logits, ids[:, 3]))
    torch.testing.assert_close(
        out.qa_loss, F.binary_cross_entropy_with_logits(out.answer_logits, answer_targets) * 5
    )
    torch.testing.assert_close(out.loss, out.matching_loss + out.mlm_loss + out.qa_loss)
    out.loss.backward()
    assert model.encoder.latents.grad.abs().sum() > 0
    assert model.qa_head is not None and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.qa_head.parameters()
    )


def test_qa_cross_entropy_head():
    model = PerceiverVL(tiny_config(num_answers=4, qa_loss="ce")).eval()
    video, ids, mask = make_inputs()
    answers = torch.tensor([0, 3])
    out = model(video=video, text_ids=ids, text_mask=mask, answer_targets=answers)
    assert out.answer_logits.shape == (2, 4)
    torch.testing.assert_close(out.qa_loss, F.cross_entropy(out.answer_logits, answers))


def test_padding_frames_and_tokens_do_not_change_outputs(tiny_model):
    video, ids, mask = make_inputs(batch=2, frames=3, length=5)
    ref = tiny_model(video=video, text_ids=ids, text_mask=mask)
    padded_video = torch.cat([video, torch.randn(2, 2, 3, 32, 32)], dim=1)
    vmask = torch.tensor([[1, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    padded_ids = torch.cat([ids, torch.randint(5, 100, (2, 3))], dim=1)
    tmask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    out = tiny_model(video=padded_video, video_mask=vmask, text_ids=padded_ids, text_mask=tmask)
    torch.testing.assert_close(out.latents, ref.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.matching_logits, ref.matching_logits, atol=1e-5, rtol=1e-5)


def test_fully_masked_frames_and_samples_give_no_nan_and_ignore_what_is_masked(tiny_model):
    video, ids, mask = make_inputs()
    vmask = torch.tensor([[True, False, False], [False, False, False]])
    no_text = torch.zeros_like(mask)
    out = tiny_model(video=video, video_mask=vmask, text_ids=ids, text_mask=no_text)
    assert torch.isfinite(out.latents).all() and torch.isfinite(out.matching_logits).all()
    # what is masked (sample 0's frames 1-2, all of sample 1, every text token) is never read
    other_video = video.clone()
    other_video[0, 1:] = -video[0, 1:]
    other_video[1] = -video[1]
    other_ids = (ids + 1) % 100
    again = tiny_model(video=other_video, video_mask=vmask, text_ids=other_ids, text_mask=no_text)
    torch.testing.assert_close(again.latents, out.latents, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.matching_logits, out.matching_logits, atol=1e-6, rtol=0)
    # ...while the one real frame is
    other_video[0, 0] = -video[0, 0]
    changed = tiny_model(video=other_video, video_mask=vmask, text_ids=ids, text_mask=no_text)
    assert not torch.allclose(changed.latents[0], out.latents[0])


def test_explicit_attention_equals_sdpa_with_padding_and_gradients(tiny_model):
    from perceiver_vl.model import attention

    video, ids, mask = make_inputs(batch=3, frames=3, length=6)
    vmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, :] = False  # a sample with no text at all

    def run():
        out = tiny_model(video=video, video_mask=vmask, text_ids=ids, text_mask=mask)
        params = [p for p in tiny_model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.matching_logits.sum(), params, allow_unused=True)
        return out.matching_logits.detach(), [g for g in grads if g is not None]

    reference, reference_grads = run()
    with attention.explicit_attention():
        assert attention._EXPLICIT
        explicit, explicit_grads = run()
    assert not attention._EXPLICIT  # restored on leaving
    torch.testing.assert_close(explicit, reference, rtol=1e-5, atol=1e-5)
    assert len(explicit_grads) == len(reference_grads) > 10
    for a, b in zip(explicit_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_layerdrop_random_in_training_absent_in_eval():
    model = PerceiverVL(tiny_config(cross_attention_before_layers=(0, 1, 2, 3), layerdrop=0.5))
    video, ids, mask = make_inputs()
    model.train()
    seen = {
        model(video=video, text_ids=ids, layerdrop_step=s).cross_attention_blocks for s in range(40)
    }
    assert len(seen) > 1, "LayerDrop never changed the schedule in training"
    assert all(blocks[0] == 0 for blocks in seen), "the first cross-attention block must always run"
    model.eval()
    evals = {
        model(video=video, text_ids=ids, layerdrop_step=s).cross_attention_blocks for s in range(10)
    }
    assert evals == {(0, 1, 2, 3)}


def test_layerdrop_identical_across_simulated_ranks():
    # Two "ranks": independent model instances, different global RNG states, same seed and steps.
    decisions = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        model = PerceiverVL(tiny_config(cross_attention_before_layers=(0, 1, 2, 3))).train()
        video, ids, mask = make_inputs(seed=rank)
        decisions.append(
            [model(video=video, text_ids=ids).cross_attention_blocks for _ in range(20)]
        )
    assert decisions[0] == decisions[1]
    assert decisions[0] == [layerdrop_decisions(4, 0.5, seed=0, step=s) for s in range(20)]
    # ...and the global RNG is untouched by the decision
    torch.manual_seed(1)
    a = torch.rand(1)
    torch.manual_seed(1)
    layerdrop_decisions(4, 0.5, seed=0, step=3)
    assert torch.equal(torch.rand(1), a)


def test_cross_attention_layer_subsets(tiny_model):
    video, ids, mask = make_inputs()
    all_blocks = tiny_model(video=video, text_ids=ids, text_mask=mask)
    first = tiny_model(video=video, text_ids=ids, text_mask=mask, cross_attention_layers=[0])
    assert all_blocks.cross_attention_blocks == (0, 1) and first.cross_attention_blocks == (0,)
    assert not torch.allclose(all_blocks.latents, first.latents)
    # the default stored in the config applies when the caller does not choose
    tiny_model.config.inference_cross_attention_blocks = (0,)
    default = tiny_model(video=video, text_ids=ids, text_mask=mask)
    torch.testing.assert_close(default.latents, first.latents)
    # skipping block 1 by hand equals the subset
    model = tiny_model
    manual = model.encoder.initial_latents(2)
    visual, text = model._contexts(model._check_inputs(video, None, None, ids, mask))
    array, amask = concat_contexts([visual, text])
    for i, blk in enumerate(model.encoder.self_attention_blocks):
        if i == 0:
            manual = model.encoder.cross_attention_blocks[0](manual, array, amask)
        manual = blk(manual)
    torch.testing.assert_close(model.encoder.norm(manual), first.latents)
    with pytest.raises(ValueError, match="cross_attention_layers"):
        model(video=video, text_ids=ids, cross_attention_layers=[2])
    with pytest.raises(ValueError, match="empty"):
        model(video=video, text_ids=ids, cross_attention_layers=[])


def test_other_frame_sizes_resize_the_position_table(tiny_model):
    embed = tiny_model.visual_embed
    table = embed.pos_embed[0, 1:]  # the 4 x 4 grid of a 32 px frame of 8 px patches
    # the trained size uses the table as it is; 48 x 24 px (6 x 3 patches) a bilinear resize
    assert resize_position_grid(table, (4, 4), (4, 4)) is table
    resized = resize_position_grid(table, (4, 4), (6, 3))
    reference = F.interpolate(
        table.T.reshape(1, -1, 4, 4), size=(6, 3), mode="bilinear", align_corners=True
    )
    torch.testing.assert_close(resized, reference.reshape(-1, 18).T)
    # corners stay where they were (align_corners)
    torch.testing.assert_close(resized[[0, 2, 15, 17]], table[[0, 3, 12, 15]])
    frame = torch.randn(1, 1, 3, 48, 24)
    with torch.no_grad():
        tokens = embed(frame, is_video=False)
        patches = F.conv2d(
            frame[:, 0], embed.patch_embed.proj.weight, embed.patch_embed.proj.bias, stride=8
        )
    assert tokens.shape == (1, 1 + 18, 32)
    expected = patches.flatten(2).transpose(1, 2)[0] + resized
    torch.testing.assert_close(tokens[0, 1:], expected, atol=1e-5, rtol=1e-5)
    out = tiny_model(video=torch.randn(1, 2, 3, 48, 24), text_ids=torch.tensor([[5, 6, 7]]))
    assert out.latents.shape == (1, 8, 32)


def _seeded(**changes) -> PerceiverVL:
    torch.manual_seed(0)
    return PerceiverVL(tiny_config(dropout=0.0, layerdrop=0.0, **changes)).eval()


def test_the_standard_residual_is_a_pre_ln_residual_of_the_cross_attention():
    normalized, standard = _seeded(), _seeded(cross_attention_residual="standard")
    assert all(  # same weights, so only the residual rule differs
        torch.equal(a, b)
        for a, b in zip(normalized.state_dict().values(), standard.state_dict().values())
    )
    video, ids, mask = make_inputs()
    a = normalized(video=video, text_ids=ids, text_mask=mask).latents
    b = standard(video=video, text_ids=ids, text_mask=mask).latents
    assert not torch.allclose(a, b, atol=1e-4)


def test_the_modality_embedding_is_added_to_every_token_of_its_modality():
    typed = _seeded(modality_embedding=True)
    # the same model without the type embedding, its rows folded into embeddings that reach
    # every token of one modality: the temporal table (video) and the text LayerNorm's bias
    plain = PerceiverVL(typed.config.replace(modality_embedding=False)).eval()
    state = {k: v.clone() for k, v in typed.state_dict().items() if not k.startswith("modality")}
    rows = typed.modality_embed.weight.detach()
    plain.load_state_dict(state)
    video, ids, mask = make_inputs()
    with torch.no_grad():
        expected = typed(video=video, text_ids=ids, text_mask=mask).latents
        assert not torch.allclose(
            plain(video=video, text_ids=ids, text_mask=mask).latents, expected
        )
        plain.visual_embed.temporal_embed += rows[0]
        plain.text_embed.LayerNorm.bias += rows[1]
        folded = plain(video=video, text_ids=ids, text_mask=mask).latents
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(), "no input"),
        (dict(video=torch.randn(2, 3, 32, 32)), "video must be"),
        (dict(video=torch.randn(2, 7, 3, 32, 32)), "max_frames"),
        (dict(video=torch.randint(0, 2, (2, 3, 3, 32, 32))), "float"),
        (dict(video=torch.randn(2, 3, 3, 30, 32)), "patch_size"),
        (dict(video=torch.randn(0, 3, 3, 32, 32)), "empty"),
        (dict(images=torch.randn(2, 3, 32)), "images must be"),
        (dict(images=torch.randn(2, 3, 32, 32), video=torch.randn(2, 1, 3, 32, 32)), "not both"),
        (
            dict(video=torch.randn(2, 3, 3, 32, 32), video_mask=torch.ones(2, 4, dtype=torch.bool)),
            "video_mask",
        ),
        (dict(images=torch.randn(2, 3, 32, 32), video_mask=torch.ones(2, 1)), "video_mask"),
        (dict(text_ids=torch.randint(0, 9, (2, 11))), "max_text_length"),
        (dict(text_ids=torch.rand(2, 4)), "integer"),
        (dict(text_ids=torch.randint(0, 9, (2,))), "text_ids must be"),
        (dict(text_ids=torch.tensor([[1, 100]])), "vocab_size"),
        (
            dict(text_ids=torch.ones(2, 4, dtype=torch.long), text_mask=torch.ones(2, 5)),
            "text_mask",
        ),
        (
            dict(images=torch.randn(2, 3, 32, 32), text_ids=torch.ones(3, 4, dtype=torch.long)),
            "batch sizes",
        ),
        (dict(text_ids=torch.ones(2, 0, dtype=torch.long)), "empty"),
        (dict(images=torch.randn(2, 3, 32, 32), text_mask=torch.ones(2, 3)), "text_mask was given"),
    ],
)
def test_bad_input_is_named(tiny_model, kwargs, words):
    with pytest.raises(ValueError, match=words):
        tiny_model(**kwargs)


def test_bad_labels_are_named(tiny_model):
    video, ids, mask = make_inputs()
    with pytest.raises(ValueError, match="mlm_labels"):
        tiny_model(video=video, text_ids=ids, mlm_labels=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="matching_labels"):
        tiny_model(video=video, text_ids=ids, matching_labels=torch.ones(3))
    with pytest.raises(ValueError, match="QA head"):
        tiny_model(video=video, text_ids=ids, answer_targets=torch.ones(2, 3))


def test_training_mode_projects_only_masked_positions_with_the_same_loss():
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config(layerdrop=0.0, dropout=0.0))
    video, ids, mask = make_inputs()
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 4], labels[1, 5] = ids[0, 1], ids[1, 4], ids[1, 5]
    model.eval()
    full = model(video=video, text_ids=ids, text_mask=mask, mlm_labels=labels)
    model.train()
    part = model(video=video, text_ids=ids, text_mask=mask, mlm_labels=labels)
    assert part.mlm_logits is None and part.mlm_target_logits.shape == (3, 100)
    picked = labels != -100
    torch.testing.assert_close(part.mlm_target_logits, full.mlm_logits[picked])
    torch.testing.assert_close(part.mlm_loss, full.mlm_loss)
    part.mlm_loss.backward()
    assert model.mlm_head.decoder.weight.grad.abs().sum() > 0


def test_the_forward_is_deterministic_for_a_seed():
    video, ids, mask = make_inputs()
    a, b = _seeded(), _seeded()
    first = a(video=video, text_ids=ids, text_mask=mask)
    torch.testing.assert_close(a(video=video, text_ids=ids, text_mask=mask).latents, first.latents)
    second = b(video=video, text_ids=ids, text_mask=mask)
    assert torch.equal(second.latents, first.latents)
    assert torch.equal(second.matching_logits, first.matching_logits)
    torch.manual_seed(1)
    other = PerceiverVL(tiny_config(dropout=0.0, layerdrop=0.0)).eval()
    assert not torch.allclose(
        other(video=video, text_ids=ids, text_mask=mask).latents, first.latents
    )


def test_autocast_dtype_names_the_active_autocast_and_skips_unknown_devices():
    from perceiver_vl.model.attention import autocast_dtype

    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") == torch.bfloat16
        assert autocast_dtype("meta") is None  # FLOP counting runs on meta tensors
    # the video embedding under autocast: the patches go to bf16 before the projections,
    # the same tokens as fp32 to bf16 rounding
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config()).train()
    video, _, _ = make_inputs(batch=2, frames=3)
    reference = model.visual_embed(video, is_video=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.visual_embed(video, is_video=True)
    assert tokens.dtype == torch.bfloat16
    torch.testing.assert_close(tokens.float(), reference, rtol=3e-2, atol=3e-2)
