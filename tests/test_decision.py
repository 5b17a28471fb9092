"""Per-class decision thresholds at the valley of the model's probabilities (core.decision)."""

import numpy as np
import pytest

from ielstudio.core import decision
from ielstudio.core.cleaning import (
    CALIBRATION_IMAGES,
    CleanConfig,
    calibration_subset,
    label_quality,
    propose,
    thresholds_for,
)
from ielstudio.core.decision import decide, decision_thresholds


def binary(p_fg):
    p_fg = np.asarray(p_fg, np.float32)
    return np.stack([1 - p_fg, p_fg])


def two_objects(p_object, p_background=0.03, size=48, jitter=0.02, seed=0):
    """Two 12x12 objects at probability ~p_object on a background at ~p_background."""
    rng = np.random.default_rng(seed)
    p = np.full((size, size), p_background) + rng.uniform(-jitter, jitter, (size, size))
    truth = np.zeros((size, size), np.int64)
    for r, c in ((6, 6), (28, 26)):
        truth[r:r + 12, c:c + 12] = 1
    p[truth == 1] = p_object + rng.uniform(-jitter, jitter, int(truth.sum()))
    return binary(np.clip(p, 0, 1)), truth


def test_objects_the_labels_half_miss_are_found_at_the_valley():
    # annotators labelled these objects only part of the time: the model says ~0.4 on all
    probs, truth = two_objects(0.4)
    t = decision_thresholds([probs])
    assert t[0] == 0.5 and decision.MIN_THRESHOLD <= t[1] <= decision.MAX_THRESHOLD
    assert 0.05 < t[1] < 0.38  # between the two populations
    assert np.array_equal(decide(probs, t), truth)
    assert decide(probs, None).sum() == 0  # the plain argmax deletes every object


def test_a_confident_model_keeps_the_argmax_exactly():
    # objects at 0.97 whose 1-px rims hold every value in between: the valley is the argmax's own
    probs, truth = two_objects(0.97)
    inner = np.zeros_like(truth)
    for r, c in ((7, 7), (29, 27)):
        inner[r:r + 10, c:c + 10] = 1
    rim = (truth == 1) & (inner == 0)
    probs[1][rim] = np.linspace(0.05, 0.95, int(rim.sum()))
    probs[0][rim] = 1 - probs[1][rim]
    t = decision_thresholds([probs])
    assert t.tolist() == [0.5, 0.5]
    assert np.array_equal(decide(probs, t), probs.argmax(0))


def test_nothing_but_background_keeps_half():
    probs, _ = two_objects(0.05)
    assert decision_thresholds([probs]).tolist() == [0.5, 0.5]


def test_a_close_population_with_a_clear_valley_is_found():
    # objects at ~0.43 on a background at ~0.14: the means are only 0.29 apart (less than
    # MIN_SEPARATION), but nothing lies between them, so the valley test accepts the split
    probs, truth = two_objects(0.43, p_background=0.14, jitter=0.05)
    hist = np.histogram(probs[1], bins=decision.BINS, range=(0, 1))[0]
    t, lower, upper = decision._otsu(hist)
    assert upper - lower < decision.MIN_SEPARATION and decision._dip(hist, t) >= decision.MIN_DIP
    th = decision_thresholds([probs])
    assert 0.19 < th[1] < 0.38
    assert np.array_equal(decide(probs, th), truth)
    assert decide(probs, None).sum() == 0


def test_a_one_sided_tail_is_not_a_second_population():
    # background probabilities with an exponential tail: Otsu splits the tail at ~0.23, but
    # the density only falls from 0 to 1 (no valley) and the means are 0.26 apart
    rng = np.random.default_rng(0)
    p_fg = np.clip(0.02 + rng.exponential(0.13, (96, 96)), 0, 1)
    hist = np.histogram(p_fg, bins=decision.BINS, range=(0, 1))[0]
    t, lower, upper = decision._otsu(hist)
    assert decision.MIN_THRESHOLD <= t <= decision.MAX_THRESHOLD  # only the two tests refuse it
    assert upper - lower < decision.MIN_SEPARATION
    assert decision._dip(hist, t) == pytest.approx(1.0)
    assert decision_thresholds([binary(p_fg)]).tolist() == [0.5, 0.5]


