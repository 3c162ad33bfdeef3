"""Retrieval streams from precomputed latents; FLOP counting."""

import pytest
import torch

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.flops import count_flops, count_flops_of
from perceiver_vl.model import preset
from perceiver_vl.model.streams import pairwise_single_stream_scores

from ..conftest import make_inputs, tiny_config


def test_multi_and_mixed_scores_equal_inline_computation(tiny_model):
    video, _, _ = make_inputs(batch=3, frames=2)
    _, ids, mask = make_inputs(batch=4, length=6, seed=1)
    mask[1, 4:] = False
    with torch.no_grad():
        v = tiny_model.encode(video=video)
        t = tiny_model.encode(text_ids=ids, text_mask=mask)
        multi = tiny_model.multi_stream_scores(v, t)
        mixed = tiny_model.mixed_stream_scores(v, t, chunk_size=5)
        assert multi.shape == mixed.shape == (4, 3)
        for i in range(4):
            for j in range(3):
                t_inline = tiny_model.encode(text_ids=ids[i : i + 1], text_mask=mask[i : i + 1])
                v_inline = tiny_model.encode(video=video[j : j + 1])
                expected_multi = (
                    tiny_model.embed(t_inline, "text") @ tiny_model.embed(v_inline, "visual").T
                )
                torch.testing.assert_close(multi[i, j], expected_multi[0, 0], atol=1e-5, rtol=1e-5)
                expected_mixed = tiny_model.mixed_stream_logits(v_inline, t_inline)
                torch.testing.assert_close(mixed[i, j], expected_mixed[0], atol=1e-5, rtol=1e-5)


def test_mixed_summaries_are_computed_in_chunks_of_items_to_the_same_scores(tiny_model):
    g = torch.Generator().manual_seed(3)
    n, d = tiny_model.config.num_latents, tiny_model.config.hidden_size
    visual, text = torch.randn(7, n, d, generator=g), torch.randn(5, n, d, generator=g)
    decoder = tiny_model.decoder
    whole = decoder.cls_summary(visual, chunk_size=100)
    for chunk in (1, 3, 7):
        part = decoder.cls_summary(visual, chunk_size=chunk)
        torch.testing.assert_close(part.lse, whole.lse)
        torch.testing.assert_close(part.values, whole.values)
    assert decoder.cls_summary(visual[:0]).lse.shape[0] == 0
    with pytest.raises(ValueError, match="chunk_size"):
        decoder.cls_summary(visual, chunk_size=0)
    scores = tiny_model.mixed_stream_scores(visual, text)
    assert scores.shape == (5, 7)
    torch.testing.assert_close(
        scores,
        tiny_model.mixed_stream_scores_from_summaries(
            decoder.cls_summary(visual, chunk_size=2), decoder.cls_summary(text, chunk_size=2)
        ),
    )


def test_mixed_scores_exact_for_standard_residual_too():
    model = PerceiverVL(tiny_config(cross_attention_residual="standard")).eval()
    v = torch.randn(3, 8, 32)
    t = torch.randn(2, 8, 32)
    with torch.no_grad():
        full = model.mixed_stream_scores(v, t)
        for i in range(2):
            torch.testing.assert_close(
                full[i],
                model.mixed_stream_logits(v, t[i : i + 1].expand(3, -1, -1)),
                atol=1e-5,
                rtol=1e-5,
            )


def test_single_stream_pairwise_scores(tiny_model):
    video, _, _ = make_inputs(batch=2, frames=2)
    _, ids, mask = make_inputs(batch=3, seed=2)
    with torch.no_grad():
        scores = pairwise_single_stream_scores(
            tiny_model, text_ids=ids, text_mask=mask, video=video, batch_size=4
        )
        assert scores.shape == (3, 2)
        direct = tiny_model(
            video=video[1:2], text_ids=ids[2:3], text_mask=mask[2:3]
        ).matching_logits
        torch.testing.assert_close(scores[2, 1], direct[0], atol=1e-5, rtol=1e-5)


def test_stream_inputs_are_checked(tiny_model):
    with pytest.raises(ValueError, match="visual_latents"):
        tiny_model.multi_stream_scores(torch.randn(2, 8), torch.randn(2, 8, 32))
    with pytest.raises(ValueError, match="equal batch sizes"):
        tiny_model.mixed_stream_logits(torch.randn(2, 8, 32), torch.randn(3, 8, 32))


