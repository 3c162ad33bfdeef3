"""Objective helpers, the LR schedule, and the module's objectives on one batch."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from perceiver_vl.train.locked_text import build_locked_text
from perceiver_vl.train.module import PerceiverVLModule, lr_lambda
from perceiver_vl.train.objectives import (
    caption_similarity,
    contrastive_loss,
    matching_pairs,
    retrieval_candidates,
    text_keys,
)

from .conftest import TINY_MODEL


def test_matching_pairs_half_negative_never_self():
    g = torch.Generator().manual_seed(0)
    index, labels = matching_pairs(10, g)
    assert int((labels == 0).sum()) == 5
    neg = labels == 0
    assert bool((index[neg] != torch.arange(10)[neg]).all())
    assert bool((index[~neg] == torch.arange(10)[~neg]).all())


def test_matching_pairs_same_caption_is_a_match():
    g = torch.Generator().manual_seed(0)
    keys = text_keys(["a red ball"] * 6)
    _, labels = matching_pairs(6, g, keys=keys)
    assert bool((labels == 1).all())


def test_retrieval_candidates_random_and_hard():
    g = torch.Generator().manual_seed(0)
    keys = text_keys(["a", "b", "a", "c", "d", "e"])
    cand = retrieval_candidates(6, 3, g, keys=keys)
    assert cand.shape == (6, 4) and bool((cand[:, 0] == torch.arange(6)).all())
    assert 2 not in cand[0, 1:].tolist() and 0 not in cand[2, 1:].tolist()
    for row in range(6):
        assert row not in cand[row, 1:].tolist()
    scores = torch.arange(36, dtype=torch.float).view(6, 6)  # item 5 hardest, then 4, ...
    hard = retrieval_candidates(6, 2, g, scores=scores)
    assert hard[0, 1:].tolist() == [5, 4] and hard[5, 1:].tolist() == [4, 3]


def test_retrieval_candidates_mix_hard_and_random():
    g = torch.Generator().manual_seed(0)
    scores = torch.arange(10, dtype=torch.float).repeat(10, 1)  # item 9 hardest, then 8, ...
    mixed = retrieval_candidates(10, 4, g, scores=scores, hard_fraction=0.5)
    assert mixed.shape == (10, 5)
    for row in range(10):
        negatives = mixed[row, 1:].tolist()
        hardest = [i for i in (9, 8, 7, 6) if i != row][:2]
        assert negatives[:2] == hardest  # the first half: the hardest
        rest = negatives[2:]  # the rest: random, never the query, never a repeat of the hardest
        assert row not in rest and not set(rest) & set(hardest)
    # across rows the random half is not always the next-hardest pair
    assert any(mixed[r, 3:].tolist() != [i for i in (7, 6, 5, 4) if i != r][:2] for r in range(10))
    assert retrieval_candidates(10, 4, g, scores=scores, hard_fraction=0.0).shape == (10, 5)
    with pytest.raises(ValueError, match="hard_fraction"):
        retrieval_candidates(10, 4, g, scores=scores, hard_fraction=1.5)


def test_contrastive_loss_symmetric_and_duplicate_aware():
    v = torch.nn.functional.normalize(torch.eye(4), dim=1)
    scale = torch.tensor(math.log(10.0))
    loss, logits = contrastive_loss(v, v, scale)
    assert logits.shape == (4, 4)
    expected = torch.nn.functional.cross_entropy(10 * torch.eye(4), torch.arange(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # distinct keys: the plain loss; two equal captions: each of their videos is half a positive
    distinct, _ = contrastive_loss(v, v, scale, keys=torch.tensor([1, 2, 3, 4]))
    assert distinct.item() == pytest.approx(loss.item(), rel=1e-6)
    dup, logits = contrastive_loss(v, v, scale, keys=torch.tensor([1, 1, 2, 3]))
    logp = logits.log_softmax(dim=1)
    row0 = -(logp[0, 0] + logp[0, 1]) / 2  # text 0's targets: videos 0 and 1, half each
    rows = torch.stack([row0, row0, -logp[2, 2], -logp[3, 3]])
    assert dup.item() == pytest.approx(rows.mean().item(), rel=1e-5)  # symmetric logits


def test_lr_schedule_warmup_then_linear_decay():
    f = lr_lambda(4, 12, "linear", 0.0)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0
    assert lr_lambda(0, 10, "cosine", 0.1)(10) == pytest.approx(0.1)
    assert lr_lambda(2, 10, "constant", 0.0)(9) == 1.0


def _batch(n=4, frames=2):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, 8), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    mlm_ids = ids.clone()
    mlm_ids[:, 2] = 103
    return {
        "video": torch.rand(n, frames, 3, 32, 32, generator=g) * 2 - 1,
        "video_mask": torch.ones(n, frames, dtype=torch.bool),
        "text_ids": ids,
        "text_mask": torch.ones_like(ids, dtype=torch.bool),
        "mlm_ids": mlm_ids,
        "mlm_labels": labels,
        "text": [f"caption {i}" for i in range(n)],
    }


def _quiet_trainer(tmp_path, **options):
    """A CPU Lightning trainer without logger, checkpoints, progress bar or summary."""
    import lightning.pytorch as pl

    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **options,
    )


@pytest.mark.parametrize(
    ("objectives", "extra"),
    [
        (["matching", "mlm"], {}),
        (["contrastive", "retrieval"], {"retrieval_stream": "mixed", "hard_negatives": True}),
        (["retrieval"], {"retrieval_stream": "single", "retrieval_negatives": 2}),
        (["retrieval"], {"retrieval_stream": ["single", "mixed"], "retrieval_negatives": 2}),
        (
            ["retrieval", "contrastive"],
            {
                "retrieval_stream": ["single", "mixed"],
                "retrieval_negatives": "all",
                "single_stream_negatives": 2,
                "hard_negatives": True,
                "retrieval_directions": ["t2v"],
            },
        ),
        (["contrastive", "matching"], {"matching_negatives": "hard"}),
        (["matching", "mlm"], {"matching_text": "corrupted"}),
    ],
)
def test_module_objectives_give_finite_losses_and_gradients(objectives, extra):
    module = PerceiverVLModule(model=dict(TINY_MODEL), objectives=objectives, **extra)
    losses, stats = module.compute_losses(_batch(), 3, torch.Generator().manual_seed(0))
    assert set(losses) == set(objectives)
    if isinstance(extra.get("retrieval_stream"), list):  # one loss per stream, averaged
        single, mixed = stats["retrieval_single_loss"], stats["retrieval_mixed_loss"]
        assert losses["retrieval"].item() == pytest.approx(float(single + mixed) / 2, rel=1e-5)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_retrieval_stream_weights_make_a_weighted_mean_of_the_streams_losses():
    module = PerceiverVLModule(
        model=dict(TINY_MODEL),
        objectives=["retrieval"],
        retrieval_stream=["single", "mixed"],
        retrieval_negatives=2,
        retrieval_stream_weights={"single": 3.0},
    )
    assert module.options.objective.retrieval_stream_weights == {"single": 3.0, "mixed": 1.0}
    losses, stats = module.compute_losses(_batch(), 3, torch.Generator().manual_seed(0))
    single, mixed = stats["retrieval_single_loss"], stats["retrieval_mixed_loss"]
    assert float(single) != pytest.approx(float(mixed), rel=1e-3)  # the weights matter
    assert losses["retrieval"].item() == pytest.approx(float(3 * single + mixed) / 4, rel=1e-5)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"single": 2.0}, "does not train"),  # only the mixed stream trains
        ({"mixed": 0.0}, "finite number > 0"),
        ({"mixed": float("nan")}, "finite number > 0"),
        ({"mixed": True}, "finite number > 0"),
    ],
)
def test_retrieval_stream_weights_refuse_what_cannot_be_a_weight(weights, message):
    with pytest.raises(ValueError, match=message):
        PerceiverVLModule(
            model=dict(TINY_MODEL),
            objectives=["retrieval"],
            retrieval_stream="mixed",
            retrieval_stream_weights=weights,
        )


def test_in_batch_retrieval_is_cross_entropy_over_every_pair_of_the_batch():
    """retrieval_negatives='all': each query's mixed-stream logits against every item of the
    batch (the aligned-pair decoder call on each pair), same-caption items excluded."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    module = PerceiverVLModule(
        model=dict(TINY_MODEL, layerdrop=0.0),
        objectives=["retrieval"],
        retrieval_negatives="all",
    ).eval()
    batch = _batch(n=5)
    batch["text"] = ["a", "b", "c", "a", "d"]  # items 0 and 3 share a caption
    losses, stats = module.compute_losses(batch, None, torch.Generator().manual_seed(0))
    model = module.model
    with torch.no_grad():
        visual = model.encode(video=batch["video"], video_mask=batch["video_mask"])
        text = model.encode(text_ids=batch["text_ids"], text_mask=batch["text_mask"])
        t, v = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
        pairs = model.mixed_stream_logits(visual[v.reshape(-1)], text[t.reshape(-1)]).view(5, 5)
    pairs[0, 3] = pairs[3, 0] = float("-inf")
    target = torch.arange(5)
    expected = (F.cross_entropy(pairs, target) + F.cross_entropy(pairs.T, target)) / 2
    assert losses["retrieval"].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    losses["retrieval"].backward()
    assert model.decoder.cls_query.grad is not None
    hits = [(m.argmax(1) == target).float().mean() for m in (pairs, pairs.T)]
    assert float(stats["retrieval_acc"]) == pytest.approx(float(sum(hits) / 2))


