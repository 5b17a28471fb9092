"""Synthetic data generators: shapes, classes, determinism, realism checks, speed."""

import time

import cv2
import numpy as np
import pytest

from ielstudio.core.synthetic import GENERATORS, make_lesions, make_nuclei, make_vessels


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_output_types_and_determinism(name):
    img, mask = GENERATORS[name](96, np.random.default_rng(4))
    img2, mask2 = GENERATORS[name](96, np.random.default_rng(4))
    assert img.shape == mask.shape == (96, 96)
    assert img.dtype == np.float32 and mask.dtype == np.int64
    assert 0.0 <= img.min() and img.max() <= 1.0
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(mask, mask2)
    img3, _ = GENERATORS[name](96, np.random.default_rng(5))
    assert not np.array_equal(img, img3)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_foreground_is_separable_but_noisy(name):
    img, mask = GENERATORS[name](128, 0)
    fg, bg = img[mask > 0], img[mask == 0]
    contrast = abs(fg.mean() - bg.mean()) / bg.std()
    assert contrast > 1.0, contrast  # visible structure ...
    # ... but not a clean threshold: noise and shading overlap the two sides
    lo, hi = np.percentile(fg, 5), np.percentile(fg, 95)
    assert ((bg > lo) & (bg < hi)).mean() > 0.001
    # shot noise: neighbouring background pixels differ
    assert np.abs(np.diff(img, axis=1))[mask[:, 1:] == 0].mean() > 0.005


def test_nuclei_are_mostly_convex_blobs():
    _, mask = make_nuclei(128, 1)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    assert n - 1 >= 5
    solid = []
    for k in range(1, n):
        if stats[k, cv2.CC_STAT_AREA] < 30:
            continue
        cnts, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        hull = cv2.convexHull(cnts[0])
        solid.append(stats[k, cv2.CC_STAT_AREA] / max(1.0, cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2))
    assert np.median(solid) > 0.9


def test_lesions_have_two_foreground_classes_core_inside_body():
    hits = 0
    for s in range(5):
        _, mask = make_lesions(128, s)
        assert set(np.unique(mask)) <= {0, 1, 2}
        core = (mask == 2).astype(np.uint8)
        if core.any():
            hits += 1
            ring = cv2.dilate(core, np.ones((3, 3), np.uint8)) & (core == 0)
            assert (mask[ring > 0] == 1).all()  # the core is wrapped in lesion body
    assert hits == 5


def test_vessels_are_thin_and_elongated():
    _, mask = make_vessels(128, 2)
    m = mask.astype(np.uint8)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    assert dist.max() <= 4.0  # at most ~6 px wide (crossings included)
    assert 0.02 < m.mean() < 0.2
    n, labels = cv2.connectedComponents(m)
    biggest = np.bincount(labels.ravel())[1:].max()
    ys, xs = np.nonzero(labels == 1 + np.bincount(labels.ravel())[1:].argmax())
    assert max(np.ptp(ys), np.ptp(xs)) > 50 and biggest < 0.15 * m.size


def test_fast_enough():
    t0 = time.process_time()
    for s in range(10):
        for f in GENERATORS.values():
            f(128, s)
    per_image_ms = (time.process_time() - t0) / 30 * 1000
    assert per_image_ms < 50, per_image_ms  # ~4 ms measured on an idle core


def test_bundled_sample_is_valid_and_matches_its_script(tmp_path):
    import importlib.util

    from ielstudio.core.dataset import load_samples, scan_pairs
    from ielstudio.core.imageio import read_raw
    from ielstudio.core.paths import resources_dir, sample_dir

    expect = {"nuclei": (12, 2, "binary", 1), "lesions": (8, 3, "color", 3)}
    for name, (n, n_classes, kind, channels) in expect.items():
        root = sample_dir(name)
        noisy = load_samples(scan_pairs(root / "images", root / "masks"))
        clean = load_samples(scan_pairs(root / "images", root / "clean"))
        assert len(noisy.samples) == len(clean.samples) == n and not noisy.skipped and not clean.skipped
        assert noisy.n_classes == n_classes and noisy.encoding.kind == kind and noisy.in_channels == channels
        assert all(s.mask_path.name == f"{s.name}_mask.png" for s in noisy.samples)
        differ = sum(not np.array_equal(a.mask, b.mask) for a, b in zip(noisy.samples, clean.samples))
        assert differ == n - (2 if name == "nuclei" else 1)  # the 'clean label' rows of the README
    total = sum(p.stat().st_size for p in (resources_dir() / "sample").rglob("*") if p.is_file())
    assert total < 2_000_000

    spec = importlib.util.spec_from_file_location("make_sample", resources_dir() / "make_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--out", str(tmp_path)])
    for p in sorted((resources_dir() / "sample").rglob("*.png")):
        rel = p.relative_to(resources_dir() / "sample")
        np.testing.assert_array_equal(read_raw(tmp_path / rel), read_raw(p), err_msg=str(rel))
    assert (tmp_path / "README.md").read_text() == (resources_dir() / "sample" / "README.md").read_text()
