from __future__ import annotations

import pytest
import torch

from perceiver_vl.bench import JointTransformer
from perceiver_vl.model.attention import SelfAttentionBlock
from perceiver_vl.model.heads import MatchingHead

from .conftest import tiny_bench_config


def _inputs(batch=2, frames=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, frames, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.randint(1, 100, (batch, length), generator=g)
    return video, ids


@pytest.fixture
def joint() -> JointTransformer:
    torch.manual_seed(0)
    return JointTransformer(tiny_bench_config()).eval()


def test_shares_the_model_classes_and_depth(joint):
    assert len(joint.blocks) == 4
    assert all(isinstance(b, SelfAttentionBlock) for b in joint.blocks)
    assert isinstance(joint.matching_head, MatchingHead)
    assert len(JointTransformer(tiny_bench_config(), num_layers=2).blocks) == 2


def test_forward_shapes_and_logits_need_both_modalities(joint):
    video, ids = _inputs()
    out = joint(video=video, text_ids=ids)
    assert out.matching_logits.shape == (2,)
    # 6 text tokens + 3 frames x (1 + 4 x 4) tokens
    assert out.states.shape == (2, 6 + 3 * 17, 32)
    assert joint(video=video).matching_logits is None
    assert joint(text_ids=ids).matching_logits is None
    assert joint(images=video[:, 0], text_ids=ids).matching_logits.shape == (2,)


def test_padded_frames_and_tokens_are_ignored(joint):
    video, ids = _inputs()
    video_mask = torch.tensor([[True, True, False], [True, True, True]])
    text_mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    with torch.no_grad():
        ref = joint(video=video, video_mask=video_mask, text_ids=ids, text_mask=text_mask)
        video2, ids2 = video.clone(), ids.clone()
        video2[0, 2] = 0.5
        ids2[0, 4:] = 7
        out = joint(video=video2, video_mask=video_mask, text_ids=ids2, text_mask=text_mask)
        full = joint(video=video, text_ids=ids, text_mask=torch.ones(2, 6, dtype=torch.bool))
        nomask = joint(video=video, text_ids=ids)
    torch.testing.assert_close(out.matching_logits, ref.matching_logits)
    # an all-True mask is the same as no mask
    torch.testing.assert_close(full.matching_logits, nomask.matching_logits)


def test_batch_items_are_independent(joint):
    video, ids = _inputs()
    with torch.no_grad():
        both = joint(video=video, text_ids=ids).matching_logits
        one = joint(video=video[1:], text_ids=ids[1:]).matching_logits
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "no input"),
        ({"video": torch.zeros(1, 3, 32, 32)}, "video must be"),
        ({"images": torch.zeros(1, 1, 3, 32, 32)}, "images must be"),
        ({"text_ids": torch.zeros(6, dtype=torch.long)}, "text_ids must be"),
        ({"images": torch.zeros(1, 3, 32, 32), "text_mask": torch.ones(1, 6)}, "text_mask was"),
        ({"images": torch.zeros(1, 3, 32, 32), "video_mask": torch.ones(1, 1)}, "video_mask"),
    ],
)
def test_errors_name_the_argument(joint, kwargs, message):
    with pytest.raises(ValueError, match=message):
        joint(**kwargs)


def test_runs_on_the_meta_device():
    with torch.device("meta"):
        model = JointTransformer(tiny_bench_config())
    out = model(
        video=torch.empty(1, 2, 3, 32, 32, device="meta"),
        text_ids=torch.empty(1, 6, dtype=torch.long, device="meta"),
    )
    assert out.matching_logits.shape == (1,) and out.matching_logits.device.type == "meta"