def test_matching_pairs_hard_negatives_follow_the_scores():
    """With scores, a negative's visual partner is drawn by softmax(scores): a dominant score
    is always picked, items with the query's caption key never are."""
    scores = torch.full((6, 6), -50.0)
    for row in range(6):
        scores[row, (row + 2) % 6] = 50.0  # each text's hardest video
    keys = text_keys(["a", "b", "c", "d", "e", "a"])
    scores[0, 5] = 100.0  # same caption as text 0: must not be its negative
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        index, labels = matching_pairs(6, g, keys=keys, scores=scores, negative_fraction=1.0)
        assert labels.tolist() == [0] * 6
        assert index.tolist() == [(row + 2) % 6 for row in range(6)]


def test_caption_similarity_and_caption_negatives():
    """Word-set Jaccard: a caption one word away is closer than one three words away; matching
    negatives drawn by it pick the closest other caption, never the same caption."""
    texts = [
        "a red circle moves left",
        "a blue circle moves left",  # one word from 0
        "a blue square moves up",  # three words from 0
        "a red circle moves left",  # the same caption as 0
    ]
    sim = caption_similarity(texts)
    assert sim.shape == (4, 4) and torch.allclose(sim, sim.T)
    assert sim[0, 0] == 1 and sim[0, 3] == 1
    assert sim[0, 1] == pytest.approx(4 / 6) and sim[0, 2] == pytest.approx(2 / 8)
    module = PerceiverVLModule(
        model=dict(TINY_MODEL), objectives=["matching"], matching_negatives="caption"
    )
    batch = _batch(n=4)
    batch["text"] = texts
    scores = module.losses._matching_scores(batch, None, None, None, 0)
    assert torch.allclose(scores, sim / 0.1)
    picks = []
    for seed in range(20):
        index, labels = matching_pairs(
            4,
            torch.Generator().manual_seed(seed),
            keys=text_keys(texts),
            scores=scores,
            negative_fraction=1.0,
        )
        picks.append(int(index[0]))
        assert int(index[0]) != 3 and int(index[3]) != 0  # never the same caption
    assert picks.count(1) > picks.count(2)
    losses, _ = module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["matching"])