def test_encoder_flops_linear_in_frames():
    model = PerceiverVL(tiny_config(max_frames=16)).eval()
    flops = [
        count_flops_of(model.encode, video=torch.randn(1, t, 3, 32, 32)) for t in (2, 4, 8, 16)
    ]
    steps = [b - a for a, b in zip(flops, flops[1:])]
    # equal increments per added frame: per-frame cost 2 x (frames 2->4) = (4->8) / 2 ...
    assert steps[1] == 2 * steps[0] and steps[2] == 2 * steps[1]
    assert steps[0] > 0


def test_flops_count_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = PerceiverVL(tiny_config()).eval()
    video, ids, _ = make_inputs(batch=1)
    total = count_flops(model, video=video, text_ids=ids)
    # the same forward counted with a fused CPU kernel misses attention; the difference is
    # exactly the attention matmuls: 2 (QK^T and AV) x 2 FLOPs x queries x keys x D per block
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), FlopCounterMode(display=False) as counter:
        model(video=video, text_ids=ids)
    cfg = model.config
    m = 3 * (1 + (32 // 8) ** 2) + ids.shape[1]
    n, d = cfg.num_latents, cfg.hidden_size
    attention = (
        (
            cfg.num_cross_attention_blocks * n * m  # cross-attention: latents x input array
            + cfg.num_self_attention_layers * n * n  # latent self-attention
            + 1 * n  # decoder: one [CLS] query x latents
        )
        * 2
        * 2
        * d
    )
    assert total - counter.get_total_flops() == attention


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_flops_counted_without_autograd(grad_mode):
    """FlopCounterMode directly and count_flops both work under no_grad and inference_mode
    (as fvcore-style tools call them), and count what a plain call counts."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = PerceiverVL(tiny_config()).eval()
    video, ids, mask = make_inputs(batch=2)
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    inputs = dict(video=video, text_ids=ids, text_mask=mask, mlm_labels=labels)
    with FlopCounterMode(display=False) as reference:
        model(**inputs)
    with grad_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert counter.get_total_flops() == reference.get_total_flops() > 0
    with grad_mode():
        counted = count_flops(model, **inputs)
        text_only = count_flops_of(model.encode, text_ids=ids)
    assert counted == count_flops(model, **inputs) > counter.get_total_flops()
    assert text_only == count_flops_of(model.encode, text_ids=ids) > 0


@pytest.mark.parametrize(
    "frames, latents, target, tol",
    [(8, 128, 43.9, 0.05), (0, 128, 30.5, 0.05), (0, 64, 17.0, 0.10)],
)
def test_paper_gflops(frames, latents, target, tol):
    torch.manual_seed(0)
    model = PerceiverVL(PerceiverVLConfig(num_latents=latents)).eval()
    ids = torch.randint(1000, 2000, (1, 40))
    visual = (
        dict(video=torch.randn(1, frames, 3, 384, 384))
        if frames
        else dict(images=torch.randn(1, 3, 384, 384))
    )
    gflops = count_flops(model, **visual, text_ids=ids, cross_attention_layers=[0, 1, 2]) / 1e9
    assert abs(gflops - target) / target <= tol, gflops


@pytest.mark.parametrize("blocks", [None, [0], [1]])
@pytest.mark.parametrize("residual", ["normalized", "standard"])
def test_single_stream_scores_equal_one_forward_per_pair(blocks, residual):
    from perceiver_vl.model.streams import single_stream_scores

    torch.manual_seed(0)
    model = PerceiverVL(tiny_config(cross_attention_residual=residual)).eval()
    video, _, _ = make_inputs(batch=3, frames=3)
    vmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    _, ids, mask = make_inputs(batch=4, length=6, seed=3)
    mask[0, 3:] = False
    mask[2] = False  # a text with no real token
    with torch.no_grad():
        fast = single_stream_scores(
            model,
            text_ids=ids,
            text_mask=mask,
            video=video,
            video_mask=vmask,
            cross_attention_layers=blocks,
            chunk_size=5,
        )
        slow = pairwise_single_stream_scores(
            model,
            text_ids=ids,
            text_mask=mask,
            video=video,
            video_mask=vmask,
            cross_attention_layers=blocks,
        )
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_single_stream_chunks_follow_the_activation_budget_and_do_not_change_scores(
    monkeypatch,
):
    """The default chunk keeps the MLP's hidden array of a chunk within 8 MiB (fewer pairs for
    wider models and wider dtypes, at least one; under autocast, in the autocast dtype), and
    any chunking gives the same scores."""
    from perceiver_vl.model import streams
    from perceiver_vl.model.streams import PAIR_CHUNK_BYTES, pair_chunk_size, single_stream_scores

    config = tiny_config()
    per_pair = config.num_latents * config.mlp_hidden_size
    assert pair_chunk_size(config) == PAIR_CHUNK_BYTES // (4 * per_pair)
    assert pair_chunk_size(config, torch.bfloat16) == PAIR_CHUNK_BYTES // (2 * per_pair)
    assert pair_chunk_size(preset("demo")) == 128
    assert pair_chunk_size(PerceiverVLConfig()) == 5  # the paper's model
    assert pair_chunk_size(tiny_config(mlp_ratio=2**16)) == 1
    model = PerceiverVL(config).eval()
    video, _, _ = make_inputs(batch=3, frames=2)
    _, ids, mask = make_inputs(batch=5, length=6, seed=1)
    mask[1, 2:] = False
    with torch.no_grad():
        default = single_stream_scores(model, text_ids=ids, text_mask=mask, video=video)
        for chunk in (1, 4, 15):
            torch.testing.assert_close(
                single_stream_scores(
                    model, text_ids=ids, text_mask=mask, video=video, chunk_size=chunk
                ),
                default,
                atol=1e-6,
                rtol=1e-6,
            )
    with pytest.raises(ValueError, match="chunk_size"):
        single_stream_scores(model, text_ids=ids, video=video, chunk_size=0)
    asked = []
    monkeypatch.setattr(
        streams,
        "pair_chunk_size",
        lambda config, dtype: asked.append(dtype) or pair_chunk_size(config, dtype),
    )
    with torch.no_grad():
        single_stream_scores(model, text_ids=ids, video=video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            single_stream_scores(model, text_ids=ids, video=video)
    assert asked == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("aggregation", ["joint", "separate"])
def test_pair_logits_equal_the_forward_of_gathered_pairs_in_training(aggregation):
    """single_stream_pair_logits (items embedded and projected once, gathered per pair) is the
    joint forward of each gathered pair: same logits and gradients, under LayerDrop, with
    padded frames and tokens."""
    torch.manual_seed(0)
    config = tiny_config(modality_aggregation=aggregation, layerdrop=0.5, dropout=0.0)
    model = PerceiverVL(config).train()  # no dropout: the two calls must draw alike
    video, _, _ = make_inputs(batch=3, frames=3)
    vmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    _, ids, mask = make_inputs(batch=4, length=6, seed=3)
    mask[1, 4:] = False
    v_idx = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    t_idx = torch.tensor([0, 0, 0, 3, 2, 1, 1])
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(4):  # LayerDrop keeps different blocks on different steps
        fast = model.single_stream_pair_logits(
            video=video, video_mask=vmask, text_ids=ids, text_mask=mask,
            visual_index=v_idx, text_index=t_idx, layerdrop_step=step,
        )  # fmt: skip
        slow = model(
            video=video[v_idx], video_mask=vmask[v_idx], text_ids=ids[t_idx],
            text_mask=mask[t_idx], layerdrop_step=step,
        ).matching_logits  # fmt: skip
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
        weights = torch.linspace(-1, 1, fast.shape[0])
        g_fast = torch.autograd.grad((fast * weights).sum(), params, allow_unused=True)
        g_slow = torch.autograd.grad((slow * weights).sum(), params, allow_unused=True)
        for a, b in zip(g_fast, g_slow, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("aggregation", ["joint", "separate"])
def test_paired_forward_equals_pretraining_two_passes(aggregation):
    """forward over pairs (visual_index / text_index) with per-text MLM labels and per-pair
    matching labels (-100 = no matching loss) is the released code's two passes, matching on
    the clean caption with shuffled videos and masked LM on the corrupted copy with each
    sample's own video: same logits, losses and gradients, under LayerDrop, with padding."""
    torch.manual_seed(0)
    config = tiny_config(modality_aggregation=aggregation, layerdrop=0.5, dropout=0.0)
    model = PerceiverVL(config).train()
    video, ids, mask = make_inputs(batch=4, frames=3, length=6, seed=5)
    vmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    mask[2, 4:] = False
    corrupted = ids.clone()
    corrupted[:, 1] = 3
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    labels[0, 3] = ids[0, 3]
    shuffle = torch.tensor([0, 2, 1, 3])
    match = torch.tensor([1, 0, 0, 1])
    own = torch.arange(4)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(3):
        paired = model(
            video=video, video_mask=vmask, text_ids=torch.cat([ids, corrupted]),
            text_mask=torch.cat([mask, mask]), visual_index=torch.cat([shuffle, own]),
            text_index=torch.arange(8), mlm_labels=torch.cat([torch.full_like(labels, -100), labels]),
            matching_labels=torch.cat([match, torch.full_like(match, -100)]), layerdrop_step=step,
        )  # fmt: skip
        matching = model(
            video=video[shuffle], video_mask=vmask[shuffle], text_ids=ids, text_mask=mask,
            matching_labels=match, layerdrop_step=step,
        )  # fmt: skip
        mlm = model(
            video=video, video_mask=vmask, text_ids=corrupted, text_mask=mask, mlm_labels=labels,
            layerdrop_step=step,
        )  # fmt: skip
        assert paired.matching_logits.shape == (8,)
        torch.testing.assert_close(
            paired.matching_logits[:4], matching.matching_logits, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            paired.matching_loss, matching.matching_loss, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(paired.mlm_loss, mlm.mlm_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            paired.mlm_target_logits, mlm.mlm_target_logits, atol=1e-5, rtol=1e-5
        )
        fast = paired.matching_loss * 0.3 + paired.mlm_loss
        slow = matching.matching_loss * 0.3 + mlm.mlm_loss
        g_fast = torch.autograd.grad(fast, params, allow_unused=True)
        g_slow = torch.autograd.grad(slow, params, allow_unused=True)
        for a, b in zip(g_fast, g_slow, strict=True):
            if a is None or b is None:  # a head only one of the calls reaches
                assert a is None or not a.any()
                assert b is None or not b.any()
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_matching_labels_minus_100_are_left_out_of_the_loss(tiny_model):
    video, ids, mask = make_inputs(batch=3)
    with torch.no_grad():
        out = tiny_model(
            video=video, text_ids=ids, text_mask=mask, matching_labels=torch.tensor([1, -100, 0])
        )
        kept = torch.nn.functional.binary_cross_entropy_with_logits(
            out.matching_logits[[0, 2]], torch.tensor([1.0, 0.0])
        )
        torch.testing.assert_close(out.matching_loss, kept)
    with pytest.raises(ValueError, match="matching_labels must hold only 1"):
        tiny_model(video=video, text_ids=ids, matching_labels=torch.tensor([1, 2, 0]))


def test_pair_logits_check_their_indices(tiny_model):
    video, ids, _ = make_inputs(batch=2)
    with pytest.raises(ValueError, match="visual_index values must lie in"):
        tiny_model.single_stream_pair_logits(
            video=video, text_ids=ids, visual_index=torch.tensor([0, 2]),
            text_index=torch.tensor([0, 1]),
        )  # fmt: skip
    with pytest.raises(ValueError, match="same, positive number of pairs"):
        tiny_model.single_stream_pair_logits(
            video=video, text_ids=ids, visual_index=torch.tensor([0, 1, 1]),
            text_index=torch.tensor([0, 1]),
        )  # fmt: skip
    with pytest.raises(ValueError, match="text_index must be a 1-D integer tensor"):
        tiny_model.single_stream_pair_logits(
            video=video, text_ids=ids, visual_index=torch.tensor([0, 1]),
            text_index=torch.tensor([0.0, 1.0]),
        )  # fmt: skip


def test_single_stream_scores_images_and_fallback():
    from perceiver_vl.model.streams import single_stream_scores

    model = PerceiverVL(tiny_config(modality_aggregation="separate")).eval()
    images = torch.randn(2, 3, 32, 32)
    _, ids, mask = make_inputs(batch=3, seed=4)
    with torch.no_grad():
        fast = single_stream_scores(model, text_ids=ids, text_mask=mask, images=images)
        slow = pairwise_single_stream_scores(model, text_ids=ids, text_mask=mask, images=images)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_scores_under_bf16_autocast_stay_full_precision_and_do_not_tie(tiny_model):
    """A bf16 logit has 8 significant bits: scoring hundreds of candidates in bf16 ties most of
    them (and pessimistic tie-breaking then sinks the recall), so the score heads opt out."""
    g = torch.Generator().manual_seed(0)
    visual = torch.randn(300, 8, 32, generator=g)
    text = torch.randn(300, 8, 32, generator=g)
    with torch.no_grad():
        exact_multi = tiny_model.multi_stream_scores(visual, text)
        exact_mixed = tiny_model.mixed_stream_scores(visual, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            multi = tiny_model.multi_stream_scores(visual, text)
            mixed = tiny_model.mixed_stream_scores(visual, text)
            logits = tiny_model.mixed_stream_logits(visual[:50], text[:50])
    assert multi.dtype == mixed.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(multi, exact_multi)  # the embeddings are fp32 end to end
    torch.testing.assert_close(mixed, exact_mixed, atol=0.05, rtol=0.05)  # bf16 decoder body
    for scores in (multi, mixed):
        distinct = torch.tensor([row.unique().numel() for row in scores]).float().mean()
        assert distinct > 0.95 * scores.shape[1]
