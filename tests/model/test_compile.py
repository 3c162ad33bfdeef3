"""torch.compile: with trusted inputs the forward and a training step trace as one graph each."""

import pytest
import torch

from perceiver_vl import PerceiverVL

from ..conftest import make_inputs, tiny_config


def _padded_inputs():
    video, ids, mask = make_inputs(batch=2, frames=3)
    mask[1, 4:] = False
    video_mask = torch.tensor([[True, True, True], [True, True, False]])
    return dict(video=video, video_mask=video_mask, text_ids=ids, text_mask=mask)


def test_compiled_forward_and_training_step_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    # two layers and two cross-attention blocks: every code path, half the tracing time
    config = tiny_config(
        dropout=0.0, num_self_attention_layers=2, cross_attention_before_layers=(0, 1)
    )
    model = PerceiverVL(config).eval()
    inputs = _padded_inputs()
    # fullgraph=True raises at the first graph break (a host read, an unsupported call); the
    # "eager" backend runs the captured graph as is, which keeps the test fast
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(**inputs).matching_logits
        with model.trusted_inputs():
            got = compiled(**inputs).matching_logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.check_input_values and model.check_finite  # restored on exit

    model.train()
    blocks = model.select_cross_attention_blocks(layerdrop_step=0)
    labels = torch.tensor([1.0, 0.0])
    with model.trusted_inputs():
        out = compiled(**inputs, matching_labels=labels, cross_attention_layers=blocks)
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_trusted_inputs_skip_value_checks_only():
    torch.manual_seed(0)
    model = PerceiverVL(tiny_config()).eval()
    video, ids, _ = make_inputs(batch=1)
    bad_ids = ids.clone()
    bad_ids[0, 0] = model.config.vocab_size + 5
    with pytest.raises(ValueError, match="text_ids values"):
        model(video=video, text_ids=bad_ids)
    with model.trusted_inputs():
        with pytest.raises(ValueError, match=r"text_ids must be \(B, L\)"):  # shapes still checked
            model(video=video, text_ids=ids[:, :, None])
        # a given all-True mask is kept and gives the same output as no mask
        mask = torch.ones_like(ids, dtype=torch.bool)
        with_mask = model(video=video, text_ids=ids, text_mask=mask).matching_logits
    torch.testing.assert_close(
        with_mask, model(video=video, text_ids=ids).matching_logits, atol=1e-5, rtol=1e-5
    )