def test_hard_negatives_share_one_similarity_per_step():
    """Hard retrieval and hard matching negatives draw from the same multi-stream similarity,
    computed once per step from the step's latents (no extra encoding, no LayerDrop draw of its
    own)."""
    module = PerceiverVLModule(
        model=dict(TINY_MODEL),
        objectives=["contrastive", "retrieval", "matching"],
        retrieval_stream=["single", "mixed"],
        retrieval_negatives="all",
        single_stream_negatives=2,
        hard_negatives=True,
        matching_negatives="hard",
    )
    model = module.model
    calls = {"scores": 0, "encode": 0}
    scores, encode = model.multi_stream_scores, model.encode

    def count_scores(*args, **kwargs):
        calls["scores"] += 1
        return scores(*args, **kwargs)

    def count_encode(*args, **kwargs):
        calls["encode"] += 1
        assert kwargs.get("layerdrop_step") == 3
        return encode(*args, **kwargs)

    model.multi_stream_scores = count_scores  # type: ignore[method-assign]
    model.encode = count_encode  # type: ignore[method-assign]
    counter = model.layerdrop_counter
    losses, _ = module.compute_losses(_batch(), 3, torch.Generator().manual_seed(0))
    assert set(losses) == {"contrastive", "retrieval", "matching"}
    assert calls == {"scores": 1, "encode": 2}  # the contrastive encodings, reused
    assert model.layerdrop_counter == counter


