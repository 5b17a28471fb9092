"""Label-noise generators: strength grows with level, deterministic, dtype/shape kept, per object."""

import cv2
import numpy as np
import pytest

from ielstudio.core.noise import NOISE_TYPES, apply_noise, changed_fraction
from ielstudio.core.synthetic import make_lesions, make_nuclei


def disks(n_classes=2, size=96, dtype=np.uint8):
    """A grid of 9 disks of radius 9; with 3 classes alternating classes 1 and 2."""
    yy, xx = np.mgrid[0:size, 0:size]
    m = np.zeros((size, size), dtype)
    for i, (cy, cx) in enumerate([(y, x) for y in (16, 48, 80) for x in (16, 48, 80)]):
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = 1 + (i % (n_classes - 1))
    return m


@pytest.mark.parametrize("kind", sorted(NOISE_TYPES))
def test_levels_are_monotone_in_changed_pixels(kind):
    masks = [make_nuclei(96, s)[1] for s in range(4)] + [disks()]
    frac = [np.mean([changed_fraction(m, NOISE_TYPES[kind](m, level, np.random.default_rng(s), 2))
                     for s, m in enumerate(masks)]) for level in (1, 2, 3)]
    assert 0 < frac[0] < frac[1] < frac[2], frac


@pytest.mark.parametrize("kind", sorted(NOISE_TYPES))
def test_deterministic_and_keeps_dtype_shape(kind):
    m = disks(3, dtype=np.uint16)
    a = NOISE_TYPES[kind](m, 2, np.random.default_rng(5), 3)
    b = NOISE_TYPES[kind](m, 2, np.random.default_rng(5), 3)
    c = NOISE_TYPES[kind](m, 2, np.random.default_rng(6), 3)
    assert a.dtype == np.uint16 and a.shape == m.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) or kind == "missing"  # 'missing' may drop the same object by chance
    assert set(np.unique(a)) <= {0, 1, 2}
    assert not np.shares_memory(a, m) and np.array_equal(m, disks(3, dtype=np.uint16))  # input untouched


def test_block_noise_matches_paper_keep_probability():
    m = np.zeros((300, 300), np.int64)
    out = NOISE_TYPES["block"](m, 1, np.random.default_rng(0), 2)  # 1 px blocks, keep 0.9
    # corrupted pixels (10 %) get a random class out of 2: half of them stay 0
    assert abs(out.mean() - 0.05) < 0.005
    out3 = NOISE_TYPES["block"](m, 3, np.random.default_rng(0), 2)  # 3 px blocks, keep 0.7
    assert abs(out3.mean() - 0.15) < 0.02
    # 3x3 blocks: every aligned block is constant
    blocks = out3.reshape(100, 3, 100, 3)
    assert (blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))).all()


def test_jitter_moves_boundaries_by_radius():
    m = disks()
    out = NOISE_TYPES["jitter"](m, 1, np.random.default_rng(0), 2)  # r = 1 px
    changed = out != m
    # every changed pixel lies within 1 px of the original boundary
    k = np.ones((3, 3), np.uint8)
    band = cv2.dilate(m, k) != cv2.erode(m, k)
    assert changed.any() and (changed <= band).all()
    assert (changed & band).sum() > 100


def test_missing_drops_whole_objects_nested_across_levels():
    m = disks()
    drops = []
    for level in (1, 2, 3):
        out = NOISE_TYPES["missing"](m, level, np.random.default_rng(3), 2)
        removed = (m > 0) & (out == 0)
        assert ((out > 0) <= (m > 0)).all()
        # whole disks: 253 px each
        assert removed.sum() % 253 == 0 and removed.sum() >= 253
        drops.append(removed)
    assert (drops[0] <= drops[1]).all() and (drops[1] <= drops[2]).all()


