"""Bad inputs at the model's public boundary: non-finite pixels, odd masks and labels, tensors
without data, and config fields of the wrong type. Each case asserts the error and its phrase."""

from __future__ import annotations

import json

import pytest
import torch

from perceiver_vl import PerceiverVL, PerceiverVLConfig
from perceiver_vl.model.weights import all_finite

from .conftest import SMALL, inputs


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_video_pixels_are_refused_naming_the_tensor(small_model, value):
    video, _ = inputs()
    video[0, 1, 0, 3, 3] = value
    with pytest.raises(ValueError, match=r"video holds 1 non-finite values"):
        small_model.encode(video=video)


def test_non_finite_image_pixels_are_refused(small_model):
    images = torch.zeros(2, 3, 32, 32)
    images[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"images holds 1024 non-finite"):
        small_model.encode(images=images)


def test_finite_values_whose_sum_overflows_are_accepted_and_opposite_infinities_refused(
    small_model,
):
    # the check sums first: a sum that overflows to inf must not be taken for an inf pixel,
    # and +inf with -inf (a NaN sum) must still be counted value by value
    video, _ = inputs()
    huge = video.clone()
    huge[0, 0, 0, :2, :2] = 3e38
    assert torch.isinf(huge.sum())
    small_model.encode(video=huge)
    half = torch.ones(70_000, dtype=torch.float16)  # their fp16 sum would overflow to inf
    assert torch.isinf(half.sum()) and all_finite(half)
    half[7] = float("nan")
    assert not all_finite(half)
    video[0, 0, 0, 0, 0], video[1, 0, 0, 0, 0] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"video holds 2 non-finite values"):
        small_model.encode(video=video)


def test_the_finite_check_can_be_switched_off_for_trusted_batches(small_model):
    video, _ = inputs()
    video[0, 0, 0, 0, 0] = float("nan")
    small_model.check_finite = False
    latents = small_model.encode(video=video)
    assert torch.isnan(latents[0]).any() and torch.isfinite(latents[1]).all()


def test_nan_in_a_masked_padding_frame_never_reaches_the_output(small_model):
    video, _ = inputs()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    clean = small_model.encode(
        video=video.masked_fill(~mask[:, :, None, None, None], 0.0), video_mask=mask
    )
    video[0, 2] = float("nan")
    got = small_model.encode(video=video, video_mask=mask)
    assert torch.isfinite(got).all() and torch.equal(got, clean)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("video_mask", 0.5),
        ("video_mask", 2),
        ("video_mask", -1),
        ("text_mask", 0.5),
        ("text_mask", 2),
    ],
)
def test_masks_other_than_bool_or_0_1_are_refused(small_model, argument, value):
    video, ids = inputs()
    mask = {"video_mask": torch.ones(2, 3), "text_mask": torch.ones(2, 6)}[argument]
    mask[0, 0] = value
    kwargs = {"video": video, "text_ids": ids, argument: mask}
    with pytest.raises(ValueError, match=rf"{argument} must be bool .* only 0 and 1"):
        small_model(**kwargs)


def test_0_1_integer_masks_equal_bool_masks(small_model):
    video, ids = inputs()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    as_int = small_model.encode(video=video, video_mask=mask)
    as_bool = small_model.encode(video=video, video_mask=mask.bool())
    assert torch.equal(as_int, as_bool)


@pytest.mark.parametrize("argument", ["video", "text_ids"])
def test_meta_device_inputs_are_refused(small_model, argument):
    video, ids = inputs()
    kwargs = {"video": video, "text_ids": ids}
    kwargs[argument] = kwargs[argument].to("meta")
    with pytest.raises(ValueError, match=rf"{argument} is on the 'meta' device"):
        small_model(**kwargs)


@pytest.mark.parametrize("bad", [30522, 10**6, -5])
def test_mlm_labels_out_of_the_vocabulary_are_refused(small_model, bad):
    video, ids = inputs()
    labels = torch.full_like(ids, -100)
    labels[0, 2] = bad
    with pytest.raises(ValueError, match=r"mlm_labels must be integer token ids in \[0, vocab"):
        small_model(video=video, text_ids=ids, mlm_labels=labels)


def test_float_mlm_labels_are_refused(small_model):
    video, ids = inputs()
    with pytest.raises(ValueError, match="mlm_labels must be integer token ids"):
        small_model(video=video, text_ids=ids, mlm_labels=ids.float())


@pytest.mark.parametrize("bad", [2, -3, 0.5])
def test_matching_labels_other_than_0_or_1_are_refused(small_model, bad):
    video, ids = inputs()
    with pytest.raises(ValueError, match="matching_labels must hold only 1"):
        small_model(video=video, text_ids=ids, matching_labels=torch.tensor([1.0, bad]))


def test_text_ids_beyond_the_vocabulary_are_refused(small_model):
    video, ids = inputs()
    ids[0, 0] = 40000
    with pytest.raises(ValueError, match=r"text_ids values must lie in \[0, vocab_size"):
        small_model(video=video, text_ids=ids)


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("num_heads", "2", "num_heads must be an integer, got '2' .*without quotes"),
        ("hidden_size", 32.0, "hidden_size must be an integer, got 32.0"),
        ("num_latents", True, "num_latents must be an integer, got True"),
        ("dropout", "0.1", "dropout must be a number, got '0.1'"),
        ("layerdrop", None, "layerdrop must be a number, got None"),
        ("frame_difference", "false", "frame_difference must be true or false"),
        ("modality_embedding", 1, "modality_embedding must be true or false"),
        ("cross_attention_before_layers", "01", "cross_attention_before_layers must be a list"),
        ("cross_attention_before_layers", [0.9], "cross_attention_before_layers must be a list"),
        ("cross_attention_before_layers", [True], "cross_attention_before_layers must be a list"),
        ("inference_cross_attention_blocks", ["0"], "inference_cross_attention_blocks must be"),
        ("cross_attention_residual", "pre-ln", "cross_attention_residual must be one of"),
        ("initializer_range", "0.02", "initializer_range must be a number or None"),
    ],
)
def test_config_fields_of_the_wrong_type_are_errors_naming_the_field(field, value, phrase):
    with pytest.raises(ValueError, match=rf"PerceiverVLConfig\.{phrase}"):
        PerceiverVLConfig(**{**SMALL, field: value})


def test_config_json_with_a_string_number_names_the_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({**SMALL, "cross_attention_before_layers": [0, 1], "num_latents": "4"})
    )
    with pytest.raises(ValueError, match=r"num_latents must be an integer, got '4'"):
        PerceiverVLConfig.from_json_file(path)


def test_config_with_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match=r"unknown PerceiverVLConfig fields \['num_head'\]"):
        PerceiverVLConfig.from_dict({**SMALL, "num_head": 2})


def test_a_model_from_a_valid_config_still_runs(small_model):
    video, ids = inputs()
    out = small_model(video=video, text_ids=ids, matching_labels=torch.tensor([1, 0]))
    assert torch.isfinite(out.loss) and isinstance(small_model, PerceiverVL)


@pytest.mark.parametrize("blocks", ["01", [0.9], [True], 1])
def test_cross_attention_layers_are_never_coerced(small_model, blocks):
    video, _ = inputs()
    with pytest.raises(ValueError, match="cross_attention_layers must be a list of integer"):
        small_model.encode(video=video, cross_attention_layers=blocks)