def test_single_stream_scores_a_subset_of_queries():
    """single_stream_queries=q: the single stream scores q of the batch's captions (distinct,
    drawn by the step's generator) against their 1 + k candidates; the mixed stream keeps all."""
    module = PerceiverVLModule(
        model=dict(TINY_MODEL),
        objectives=["retrieval"],
        retrieval_stream=["single", "mixed"],
        retrieval_negatives="all",
        single_stream_negatives=3,
        single_stream_queries=2,
        retrieval_directions=["t2v"],
    )
    model = module.model
    seen = []
    pair_logits = model.single_stream_pair_logits

    def record(**kwargs):
        seen.append((kwargs["text_index"].clone(), kwargs["visual_index"].clone()))
        return pair_logits(**kwargs)

    model.single_stream_pair_logits = record  # type: ignore[method-assign]
    batch = _batch(n=6)
    draws = []
    for seed in range(4):
        losses, stats = module.compute_losses(batch, 0, torch.Generator().manual_seed(seed))
        assert torch.isfinite(losses["retrieval"])
        text_index, visual_index = seen[-1]
        assert text_index.shape == visual_index.shape == (2 * 4,)
        queries = text_index.view(2, 4)[:, 0]
        assert len(set(queries.tolist())) == 2
        assert torch.equal(visual_index.view(2, 4)[:, 0], queries)  # column 0: the positive
        assert (text_index.view(2, 4) == queries[:, None]).all()
        draws.append(tuple(queries.tolist()))
    assert len(set(draws)) > 1  # a new draw each step
    module.losses.objective.single_stream_queries = None  # every caption
    module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
    assert seen[-1][0].shape == (6 * 4,)
    with pytest.raises(ValueError, match="single_stream_queries"):
        PerceiverVLModule(model=dict(TINY_MODEL), single_stream_queries=0)


def test_retrieval_stream_is_checked():
    for bad in ("both", ["single", "single"], [], ["mixed", "multi"]):
        with pytest.raises(ValueError, match="retrieval_stream"):
            PerceiverVLModule(
                model=dict(TINY_MODEL), objectives=["retrieval"], retrieval_stream=bad
            )
    with pytest.raises(ValueError, match="single_stream_negatives"):
        PerceiverVLModule(
            model=dict(TINY_MODEL),
            objectives=["retrieval"],
            retrieval_stream=["single", "mixed"],
            retrieval_negatives="all",
        )
    with pytest.raises(ValueError, match="single_stream_negatives"):
        PerceiverVLModule(model=dict(TINY_MODEL), single_stream_negatives=0)
    for name, bad in (("matching_text", "noisy"), ("matching_negatives", "easy")):
        with pytest.raises(ValueError, match=name):
            PerceiverVLModule(model=dict(TINY_MODEL), **{name: bad})


