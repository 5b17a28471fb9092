"""Exact small cases for Dice, IoU, boundary F1 and solidity."""

import math

import numpy as np
import pytest

from ielstudio.core.metrics import boundary_f1, confusion_counts, dice, iou, pooled_dice, solidity


def squares(offset: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((10, 12), np.int64)
    b = np.zeros((10, 12), np.int64)
    a[2:6, 0:4] = 1  # 16 px
    b[2:6, offset : offset + 4] = 1  # 16 px, overlap 4 * (4 - offset)
    return a, b


def test_two_squares_known_overlap():
    a, b = squares(2)  # overlap 8 px
    assert dice(a, b, 2) == pytest.approx(2 * 8 / 32)
    assert iou(a, b, 2) == pytest.approx(8 / 24)
    a, b = squares(3)  # overlap 4 px
    assert dice(a, b, 2) == pytest.approx(8 / 32)
    assert iou(a, b, 2) == pytest.approx(4 / 28)


def test_identical_disjoint_and_both_empty():
    a, _ = squares(0)
    assert dice(a, a, 2) == 1.0 and iou(a, a, 2) == 1.0
    a, b = squares(4)  # touching, no overlap
    assert dice(a, b, 2) == 0.0 and iou(a, b, 2) == 0.0
    empty = np.zeros((5, 5), np.int64)
    assert dice(empty, empty, 2) == 1.0 and iou(empty, empty, 2) == 1.0
    assert dice(empty, a[:5, :5], 2) == 0.0


def test_multiclass_per_class_and_mean_over_foreground():
    target = np.array([[0, 1, 1, 2], [0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2], [0, 1, 1, 0]])
    inter, p, t = confusion_counts(pred, target, 4)
    np.testing.assert_array_equal(inter, [2, 3, 1, 0])
    np.testing.assert_array_equal(p, [3, 3, 2, 0])
    np.testing.assert_array_equal(t, [2, 4, 2, 0])
    per = dice(pred, target, 4, per_class=True)
    np.testing.assert_allclose(per, [4 / 5, 6 / 7, 2 / 4, 1.0])  # class 3 absent from both -> 1
    assert dice(pred, target, 4) == pytest.approx((6 / 7 + 2 / 4 + 1.0) / 3)
    np.testing.assert_allclose(iou(pred, target, 4, per_class=True), [2 / 3, 3 / 4, 1 / 3, 1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        dice(pred, target[:, :3], 4)


def stripe(top: int) -> np.ndarray:
    m = np.zeros((40, 30), np.int64)
    m[top:30, :] = 1  # boundary rows: `top` and 29 (image edges are not boundaries)
    return m


def test_boundary_f1_tolerance_exact():
    assert boundary_f1(stripe(10), stripe(10)) == 1.0
    assert boundary_f1(stripe(10), stripe(12), tol=2) == 1.0  # top rows 2 px apart: matched
    assert boundary_f1(stripe(10), stripe(12), tol=1) == pytest.approx(0.5)  # only row 29 matches
    assert boundary_f1(stripe(10), stripe(13), tol=2) == pytest.approx(0.5)
    empty = np.zeros((40, 30), np.int64)
    assert boundary_f1(empty, empty) == 1.0
    assert boundary_f1(stripe(10), empty) == 0.0


def test_boundary_f1_mean_over_classes():
    pred = stripe(10)
    target = stripe(10) * 2  # class 1 vs class 2: both classes miss completely
    assert boundary_f1(pred, target, n_classes=3) == 0.0
    assert boundary_f1(target, target, n_classes=3) == 1.0


def test_solidity_square_notch_and_mean():
    m = np.zeros((30, 30), np.int64)
    m[2:12, 2:12] = 1  # filled 10x10 square: solidity 1
    assert solidity(m) == 1.0
    m[2:6, 5:9] = 0  # 4x4 notch from the top edge: 84 px, hull = full 100 px square
    assert solidity(m) == pytest.approx(0.84)
    m[20:25, 20:28] = 1  # second object, a rectangle: mean (0.84 + 1) / 2
    assert solidity(m) == pytest.approx(0.92)
    m[20:25, 20:28] = 2  # restrict to class 2
    assert solidity(m, classes=(2,)) == 1.0
    assert math.isnan(solidity(np.zeros((5, 5), np.int64)))
    single = np.zeros((5, 5), np.int64)
    single[2, 2] = 1
    assert solidity(single) == 1.0


def test_pooled_dice_sums_pixels_over_images_before_dividing():
    a = np.zeros((4, 4), int)
    a[0, :2] = 1  # image 1: 2 labelled px, 1 found
    b = np.zeros((4, 4), int)
    b[:2, :] = 1  # image 2: 8 px, all found
    found_a = np.zeros((4, 4), int)
    found_a[0, 0] = 1
    d = pooled_dice([(found_a, a), (b, b)], 3)
    # class 1: 2 * (1 + 8) / ((1 + 2) + (8 + 8)) = 18 / 19 (a per-image mean would give 0.83)
    assert d[1] == pytest.approx(18 / 19) and np.isnan(d[2])
