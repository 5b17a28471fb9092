"""The shape prior (`core.mask_prior`) and where the review's score uses it (`review.image_score`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ielstudio.core.cleaning import CleanConfig, label_quality
from ielstudio.core.boundary_fit import outline_fit_dice
from ielstudio.core.mask_prior import SMOOTHING_SIGMA, outline_length, outline_smoothness
from ielstudio.core.review import (RELIABLE_AGREEMENT, SHAPE_PRIOR_BELOW, SHAPE_PRIOR_POWER, assess_reliability,
                                   image_score, with_object_changes)


def disk(size=64, r=14, centre=(32, 32)) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, centre, r, 1, -1)
    return m


def ragged(mask: np.ndarray) -> np.ndarray:
    """Every other row of the outline pushed out by a pixel: a zig-zag border."""
    out = mask.copy()
    ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)) > mask
    ring[1::2] = False
    out[ring] = 1
    return out


def test_outline_length_of_a_square_runs_through_the_pixel_centres():
    sq = np.zeros((20, 20), np.uint8)
    sq[5:15, 5:15] = 1  # 10 x 10 px: the contour joins the centres of the border pixels, 4 x 9 px
    assert outline_length(sq) == pytest.approx(36.0)
    two = sq.copy()
    two[17:19, 17:19] = 1  # a second object adds its own 4 x 1 px
    assert outline_length(two) == pytest.approx(40.0)


def test_a_smooth_disk_scores_near_one_and_the_same_disk_with_a_ragged_outline_lower():
    clean = outline_smoothness(disk())
    assert clean > 0.95
    assert outline_smoothness(ragged(disk())) < clean - 0.1
    # shifted, the same shape scores the same: the prior is blind to where the outline is
    assert outline_smoothness(disk(centre=(29, 35))) == pytest.approx(clean, abs=1e-6)


def test_specks_lower_the_score_and_lone_pixels_score_zero():
    m = disk()
    specked = m.copy()
    for y, x in [(4, 4), (4, 60), (60, 4), (60, 60), (8, 30)]:
        specked[y:y + 2, x:x + 2] = 1  # 2 x 2 px specks: smoothing at sigma 2 erases them
    assert SMOOTHING_SIGMA == 2.0
    assert outline_smoothness(specked) < outline_smoothness(m) - 0.05
    lone = np.zeros((16, 16), np.uint8)
    lone[3, 3] = lone[10, 12] = 1
    assert outline_smoothness(lone) == 0.0
    assert outline_smoothness(np.zeros((16, 16), np.uint8)) == 1.0  # nothing labelled: nothing to doubt


def test_the_prior_takes_the_foreground_as_one_and_needs_a_2d_mask():
    m = disk().astype(np.int64)
    two = np.where(m == 1, np.where(np.arange(64)[None] < 32, 1, 2), 0)  # the disk split into two classes
    assert outline_smoothness(two) == pytest.approx(outline_smoothness(m))
    with pytest.raises(ValueError, match="2-D"):
        outline_smoothness(np.zeros((2, 8, 8), np.uint8))


def probs_of(mask: np.ndarray, p: float) -> np.ndarray:
    fg = np.where(mask != 0, p, 1 - p).astype(np.float32)
    return np.stack([1 - fg, fg])


def test_image_score_adds_the_prior_only_where_no_class_is_reliable():
    truth = disk()
    given = ragged(truth).astype(np.int64)
    probs = probs_of(truth, 0.9)  # a model that finds the smooth disk
    good = assess_reliability([(probs, truth.astype(np.int64))], 2, None, out_of_sample=True)
    bad = assess_reliability([(probs_of(np.zeros_like(truth), 0.9), truth.astype(np.int64))], 2, None, True)
    assert good.any_reliable and not bad.any_reliable
    plain = label_quality(probs, given)[0]
    image = np.where(truth != 0, 120.0, 60.0)[None]
    assert image_score(probs, given, None, good, image) == (plain, plain, None, None)
    score, model, smoothness, fit = image_score(probs, given, None, bad, image)
    assert model == plain
    assert smoothness == pytest.approx(outline_smoothness(given))
    assert fit == pytest.approx(outline_fit_dice(image, given)) and fit < 1.0  # the ragged outline is off the edge
    assert SHAPE_PRIOR_POWER == 2 and score == pytest.approx(plain * smoothness ** 2 * fit)
    assert score < plain
    # the truth's own outline sits on the image's edge: the fit leaves its score as the prior makes it
    score, _, smoothness, fit = image_score(probs, truth.astype(np.int64), None, bad, image)
    assert fit == 1.0 and score == pytest.approx(label_quality(probs, truth.astype(np.int64))[0] * smoothness ** 2)


def test_a_model_that_nearly_reaches_the_bar_ranks_without_the_prior():
    """Held-out agreement 56/68 = 0.824: not reliable (below 0.85), but within
    SHAPE_PRIOR_BELOW (0.8) of it, so the score is the model's alone and the message
    does not claim the outlines rank; at 24/52 = 0.46 the prior is back."""
    given = np.zeros((64, 64), np.int64)
    given[10:50, 10:30] = 1  # 800 px
    def model(rows: int) -> np.ndarray:
        found = np.zeros_like(given)
        found[10:10 + rows, 10:30] = 1
        return probs_of(found, 0.9)
    near = assess_reliability([(model(28), given)], 2, None, out_of_sample=True)
    assert near.agreement[1] == pytest.approx(56 / 68)
    assert SHAPE_PRIOR_BELOW <= near.agreement[1] < RELIABLE_AGREEMENT
    assert not near.any_reliable and not near.uses_shape_prior
    assert near.to_dict()["score_includes_shape_prior"] is False
    rough = ragged(disk()).astype(np.int64)
    probs = probs_of(disk(), 0.9)
    image = np.where(disk() != 0, 120.0, 60.0)
    assert image_score(probs, rough, None, near, image) == (label_quality(probs, rough)[0],) * 2 + (None, None)
    assert "the model is not reliable for any class" in near.messages[0]
    assert "ragged" not in near.messages[0] and "ragged" not in with_object_changes(
        near.messages, 2, caveat=near.ranking_caveat)[0]
    far = assess_reliability([(model(12), given)], 2, None, out_of_sample=True)
    assert far.agreement[1] == pytest.approx(24 / 52) and far.uses_shape_prior
    assert far.to_dict()["score_includes_shape_prior"] is True
    assert image_score(probs, rough, None, far, image).smoothness == pytest.approx(outline_smoothness(rough))
    assert "how ragged each mask's outline is" in with_object_changes(far.messages, 2, caveat=far.ranking_caveat)[0]


def test_an_unreliable_review_ranks_a_ragged_mask_below_a_smooth_one_the_model_doubts_alike(drain, brightness_model):
    """brightness_model finds nothing (so no class is reliable); two masks it doubts the
    same (both all foreground against its all-background decision): without the prior
    they tie, with it the ragged one ranks first."""
    from ielstudio.core.dataset import Sample
    from ielstudio.core.imageio import MaskEncoding
    from ielstudio.core.review import review_samples

    enc = MaskEncoding.gray(2, 255)
    smooth, rough = disk(), ragged(disk())
    data = [Sample(n, m[None].astype(np.float32), m.astype(np.int64), enc)
            for n, m in [("smooth", smooth), ("rough", rough), ("smooth2", smooth), ("rough2", rough)]]
    results, summary = drain(review_samples(brightness_model(2, sees=False), data, CleanConfig(),
                                            holdout=["smooth2", "rough2"]))
    assert not summary.reliability.any_reliable
    by = {r.name: r for r in results}
    assert by["rough"].score < by["smooth"].score
    assert by["rough"].outline_smoothness == pytest.approx(outline_smoothness(rough))
    assert all(np.array_equal(r.proposal, s.mask) for r, s in zip(results, data))  # nothing changed
    assert "how ragged each mask's outline is and how far it sits from the image's edges" in summary.warnings[0]


def test_an_unreliable_review_ranks_an_outline_off_the_image_edge_below_one_on_it(drain, brightness_model):
    """The same model doubt and smoothness, but one mask drawn 2 px too wide around the
    object the image shows: its outline fit (`boundary_fit.outline_fit_dice`) is below 1,
    the other's is 1, and each score is the model's x smoothness^2 x fit."""
    from ielstudio.core.dataset import Sample
    from ielstudio.core.imageio import MaskEncoding
    from ielstudio.core.review import review_samples

    enc = MaskEncoding.gray(2, 255)
    shown = disk(r=12)
    image = np.where(shown != 0, 0.45, 0.2)[None].astype(np.float32)  # below 0.5: nothing bright for the model
    data = [Sample(n, image, m.astype(np.int64), enc)
            for n, m in [("edge", shown), ("wide", disk(r=14)), ("edge2", shown), ("wide2", disk(r=14))]]
    model = brightness_model(2, sees=False)
    results, summary = drain(review_samples(model, data, CleanConfig(), holdout=["edge2", "wide2"]))
    assert summary.reliability.uses_shape_prior
    by = {r.name: r for r in results}
    assert by["edge"].outline_fit == 1.0
    assert by["wide"].outline_fit == pytest.approx(outline_fit_dice(image, disk(r=14)))
    assert by["wide"].outline_fit < 0.9
    for r, s in zip(results, data):
        model_score = label_quality(r.probs, s.mask)[0]
        assert r.score == pytest.approx(model_score * r.outline_smoothness ** 2 * r.outline_fit)


def test_the_score_is_described_by_its_parts():
    from ielstudio.core.review import ImageResult, describe_score

    zero = np.zeros((2, 4, 4), np.float32)
    alone = ImageResult("a", zero, np.zeros((4, 4), np.int64), 0.8, out_of_sample=False)
    assert alone.score_parts() == {"model": 0.8, "out_of_sample": False}
    assert describe_score(0.8, alone.score_parts()) == ("score 0.800: the model's agreement with the mask; "
                                                       "predicted by a model that trained on this mask")
    with_prior = ImageResult("b", zero, np.zeros((4, 4), np.int64), 0.8 * 0.9 ** 2 * 0.5, True,
                             outline_smoothness=0.9, outline_fit=0.5, model_score=0.8)
    text = describe_score(with_prior.score, with_prior.score_parts())
    assert text.startswith("score 0.324 = the model's agreement 0.800 x outline smoothness 0.900^2 x "
                           "outline fit to the image 0.500 (")
    assert text.endswith("predicted by a model that never trained on this mask")
    assert describe_score(0.25, None) == "score 0.250"
    assert describe_score(0.0003, {"model": 0.0004, "out_of_sample": True}).startswith(
        "score <0.001: the model's agreement with the mask")