def test_in_batch_retrieval_rejects_settings_it_cannot_honour():
    with pytest.raises(ValueError, match="retrieval_stream: mixed"):
        PerceiverVLModule(
            model=dict(TINY_MODEL),
            objectives=["retrieval"],
            retrieval_stream="single",
            retrieval_negatives="all",
        )
    with pytest.raises(ValueError, match="hard_negatives: false"):
        PerceiverVLModule(
            model=dict(TINY_MODEL),
            objectives=["retrieval"],
            retrieval_negatives="all",
            hard_negatives=True,
        )
    for bad in (0, "some", True):
        with pytest.raises(ValueError, match="retrieval_negatives"):
            PerceiverVLModule(
                model=dict(TINY_MODEL), objectives=["retrieval"], retrieval_negatives=bad
            )


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="objectives"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["nope"])
    with pytest.raises(ValueError, match="num_answers"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["qa"])


def test_qa_objective_soft_scores():
    model = dict(TINY_MODEL, num_answers=5, qa_loss="bce")
    module = PerceiverVLModule(model=model, objectives=["qa"])
    batch = _batch()
    batch["answer_scores"] = torch.zeros(4, 5)
    batch["answer_scores"][:, 1] = 1.0
    losses, stats = module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["qa"]) and "vqa_score" in stats


def test_freezing_drops_gradients_outside_cross_attention():
    module = PerceiverVLModule(
        model=dict(TINY_MODEL), trainable="cross_attention", unfreeze_at_step=None
    )
    losses, _ = module.compute_losses(_batch(), 0, torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    module.on_before_optimizer_step(None)
    names = [n for n, p in module.named_parameters() if p.grad is not None]
    assert names and all(n.startswith("model.encoder.cross_attention_blocks") for n in names)


def test_two_stage_switch_trains_cross_attention_first_then_everything(tmp_path):
    import lightning.pytorch as pl

    module = PerceiverVLModule(
        model=dict(TINY_MODEL, layerdrop=0.0), two_stage=2, lr=1e-2, warmup=0
    )
    assert (module.freeze_mode, module.unfreeze_step) == ("cross_attention", 2)
    snapshots = []

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snapshots.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    loader = torch.utils.data.DataLoader([_batch()] * 4, batch_size=None)
    trainer = _quiet_trainer(tmp_path, max_steps=4, callbacks=[Snap()])
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer.fit(module, loader)

    def changed(before, after, prefix):
        names = [n for n in before if n.startswith(prefix)]
        return any(not torch.equal(before[n], after[n]) for n in names)

    cross, other = "model.encoder.cross_attention_blocks", "model.encoder.self_attention_blocks"
    # steps 1 and 2: the cross-attention blocks alone
    assert changed(start, snapshots[1], cross)
    assert not changed(start, snapshots[1], other)
    assert not changed(start, snapshots[1], "model.matching_head")
    # steps 3 and 4: everything
    assert changed(snapshots[1], snapshots[3], other)
    assert changed(snapshots[1], snapshots[3], "model.matching_head")


def test_two_stage_switch_rejects_a_second_freezing_setting():
    with pytest.raises(ValueError, match="two_stage"):
        PerceiverVLModule(model=dict(TINY_MODEL), two_stage=100, trainable="heads")
    with pytest.raises(ValueError, match="step count"):
        PerceiverVLModule(model=dict(TINY_MODEL), two_stage=0)


@pytest.mark.parametrize("features", ["ngram", "model"])
def test_locked_text_steps_train_the_visual_side_against_fixed_text_features(monkeypatch, features):
    def grads(module):
        losses, _ = module.compute_losses(_batch(), 0, torch.Generator().manual_seed(0))
        assert set(losses) == {"contrastive"} and torch.isfinite(losses["contrastive"])
        losses["contrastive"].backward()
        return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.any()}

    options = dict(
        model=dict(TINY_MODEL),
        objectives=["contrastive"],
        locked_text_steps=3,
        locked_text_features=features,
        seed=1,
    )
    module = PerceiverVLModule(**options)
    locked = grads(module)
    assert "model.contrastive_head.visual_proj.weight" in locked
    assert "model.contrastive_head.text_proj.weight" not in locked
    assert "model.text_embed.word_embeddings.weight" not in locked
    # the fixed features are neither parameters (optimised) nor saved, and every rank builds
    # the same ones from the seed
    assert not any("locked" in k for k in module.state_dict())
    assert len(list(module.parameters())) == len(list(module.model.parameters()))
    other = PerceiverVLModule(**options)
    ids, mask = _batch()["text_ids"], _batch()["text_mask"]
    target = module.losses._locked_text_embedding(ids, mask)
    assert torch.equal(target, other.losses._locked_text_embedding(ids, mask))
    # the targets of that kind (tests/train/test_locked_text.py checks what they are)
    expected = build_locked_text(features, module.model.config, seed=1)(ids, mask)
    assert torch.allclose(target, expected)
    # after the locked steps the live text side learns again
    monkeypatch.setattr(PerceiverVLModule, "global_step", property(lambda self: 3))
    module.zero_grad()
    assert "model.contrastive_head.text_proj.weight" in grads(module)


