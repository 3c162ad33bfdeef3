"""Vision-text matching learns: a tiny model, trained through the module's own objective code
for a few hundred steps on a separable task, must score matching well above chance.

The task: an image of one of eight uniform colours (plus noise) and a one-word caption naming
a colour; half of the pairs get another sample's image. Nothing but the colour tells a match
from a mismatch, so a model whose matching is stuck at chance (loss ln 2), as it was with a
fixed 0.02 weight initialisation at this width, fails here.
"""

from __future__ import annotations

import pytest
import torch

from perceiver_vl.model import preset_fields
from perceiver_vl.train.module import PerceiverVLModule

COLOURS = torch.tensor(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]],
    dtype=torch.float,
)
WORD_BASE = 2000  # caption ids: [CLS] colour-word [SEP]
MASK_ID = 103


def colour_batch(generator: torch.Generator, size: int = 64) -> dict:
    colour = torch.randint(0, len(COLOURS), (size,), generator=generator)
    images = (COLOURS[colour] * 2 - 1)[:, :, None, None].expand(size, 3, 32, 32)
    images = images + 0.3 * torch.randn(size, 3, 32, 32, generator=generator)
    ids = torch.stack([torch.tensor([101, WORD_BASE + int(c), 102]) for c in colour])
    # masked LM on the colour word, so the clean-text matching pass really differs from the
    # corrupted one
    mlm_ids = ids.clone()
    mlm_ids[:, 1] = MASK_ID
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[:, 1] = ids[:, 1]
    return {
        "images": images,
        "text_ids": ids,
        "text_mask": torch.ones_like(ids, dtype=torch.bool),
        "mlm_ids": mlm_ids,
        "mlm_labels": mlm_labels,
        "colour": colour,
    }


def tiny_module(residual: str, seed: int = 0, **module_args) -> PerceiverVLModule:
    torch.manual_seed(seed)  # the initialisation, independent of what ran before
    model = preset_fields(
        "tiny",
        num_self_attention_layers=2,
        cross_attention_before_layers=(0,),
        patch_size=16,
        max_frames=1,
        max_text_length=8,
        vocab_size=2100,
        dropout=0.0,
        layerdrop=0.0,
        cross_attention_residual=residual,
    )
    return PerceiverVLModule(model=model, seed=0, **module_args)


def train_matching(module: PerceiverVLModule, steps: int) -> float:
    """Train with the module's own losses; return matching accuracy on held-out balanced pairs."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    data = torch.Generator().manual_seed(1)
    module.train()
    for step in range(steps):
        losses, _ = module.compute_losses(
            colour_batch(data), step, torch.Generator().manual_seed(step)
        )
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    module.eval()
    held_out = colour_batch(torch.Generator().manual_seed(12345), size=256)
    colour = held_out["colour"]
    other = (colour + torch.randint(1, 8, colour.shape, generator=data)) % 8
    text_ids = torch.cat([held_out["text_ids"], held_out["text_ids"]])
    images = torch.cat(
        [held_out["images"], (COLOURS[other] * 2 - 1)[:, :, None, None].expand(-1, 3, 32, 32)]
    )
    labels = torch.cat([torch.ones(256), torch.zeros(256)])
    with torch.no_grad():
        logits = module.model(images=images, text_ids=text_ids).matching_logits
    return float(((logits > 0).float() == labels).float().mean())


@pytest.mark.parametrize("objectives", [["matching"], ["matching", "mlm"]])
@pytest.mark.parametrize("residual", ["standard", "normalized"])
def test_matching_learns_a_separable_task(residual, objectives):
    """Both residual forms, with matching alone (with the previous fixed 0.02 initialisation
    this stayed at 0.5-0.7 for both forms) and with masked LM beside it."""
    module = tiny_module(residual, objectives=objectives)
    accuracy = train_matching(module, steps=250)
    assert accuracy >= 0.9, (
        f"matching accuracy {accuracy:.3f} with the {residual} residual, objectives {objectives}"
    )


def test_matching_is_scored_on_clean_text_by_default():
    """Released semantics: matching sees the uncorrupted caption, masked LM the corrupted one.
    Both run as one forward over 2B pairs (every video embedded once): rows 0..B-1 pair the
    clean captions with the matching pass's videos and carry the matching labels, rows B..2B-1
    pair each corrupted caption with its own video and carry the masked-LM labels.
    ``matching_text: corrupted`` scores matching on the corrupted text in B rows instead."""
    batch = colour_batch(torch.Generator().manual_seed(0), size=8)
    size = batch["text_ids"].shape[0]
    seen: list[dict] = []
    for matching_text in ("clean", "corrupted"):
        module = tiny_module(
            "normalized", objectives=["matching", "mlm"], matching_text=matching_text
        )
        original = module.model.forward

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(*args, **kwargs)

        module.model.forward = spy  # type: ignore[method-assign]
        seen.clear()
        losses, stats = module.compute_losses(batch, 0, torch.Generator().manual_seed(0))
        assert set(losses) == {"matching", "mlm"} and "matching_acc" in stats
        assert len(seen) == 1
        call = seen[0]
        if matching_text == "clean":
            texts = call["text_ids"][call["text_index"]]
            assert torch.equal(texts[:size], batch["text_ids"])  # matching: clean text
            assert torch.equal(texts[size:], batch["mlm_ids"])  # masked LM: the corrupted copy
            assert torch.equal(call["visual_index"][size:], torch.arange(size))  # own videos
            labels = call["matching_labels"]
            assert ((labels[:size] == 0) | (labels[:size] == 1)).all()
            assert (labels[size:] == -100).all() and (labels[:size] == 0).any()
            mlm = call["mlm_labels"][call["text_index"]]
            assert (mlm[:size] == -100).all()
            assert torch.equal(mlm[size:], batch["mlm_labels"])
        else:
            assert "text_index" not in call
            assert torch.equal(call["text_ids"], batch["mlm_ids"])