def test_holes_and_specks_only_touch_their_side():
    m = disks()
    holes = NOISE_TYPES["holes"](m, 3, np.random.default_rng(1), 2)
    assert ((holes != m) <= (m > 0)).all() and (holes[m > 0] == 0).sum() > 0
    specks = NOISE_TYPES["specks"](m, 3, np.random.default_rng(1), 2)
    assert ((specks != m) <= (m == 0)).all() and (specks[m == 0] > 0).sum() > 0


def nested(size=64):
    """Lesion-like: a class-1 body disk (r 22) around a class-2 core disk (r 9)."""
    yy, xx = np.mgrid[0:size, 0:size]
    d2 = (yy - 32) ** 2 + (xx - 32) ** 2
    return np.where(d2 <= 81, 2, np.where(d2 <= 22 * 22, 1, 0)).astype(np.int64)


@pytest.mark.parametrize("kind", ["jitter", "polygon", "holes", "missing"])
def test_pixels_lost_by_an_object_go_to_the_class_around_it(kind):
    m = nested()
    core_changed = body_changed = 0
    for seed in range(8):
        out = NOISE_TYPES[kind](m, 3, np.random.default_rng(seed), 3)
        changed = out != m
        # a core never leaves a background gap inside the body: its lost pixels become body
        assert (out[changed & (m == 2)] == 1).all()
        # the body only loses pixels to background, or to a growing core
        assert np.isin(out[changed & (m == 1)], [0, 2]).all()
        if kind in ("holes", "missing"):
            assert not (changed & (out == 2)).any()
        # background changes only by the body growing
        assert (out[changed & (m == 0)] == 1).all()
        if kind == "jitter":  # the body shrinks from its outline, never from its inner edge
            inner_edge = (m == 1) & (cv2.dilate((m == 2).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
            assert not (out[inner_edge] == 0).any()
        core_changed += int((changed & (m == 2)).sum())
        body_changed += int((changed & (m == 1)).sum())
    assert core_changed > 0 and body_changed > 0


def test_multi_class_objects_keep_their_class():
    m = make_lesions(96, 2)[1]
    for kind in ("jitter", "polygon"):
        out = NOISE_TYPES[kind](m, 3, np.random.default_rng(0), 3)
        moved = (out != m) & (out > 0)
        assert set(np.unique(out)) <= {0, 1, 2} and moved.any()
        # new foreground pixels carry the class of an object of that class right next to them
        for c in (1, 2):
            near = cv2.dilate((m == c).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            assert (moved & (out == c) & ~near).sum() == 0, (kind, c)


def test_polygon_is_coarser_outline():
    m = disks()
    out = NOISE_TYPES["polygon"](m, 3, np.random.default_rng(0), 2)
    contours, _ = cv2.findContours((out > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert len(contours) == 9
    # each disk (radius 9) becomes a polygon with eps 2.7 px: few vertices, inscribed
    approx = [len(cv2.approxPolyDP(c, 0.5, True)) for c in contours]
    assert max(approx) <= 14
    assert ((out > 0) & (m == 0)).sum() < 0.03 * (m > 0).sum()
    assert 0.7 * (m > 0).sum() < (out > 0).sum() < (m > 0).sum()


def test_apply_noise_combines_and_validates():
    m = disks()
    combo = apply_noise(m, "jitter+specks", 2, np.random.default_rng(0), 2)
    rng = np.random.default_rng(0)
    manual = NOISE_TYPES["specks"](NOISE_TYPES["jitter"](m, 2, rng, 2), 2, rng, 2)
    np.testing.assert_array_equal(combo, manual)
    np.testing.assert_array_equal(apply_noise(m, "block", 0, 0), m)
    with pytest.raises(ValueError, match="unknown noise kind"):
        apply_noise(m, "blur", 1, 0)
    with pytest.raises(ValueError, match="level"):
        apply_noise(m, "block", 4, 0)


def test_empty_mask_is_fine():
    z = np.zeros((20, 20), np.uint8)
    for kind, fn in NOISE_TYPES.items():
        out = fn(z, 3, np.random.default_rng(0), 2)
        assert out.shape == z.shape
        if kind not in ("block", "specks"):
            assert not out.any()