def test_locked_text_anchor_keeps_the_fixed_targets_as_an_extra_visual_loss(monkeypatch):
    batch = _batch()
    ids, mask = batch["text_ids"], batch["text_mask"]

    def losses_and_grads(module, name):
        module.zero_grad()
        losses, _ = module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
        if name in losses:
            losses[name].backward()
        return losses, {
            n for n, p in module.named_parameters() if p.grad is not None and p.grad.any()
        }

    module = PerceiverVLModule(
        model=dict(TINY_MODEL), objectives=["contrastive"], locked_text_anchor=0.5, seed=2
    )
    assert module.loss_weights["locked_text"] == 0.5
    module.eval()  # no dropout: the recomputation below must match exactly
    losses, grads = losses_and_grads(module, "locked_text")
    assert set(losses) == {"contrastive", "locked_text"}
    # the visual embeddings against the seeded fixed features, with the contrastive temperature
    model = module.model
    with torch.no_grad():
        visual = model.embed(
            model.encode(video=batch["video"], video_mask=batch["video_mask"]), "visual"
        )
        targets = build_locked_text("ngram", model.config, seed=2)(ids, mask)
        keys = text_keys(batch["text"], ids.device)
        expected, _ = contrastive_loss(
            visual, targets, model.contrastive_head.logit_scale, keys=keys
        )
    assert torch.allclose(losses["locked_text"].detach(), expected, atol=1e-5)
    # it trains the visual side only
    assert "model.contrastive_head.visual_proj.weight" in grads
    assert "model.contrastive_head.text_proj.weight" not in grads
    assert "model.text_embed.word_embeddings.weight" not in grads
    # the live contrastive loss still trains the text side
    assert "model.contrastive_head.text_proj.weight" in losses_and_grads(module, "contrastive")[1]

    # not during a locked phase (the contrastive loss is already against the fixed features)
    locked = PerceiverVLModule(
        model=dict(TINY_MODEL),
        objectives=["contrastive"],
        locked_text_steps=3,
        locked_text_anchor=0.5,
    )
    assert set(losses_and_grads(locked, "contrastive")[0]) == {"contrastive"}
    monkeypatch.setattr(PerceiverVLModule, "global_step", property(lambda self: 3))
    assert set(losses_and_grads(locked, "contrastive")[0]) == {"contrastive", "locked_text"}
    # off by default; an explicit loss weight wins
    plain = PerceiverVLModule(model=dict(TINY_MODEL), objectives=["contrastive"])
    assert set(losses_and_grads(plain, "contrastive")[0]) == {"contrastive"}
    weighted = PerceiverVLModule(
        model=dict(TINY_MODEL),
        objectives=["contrastive"],
        locked_text_anchor=0.5,
        loss_weights={"locked_text": 2.0},
    )
    assert weighted.loss_weights["locked_text"] == 2.0


