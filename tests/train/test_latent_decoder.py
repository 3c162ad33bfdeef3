"""Stage 3 on cached latents: the decoder learns mixed-stream scoring, nothing else moves."""

from __future__ import annotations

import pytest
import torch

from perceiver_vl.evaluation import RetrievalInputs
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig
from perceiver_vl.train.latent_decoder import fit_decoder_on_dataset, fit_decoder_on_latents

from .conftest import TINY_MODEL


def _model() -> PerceiverVL:
    torch.manual_seed(0)
    return PerceiverVL(PerceiverVLConfig.from_dict(dict(TINY_MODEL, layerdrop=0.0)))


def _pairs(n: int = 96, latents: int = 8, dim: int = 32):
    """Pairs whose text latents are a noisy copy of their visual latents: learnable."""
    g = torch.Generator().manual_seed(1)
    visual = torch.randn(n, latents, dim, generator=g)
    text = visual + 0.3 * torch.randn(n, latents, dim, generator=g)
    return visual, text


def _pairwise_loss(model: PerceiverVL, visual, text) -> float:
    with torch.no_grad():
        logits = model.mixed_stream_scores(visual, text).float()
        target = torch.arange(len(text))
        return float(torch.nn.functional.cross_entropy(logits, target))


def test_decoder_learns_on_cached_latents_and_nothing_else_moves():
    model = _model()
    visual, text = _pairs()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = _pairwise_loss(model, visual, text)
    curve = fit_decoder_on_latents(
        model, visual, text, steps=60, batch_size=32, lr=3e-3, precision="32", progress=False
    )
    assert curve[0]["step"] == 0 and curve[-1]["step"] == 59
    assert _pairwise_loss(model, visual, text) < start - 0.3  # ln 96 = 4.56 at the start
    assert not model.training
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == name.startswith(("decoder.", "matching_head.")) or (
            not changed and name.startswith("decoder.mlm")  # MLM queries get no gradient
        ), name
        assert param.requires_grad  # restored


def test_same_seed_same_decoder():
    visual, text = _pairs()
    states = []
    for _ in range(2):
        model = _model()
        fit_decoder_on_latents(
            model, visual, text, steps=5, batch_size=16, precision="32", progress=False
        )
        states.append(model.decoder.cls_query.detach().clone())
    assert torch.equal(states[0], states[1])


def test_duplicate_captions_are_not_negatives():
    """Two pairs with one caption: the loss ignores their cross pairs (identical items give the
    same loss as a batch without the duplicate's row/column competing)."""
    model = _model()
    visual, text = _pairs(4)
    visual[1], text[1] = visual[0], text[0]
    keys = torch.tensor([7, 7, 8, 9])
    from perceiver_vl.train.objectives import in_batch_mixed_loss

    with torch.no_grad():
        loss, _ = in_batch_mixed_loss(model, visual, text, keys)
        logits = model.mixed_stream_scores(visual, text).float()
    logits[0, 1] = logits[1, 0] = float("-inf")
    target = torch.arange(4)
    expected = (
        torch.nn.functional.cross_entropy(logits, target)
        + torch.nn.functional.cross_entropy(logits.T, target)
    ) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_bad_arguments_name_the_problem():
    model = _model()
    visual, text = _pairs(10)
    with pytest.raises(ValueError, match="same aligned pairs"):
        fit_decoder_on_latents(model, visual, text[:9], steps=1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size=16"):
        fit_decoder_on_latents(model, visual, text, steps=1, batch_size=16)
    with pytest.raises(ValueError, match="steps"):
        fit_decoder_on_latents(model, visual, text, steps=0, batch_size=4)
    with pytest.raises(ValueError, match="keys"):
        fit_decoder_on_latents(model, visual, text, torch.zeros(3), steps=1, batch_size=4)
    data = RetrievalInputs(
        torch.ones(4, 5, dtype=torch.long),
        torch.ones(4, 5, dtype=torch.bool),
        torch.tensor([0, 0, 1, 1]),
        video=torch.zeros(2, 2, 3, 32, 32),
        video_mask=torch.ones(2, 2, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="aligned pairs"):
        fit_decoder_on_dataset(model, data, ["a", "b", "c", "d"], steps=1, batch_size=2)