def test_a_valley_below_the_floor_is_refused():
    # background at 0.01 and objects at 0.33: the valley near 0.17 is below MIN_THRESHOLD
    probs, _ = two_objects(0.33, p_background=0.01, jitter=0.005)
    assert decision_thresholds([probs]).tolist() == [0.5, 0.5]


def test_thresholds_pool_the_whole_data_set():
    # one image with the objects, three without: pooled, the valley is still found
    with_objects, truth = two_objects(0.4)
    empty = [two_objects(0.03, seed=s)[0] for s in (1, 2, 3)]
    t = decision_thresholds(iter([with_objects, *empty]))  # any iterable, consumed once
    assert t[1] < 0.4 and np.array_equal(decide(with_objects, t), truth)
    for p in empty:
        assert decide(p, t).sum() == 0


def test_binary_decision_is_foreground_above_the_threshold():
    rng = np.random.default_rng(3)
    probs = binary(rng.uniform(0, 1, (32, 32)))
    for t in (0.25, 0.37, 0.5):
        assert np.array_equal(decide(probs, np.array([0.5, t])), (probs[1] > t).astype(np.int64))


def test_three_classes_weight_only_the_low_class():
    # class 1 confident (0.9); class 2 objects at 0.4 against background 0.55
    h = w = 40
    p = np.zeros((3, h, w), np.float32)
    p[0] = 0.97
    p[1] = 0.015
    p[2] = 0.015
    p[:, 2:12, 2:12] = np.array([0.05, 0.9, 0.05])[:, None, None]
    p[:, 20:34, 20:34] = np.array([0.55, 0.05, 0.4])[:, None, None]
    t = decision_thresholds([p])
    assert t[0] == 0.5 and t[1] == 0.5 and t[2] < 0.4
    out = decide(p, t)
    assert (out[2:12, 2:12] == 1).all() and (out[20:34, 20:34] == 2).all()
    assert (out == 0).sum() == h * w - 100 - 196


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="no probability maps"):
        decision_thresholds([])
    with pytest.raises(ValueError, match="class count"):
        decision_thresholds([np.full((2, 4, 4), 0.5), np.full((3, 4, 4), 1 / 3)])
    with pytest.raises(ValueError, match=r"\(C,H,W\)"):
        decision_thresholds([np.zeros((4, 4))])
    with pytest.raises(ValueError, match="one threshold"):
        decide(np.full((2, 4, 4), 0.5), np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="one threshold"):
        decide(np.full((2, 4, 4), 0.5), np.array([0.5, 0.0]))


def test_propose_and_score_use_the_data_set_thresholds():
    # the label has object A, misses object B; the model gives both 0.4
    probs, truth = two_objects(0.4)
    given = truth.copy()
    given[28:40, 26:38] = 0  # B missing from the label
    config = CleanConfig()
    t = thresholds_for([probs], config)
    assert np.array_equal(propose(probs, given, config, t), truth)  # A kept, B added
    assert propose(probs, given, config).sum() == 0  # argmax: A deleted as well
    score_t, _ = label_quality(probs, given, t)
    score_argmax, _ = label_quality(probs, given)
    assert score_t == pytest.approx(0.9 * 2 * 144 / (144 + 288) + 0.1 * float(
        np.take_along_axis(probs, given[None], 0)[0][(given > 0) | (truth > 0)].mean()), abs=1e-6)
    assert score_argmax < score_t  # the argmax disagrees with the label on A too
    assert thresholds_for([probs], CleanConfig(adaptive_threshold=False)) is None


def test_calibration_subset_spreads_over_the_data_set():
    assert calibration_subset(list(range(10))) == list(range(10))
    many = list(range(1000))
    sub = calibration_subset(many)
    assert len(sub) == CALIBRATION_IMAGES and sub[0] == 0 and sub[-1] == 999
    assert sub == sorted(set(sub))
