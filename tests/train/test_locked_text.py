"""The locked phase's fixed text features (perceiver_vl.train.locked_text)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceiver_vl.data import Tokenizer
from perceiver_vl.model import PerceiverVL, PerceiverVLConfig
from perceiver_vl.train.locked_text import (
    ModelCopyText,
    RandomNGramText,
    build_locked_text,
    centre_and_normalise,
)

CAPTIONS = [
    "a small red circle moves left then up",
    "a small red circle moves up then left",  # the same words in another order
    "a small red square moves left then up",  # one word changed
    "a large blue cross moves down then right",
]


def _ids():
    return Tokenizer.default(max_length=16)(CAPTIONS)


def _cos(features):
    features = F.normalize(features, dim=-1)
    return features @ features.T


def test_ngram_features_tell_word_order_apart():
    ids, mask = _ids()
    cos = _cos(RandomNGramText(30522, 64, seed=0).raw(ids, mask))
    # a swap changes three bigram terms ("moves left", "left then", "then up"), a substitution
    # a unigram and two bigrams: both move the caption about as far
    assert cos[0, 1] < 0.9 and cos[0, 2] < 0.9
    assert cos[0, 3] < min(cos[0, 1], cos[0, 2])


def test_a_fresh_model_copy_is_nearly_a_bag_of_words():
    # why the n-gram features exist: at initialisation the model's text embedding barely
    # changes when two words swap places (and all captions look alike before centring)
    torch.manual_seed(0)
    model = PerceiverVL(PerceiverVLConfig(hidden_size=64, num_heads=2, contrastive_dim=64)).eval()
    ids, mask = _ids()
    with torch.no_grad():
        cos = _cos(model.embed(model.encode(text_ids=ids, text_mask=mask), "text"))
    assert cos[0, 1] > 0.99
    assert cos.min() > 0.9


def test_model_copy_targets_are_a_seeded_fresh_copy_centred_on_the_batch():
    config = PerceiverVLConfig(hidden_size=32, num_heads=2, num_latents=8, contrastive_dim=16)
    ids, mask = _ids()
    targets = ModelCopyText(config, seed=5)(ids, mask)
    torch.manual_seed(5)
    fresh = PerceiverVL(config).eval()
    with torch.no_grad():
        embedding = fresh.embed(fresh.encode(text_ids=ids, text_mask=mask), "text")
    assert torch.allclose(targets, centre_and_normalise(embedding), atol=1e-5)
    # building the copy leaves the global random stream alone
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ModelCopyText(config, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_build_locked_text_picks_the_kind():
    config = PerceiverVLConfig(hidden_size=32, num_heads=2, num_latents=8, contrastive_dim=16)
    assert isinstance(build_locked_text("ngram", config), RandomNGramText)
    assert build_locked_text("ngram", config).dim == 16
    assert isinstance(build_locked_text("model", config), ModelCopyText)
    with pytest.raises(ValueError, match="locked_text_features"):
        build_locked_text("bert", config)


def test_ngram_features_are_seeded_and_ignore_padding():
    ids, mask = _ids()
    a = RandomNGramText(30522, 32, seed=3)
    assert torch.equal(a.raw(ids, mask), RandomNGramText(30522, 32, seed=3).raw(ids, mask))
    assert not torch.allclose(a.raw(ids, mask), RandomNGramText(30522, 32, seed=4).raw(ids, mask))
    # changing a padded position (mask 0) changes nothing
    padded = ids.clone()
    position = int(mask[0].sum())
    assert position < ids.shape[1]
    padded[0, position] = 1000
    assert torch.allclose(a.raw(padded, mask), a.raw(ids, mask))
    assert not torch.allclose(a.raw(padded, None)[0], a.raw(ids, None)[0])


def test_centring_removes_the_batch_mean():
    features = torch.randn(5, 8) + 10.0  # a large shared component
    out = centre_and_normalise(features)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    centred = features - features.mean(0)
    assert torch.allclose(out, F.normalize(centred, dim=-1))
    assert _cos(features).min() > 0.9 and _cos(out).min() < 0.5


def test_ngram_features_check_their_input():
    features = RandomNGramText(100, 8)
    with pytest.raises(ValueError, match="vocab_size"):
        features(torch.tensor([[5, 100]]))
    with pytest.raises(ValueError, match="batch, length"):
        features(torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="positive"):
        RandomNGramText(0, 8)