def test_locked_text_anchor_is_checked():
    with pytest.raises(ValueError, match="locked_text_anchor"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["contrastive"], locked_text_anchor=-1)
    with pytest.raises(ValueError, match="locked_text_anchor"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["matching"], locked_text_anchor=0.5)


def test_locked_text_features_must_be_known():
    with pytest.raises(ValueError, match="locked_text_features"):
        PerceiverVLModule(
            model=dict(TINY_MODEL),
            objectives=["contrastive"],
            locked_text_steps=2,
            locked_text_features="bert",
        )


def test_locked_text_steps_need_the_contrastive_objective():
    with pytest.raises(ValueError, match="locked_text_steps"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["matching"], locked_text_steps=5)
    with pytest.raises(ValueError, match="locked_text_steps"):
        PerceiverVLModule(model=dict(TINY_MODEL), objectives=["contrastive"], locked_text_steps=-1)


@pytest.mark.parametrize(
    ("choice", "kernel_in_training"),
    [("auto", "explicit"), ("explicit", "explicit"), ("math", "math"), ("default", "sdpa")],
)
def test_training_attention_picks_the_kernel_of_training_steps(
    tmp_path, choice, kernel_in_training
):
    from perceiver_vl.model import attention

    module = PerceiverVLModule(
        model=dict(TINY_MODEL), objectives=["contrastive"], training_attention=choice
    )
    seen = []
    compute = module.compute_losses

    def recording(*args, **kwargs):
        if attention._EXPLICIT:  # the explicit kernel's switch
            seen.append("explicit")
        else:  # the global SDPA kernel flags
            seen.append("sdpa" if torch.backends.cuda.flash_sdp_enabled() else "math")
        return compute(*args, **kwargs)

    module.compute_losses = recording
    loader = torch.utils.data.DataLoader([_batch()] * 2, batch_size=None)
    trainer = _quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    # training steps (on this CPU) under the chosen kernel, validation under PyTorch's choice,
    # and the switches restored afterwards
    assert len(seen) >= 3 and seen[:2] == [kernel_in_training] * 2
    assert all(k == "sdpa" for k in seen[2:])
    assert torch.backends.cuda.flash_sdp_enabled() and not attention._EXPLICIT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_attention_kernels_compute_the_same_losses(dtype):
    from perceiver_vl.model.attention import explicit_attention

    module = PerceiverVLModule(
        model=dict(TINY_MODEL), objectives=["contrastive", "matching", "mlm"]
    ).eval()
    batch = _batch()
    batch["text_mask"][0, -2:] = False  # padded keys: the kernels must mask them alike

    def losses_and_kernels(context):
        with (
            context,
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16),
            torch.profiler.profile() as profiler,
        ):
            out, _ = module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
        kernels = {e.key for e in profiler.key_averages() if "_scaled_dot_product" in e.key}
        return {k: v.float().item() for k, v in out.items()}, kernels

    default, default_kernels = losses_and_kernels(contextlib.nullcontext())
    math_kernel, math_kernels = losses_and_kernels(
        torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH])
    )
    explicit, explicit_kernels = losses_and_kernels(explicit_attention())
    # three different kernels ran (PyTorch picks flash on the CPU; the explicit one is no SDPA
    # call), to the same losses (bf16 rounds the scores between the explicit products)
    assert default_kernels == {"aten::_scaled_dot_product_flash_attention_for_cpu"}
    assert math_kernels == {"aten::_scaled_dot_product_attention_math"}
    assert explicit_kernels == set()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for other in (math_kernel, explicit):
        assert default.keys() == other.keys()
        assert all(math.isclose(default[k], other[k], rel_tol=tol) for k in default), (
            default,
            other,
        )
    with pytest.raises(ValueError, match="training_attention"):
        PerceiverVLModule(model=dict(TINY_MODEL), training_attention="flash")
