"""Pairing by name, validation, one class mapping per dataset, training crops/augmentation."""

import builtins
import io
import time

import numpy as np
import pytest
import torch

from ielstudio.core import dataset as ds
from ielstudio.core.dataset import (
    LoadedDataset,
    Pair,
    Sample,
    SegmentationDataset,
    load_sample,
    load_samples,
    scan_pairs,
)
from ielstudio.core.errors import DataError
from ielstudio.core.imageio import MaskEncoding, atomic_write_image, read_raw, write_mask


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def names(items):
    return sorted(p.name for p in items)


# ------------------------------------------------------------------ scanning

def test_pairs_by_stem_with_mask_suffixes(tmp_path):
    touch(tmp_path / "img", "a.png", "b.tif", "c.jpg", "D.png", "e.png", "f.bmp", "g.png", "h.png", "lonely.png",
          "notes.txt", ".hidden.png")
    touch(tmp_path / "msk", "a_mask.png", "b_Labels.tif", "c-GT.png", "d_seg.png", "mask_e.png", "f.png",
          "g.annotation.png", "h_masks.png", "orphan_mask.png")
    scan = scan_pairs(tmp_path / "img", tmp_path / "msk")
    got = {p.name: p.mask_path.name for p in scan.pairs}
    assert got == {"a": "a_mask.png", "b": "b_Labels.tif", "c": "c-GT.png", "D": "d_seg.png", "e": "mask_e.png",
                   "f": "f.png", "g": "g.annotation.png", "h": "h_masks.png"}
    reasons = {s.path.name: s.problem for s in scan.skipped}
    assert set(reasons) == {"lonely.png", "orphan_mask.png"}
    assert reasons["lonely.png"].startswith("no mask found")
    assert reasons["orphan_mask.png"] == "no image with a matching name"


def test_pairs_natural_order_and_duplicates(tmp_path):
    touch(tmp_path / "img", "im10.png", "im2.png", "im1.png", "im1.tif")
    touch(tmp_path / "msk", "im10.png", "im2_mask.png", "im2.png", "im1.png")
    scan = scan_pairs(tmp_path / "img", tmp_path / "msk")
    assert [p.name for p in scan.pairs] == ["im1", "im2", "im10"]
    problems = sorted(s.problem for s in scan.skipped)
    assert len(problems) == 2
    assert "another image has the same name (im1.png)" in problems[0]
    assert problems[1] == "image im2.png already has a mask (im2.png)"


def test_images_and_masks_in_one_folder(tmp_path):
    touch(tmp_path, "a.png", "a_mask.png", "b.tif", "b_label.tif", "c.png")
    scan = scan_pairs(tmp_path, tmp_path)
    assert {p.name: p.mask_path.name for p in scan.pairs} == {"a": "a_mask.png", "b": "b_label.tif"}
    assert names(s.path for s in scan.skipped) == ["c.png"]


def test_missing_or_empty_folders(tmp_path):
    touch(tmp_path / "img", "a.png")
    with pytest.raises(DataError, match="masks folder does not exist"):
        scan_pairs(tmp_path / "img", tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_pairs(tmp_path / "empty", tmp_path / "img")
    touch(tmp_path / "txt", "readme.txt")
    with pytest.raises(DataError, match="no mask files") as e:
        scan_pairs(tmp_path / "img", tmp_path / "txt")
    assert e.value.path == tmp_path / "txt"
    with pytest.raises(DataError, match="not a folder"):
        scan_pairs(tmp_path / "img" / "a.png", tmp_path / "img")


def test_scan_5000_names_fast_without_reading_files(tmp_path, monkeypatch):
    n = 5000
    touch(tmp_path / "img", *[f"cell_{i:05d}.png" for i in range(n)])
    touch(tmp_path / "msk", *[f"cell_{i:05d}_mask.png" for i in range(n)])

    def no_open(*a, **k):
        raise AssertionError("scan_pairs opened a file")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr(io, "open", no_open)
    t0 = time.process_time()  # CPU time: the test machine is shared
    scan = scan_pairs(tmp_path / "img", tmp_path / "msk")
    elapsed = time.process_time() - t0
    monkeypatch.undo()
    assert len(scan.pairs) == n and not scan.skipped
    assert scan.pairs[1234].mask_path.name == "cell_01234_mask.png"
    assert elapsed < 2.0, elapsed  # 0.2 s CPU measured; files are empty, so a decode would fail


# ------------------------------------------------------------------ loading

def write_pair(folder, name, image, mask, mask_name=None):
    atomic_write_image(folder / "images" / f"{name}.png", image)
    atomic_write_image(folder / "masks" / (mask_name or f"{name}_mask.png"), mask)


def square_mask(h, w, fg=255, y=2, x=3, s=5):
    m = np.zeros((h, w), np.uint8)
    m[y:y + s, x:x + s] = fg
    return m


def test_load_sample_normalises_and_validates(tmp_path):
    img = np.linspace(0, 200, 16 * 20).reshape(16, 20).astype(np.uint8)
    write_pair(tmp_path, "a", img, square_mask(16, 20))
    s = load_sample(Pair("a", tmp_path / "images/a.png", tmp_path / "masks/a_mask.png"))
    assert s.image.shape == (1, 16, 20) and s.image.dtype == np.float32
    assert s.image.min() == 0.0 and s.image.max() == 1.0
    assert s.mask.dtype == np.int64 and s.mask.sum() == 25
    assert s.encoding.values == (0, 255)

    atomic_write_image(tmp_path / "masks/small.png", square_mask(15, 20))
    with pytest.raises(DataError, match=r"mask is 20x15 px but image a.png is 20x16 px") as e:
        load_sample(Pair("a", tmp_path / "images/a.png", tmp_path / "masks/small.png"))
    assert e.value.path == tmp_path / "masks/small.png"
    (tmp_path / "masks/bad.png").write_bytes((tmp_path / "masks/a_mask.png").read_bytes()[:40])
    with pytest.raises(DataError, match="truncated"):
        load_sample(Pair("a", tmp_path / "images/a.png", tmp_path / "masks/bad.png"))


def test_load_samples_unifies_index_masks_and_skips_bad_files(tmp_path):
    rgb = np.zeros((12, 14, 3), np.uint8)
    rgb[..., 0] = np.arange(14) * 10
    write_pair(tmp_path, "a", rgb, square_mask(12, 14, fg=1))            # classes {0,1}
    write_pair(tmp_path, "b", np.arange(100, dtype=np.uint8).reshape(10, 10), square_mask(10, 10, fg=3))
    write_pair(tmp_path, "c", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))  # background only
    write_pair(tmp_path, "d", np.zeros((8, 8), np.uint8), square_mask(9, 8, fg=1))     # size mismatch
    m = square_mask(8, 8, fg=1)
    m[0, 0] = 200
    write_pair(tmp_path, "e", np.zeros((8, 8), np.uint8), m)                          # stray value
    (tmp_path / "images" / "f.png").write_bytes(b"\x89PNG broken")
    atomic_write_image(tmp_path / "masks" / "f_mask.png", square_mask(8, 8))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert isinstance(loaded, LoadedDataset)
    assert [s.name for s in loaded.samples] == ["a", "b", "c"]
    assert loaded.n_classes == 4 and loaded.encoding.kind == "index" and loaded.encoding.values == (0, 1, 2, 3)
    assert loaded.in_channels == 3  # one colour image -> gray ones repeated
    assert all(s.image.shape[0] == 3 for s in loaded.samples)
    assert loaded.samples[1].mask.max() == 3 and loaded.samples[0].mask.max() == 1
    assert names(s.path for s in loaded.skipped) == ["d_mask.png", "e_mask.png", "f.png"]
    samples, skipped = loaded  # the original (samples, skipped) contract still unpacks
    assert len(samples) == 3 and len(skipped) == 3


def test_load_samples_majority_convention_wins(tmp_path):
    for i in range(3):
        write_pair(tmp_path, f"w{i}", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=255))
    # 0/1/2 class indices clash with the 0/255 convention (a 0/1 mask would not: both
    # are binary, see test_binary_masks_of_any_value_make_one_binary_dataset)
    write_pair(tmp_path, "one", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=1) + square_mask(8, 8, fg=2, y=0, x=0, s=2))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert loaded.encoding.values == (0, 255) and loaded.n_classes == 2
    assert [s.path.name for s in loaded.skipped] == ["one_mask.png"]
    assert "most masks in this dataset" in loaded.skipped[0].problem


def test_colour_masks_share_one_palette_and_write_back(tmp_path):
    red, blue = (255, 0, 0), (0, 0, 255)
    m1 = np.zeros((8, 8, 3), np.uint8)
    m1[:3] = red
    m2 = np.zeros((8, 8, 3), np.uint8)
    m2[:2] = blue
    m2[5:] = red
    m3 = np.zeros((8, 8, 3), np.uint8)
    m3[4:] = blue
    for name, m in (("a", m1), ("b", m2), ("c", m3)):
        write_pair(tmp_path, name, np.zeros((8, 8), np.uint8), m)
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert loaded.encoding.colors == ((0, 0, 0), blue, red)
    a, b, c = loaded.samples
    assert (a.mask == 2).sum() == 24 and (c.mask == 1).sum() == 32
    assert (b.mask == 1).sum() == 16 and (b.mask == 2).sum() == 24
    # a's own file has one colour, yet it is written back with the dataset palette exactly
    out = tmp_path / "out" / a.mask_path.name
    write_mask(out, a.mask, a.encoding, protect=[a.mask_path])
    np.testing.assert_array_equal(read_raw(out), m1)


def test_lazy_dataset_reads_nothing_until_asked(tmp_path, monkeypatch):
    write_pair(tmp_path, "a", np.zeros((8, 8), np.uint8), square_mask(8, 8))
    scan = scan_pairs(tmp_path / "images", tmp_path / "masks")
    calls = []
    real = ds.load_sample
    monkeypatch.setattr(ds, "load_sample", lambda p, e=None: calls.append(p.name) or real(p, e))
    data = SegmentationDataset(scan.pairs, crop=8, encoding=MaskEncoding.gray(2, 255))
    assert calls == [] and len(data) == 1
    img, mask = data[0]
    assert calls == ["a"] and int(mask.sum()) == 25


# ------------------------------------------------------------------ augmentation

def level_sample(h, w, seed=0):
    """Image whose gray level encodes the class: 0 -> 0.0, 1 -> 0.5, 2 -> 1.0."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, size=(h, w)).astype(np.int64)
    image = (mask / 2.0).astype(np.float32)[None]
    return Sample("s", image, mask, MaskEncoding.gray(3, 1))


def classes_from_image(image):
    # jitter keeps 0 within [0, .05], .5 within [.35, .66], 1 within [.85, 1]
    return np.digitize(image[0].numpy(), [0.2, 0.75])


@pytest.mark.parametrize("h,w,crop", [(40, 50, 32), (20, 12, 32), (5, 3, 16)])
def test_augmentation_keeps_image_and_mask_aligned(h, w, crop):
    data = SegmentationDataset([level_sample(h, w)], crop=crop, augment=True, seed=3)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        img, mask = data[0]
        assert img.shape == (1, crop, crop) and img.dtype == torch.float32
        assert mask.shape == (crop, crop) and mask.dtype == torch.int64
        np.testing.assert_array_equal(classes_from_image(img), mask.numpy())
        seen.add(mask.numpy().tobytes())
    assert len(seen) >= 10  # nearly every epoch a different view (tiny mirrored images may repeat)


def test_augmentation_reproducible_per_seed_epoch_index():
    samples = [level_sample(30, 30, seed=i) for i in range(2)]
    a = SegmentationDataset(samples, crop=16, seed=7)
    b = SegmentationDataset(samples, crop=16, seed=7)
    for d in (a, b):
        d.set_epoch(4)
    for i in range(2):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    c = SegmentationDataset(samples, crop=16, seed=8)
    c.set_epoch(4)
    assert not torch.equal(a[0][0], c[0][0])


def test_no_augment_is_a_plain_crop_and_full_image_mode():
    s = level_sample(20, 20)
    img, mask = SegmentationDataset([s], crop=8, augment=False)[0]
    # a plain crop: find it in the original
    found = [(y, x) for y in range(13) for x in range(13) if np.array_equal(s.mask[y:y + 8, x:x + 8], mask.numpy())]
    assert found and np.array_equal(img.numpy(), s.image[:, found[0][0]:found[0][0] + 8, found[0][1]:found[0][1] + 8])
    img, mask = SegmentationDataset([s], crop=None, augment=False)[0]
    np.testing.assert_array_equal(mask.numpy(), s.mask)


def test_dataloader_workers_get_the_same_items():
    samples = [level_sample(24, 24, seed=i) for i in range(4)]
    data = SegmentationDataset(samples, crop=16, seed=1)
    direct = [data[i][1] for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=0, shuffle=False)
    batched = torch.cat([m for _, m in loader])
    assert torch.equal(batched, torch.stack(direct))


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_name = st.text(alphabet="abAB01_-. ", min_size=1, max_size=8).filter(lambda s: not s.startswith("."))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(imgs=st.sets(_name, max_size=6), masks=st.sets(_name, max_size=6),
       ext=st.sampled_from([".png", ".tif", ".jpg"]))
def test_every_file_is_paired_or_skipped_exactly_once(tmp_path_factory, imgs, masks, ext):
    root = tmp_path_factory.mktemp("h")
    touch(root / "i", *[n + ext for n in imgs])
    touch(root / "m", *[n + "_mask.png" for n in masks])
    try:
        scan = scan_pairs(root / "i", root / "m")
    except DataError as e:
        assert not imgs or not masks
        assert e.path in (root / "i", root / "m")
        return
    used = [p.image_path for p in scan.pairs] + [p.mask_path for p in scan.pairs] + [s.path for s in scan.skipped]
    on_disk = sorted(list((root / "i").iterdir()) + list((root / "m").iterdir()))
    assert sorted(used) == on_disk


# ------------------------------------------------------------------ hostile input (issue 19)

def test_binary_masks_of_any_value_make_one_binary_dataset(tmp_path):
    """One 16-bit 0/65535 mask among 0/255 ones made 258 classes, trained, then OverflowError."""
    for i in range(3):
        write_pair(tmp_path, f"w{i}", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=255))
    m16 = square_mask(8, 8, fg=1).astype(np.uint16) * 65535
    write_pair(tmp_path, "deep", np.zeros((8, 8), np.uint8), m16)
    write_pair(tmp_path, "one", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=1))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert loaded.n_classes == 2 and loaded.encoding.values == (0, 255) and loaded.skipped == []
    by_name = {s.name: s for s in loaded.samples}
    assert all(s.mask.max() == 1 for s in loaded.samples)
    for name, original in (("deep", m16), ("one", square_mask(8, 8, fg=1))):
        s = by_name[name]
        out = tmp_path / "out" / s.mask_path.name
        write_mask(out, s.mask, s.encoding, protect=[s.mask_path])  # each file in its own values
        np.testing.assert_array_equal(read_raw(out), original)
    lazy = SegmentationDataset([Pair("deep", tmp_path / "images/deep.png", tmp_path / "masks/deep_mask.png")],
                               crop=None, augment=False, encoding=loaded.encoding)
    assert int(lazy[0][1].max()) == 1


def test_a_mask_that_would_make_too_many_classes_is_skipped(tmp_path):
    for i, fg in enumerate((1, 2, 3)):
        write_pair(tmp_path, f"i{i}", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=fg))
    write_pair(tmp_path, "deep", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=1).astype(np.uint16) * 65535)
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert loaded.n_classes == 4
    assert [s.path.name for s in loaded.skipped] == ["deep_mask.png"]
    assert "65536 classes" in loaded.skipped[0].problem and "at most" in loaded.skipped[0].problem


def test_an_oversized_image_is_skipped_not_fatal(tmp_path):
    import struct
    import zlib

    import cv2

    write_pair(tmp_path, "ok", np.zeros((8, 8), np.uint8), square_mask(8, 8))
    png = bytearray(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    (tmp_path / "images" / "huge.png").write_bytes(bytes(png))
    atomic_write_image(tmp_path / "masks" / "huge_mask.png", square_mask(8, 8))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert [s.name for s in loaded.samples] == ["ok"]
    assert [s.path.name for s in loaded.skipped] == ["huge.png"] and "MAX_IMAGE_PIXELS" in loaded.skipped[0].problem


def test_nan_pixels_are_recorded_as_warnings(tmp_path):
    import tifffile

    img = np.ones((8, 8), np.float32)
    img[0, 0] = np.nan
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "n.tif", img)
    atomic_write_image(tmp_path / "masks" / "n_mask.png", square_mask(8, 8))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert len(loaded.samples) == 1 and np.isfinite(loaded.samples[0].image).all()
    assert len(loaded.warnings) == 1 and "n.tif" in loaded.warnings[0] and "NaN" in loaded.warnings[0]
    assert loaded.samples[0].warnings == loaded.warnings
    s = load_sample(Pair("n", tmp_path / "images" / "n.tif", tmp_path / "masks" / "n_mask.png"))
    assert s.warnings == loaded.warnings


def test_broken_links_link_loops_and_folders_named_like_images_are_listed_as_skipped(tmp_path):
    write_pair(tmp_path, "a", np.zeros((8, 8), np.uint8), square_mask(8, 8))
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    (imgs / "dangling.png").symlink_to(imgs / "gone.png")
    (imgs / "loop.png").symlink_to(imgs / "loop.png")
    (imgs / "x.png").mkdir()
    (masks / "folder_mask.tif").mkdir()
    (imgs / "good_link.png").symlink_to(imgs / "a.png")
    atomic_write_image(masks / "good_link_mask.png", square_mask(8, 8))
    scan = scan_pairs(imgs, masks)
    assert [p.name for p in scan.pairs] == ["a", "good_link"]
    reasons = {s.path.name: s.problem for s in scan.skipped}
    assert "broken link" in reasons["dangling.png"] and "gone.png" in reasons["dangling.png"]
    assert "loop" in reasons["loop.png"]
    assert "folder" in reasons["x.png"] and "folder" in reasons["folder_mask.tif"]
    same = scan_pairs(imgs, imgs)  # one folder: each bad entry listed once
    assert sorted(s.path.name for s in same.skipped if "skipped" in s.problem and "link" in s.problem) == [
        "dangling.png", "loop.png"]


def test_file_names_that_are_not_utf8_scan_and_load(tmp_path):
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("non-UTF-8 file names are a Linux matter")
    name = os.fsdecode(b"caf\xe9")
    write_pair(tmp_path, name, np.zeros((8, 8), np.uint8), square_mask(8, 8))
    loaded = load_samples(scan_pairs(tmp_path / "images", tmp_path / "masks"))
    assert [s.name for s in loaded.samples] == [name] and loaded.skipped == []


def test_the_encoding_settled_on_open_is_the_one_loading_finds(tmp_path):
    """`settle_encoding` reads the masks only, and finds the mapping and the refused masks
    that `load_samples` finds; loading with it gives the same samples."""
    for i in range(3):
        write_pair(tmp_path, f"w{i}", np.full((8, 8), 40 * i, np.uint8), square_mask(8, 8, fg=255))
    write_pair(tmp_path, "one", np.zeros((8, 8), np.uint8), square_mask(8, 8, fg=1) + square_mask(8, 8, fg=2, y=0, x=0, s=2))
    (tmp_path / "masks" / "bad_mask.png").write_bytes(b"not a png")
    (tmp_path / "images" / "bad.png").write_bytes((tmp_path / "images" / "w0.png").read_bytes())
    scan = scan_pairs(tmp_path / "images", tmp_path / "masks")
    done = []
    encoding, skipped = ds.settle_encoding(scan, progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (5, 5)
    found = load_samples(scan)
    assert encoding == found.encoding and encoding.values == (0, 255)
    assert sorted(s.path.name for s in skipped) == sorted(s.path.name for s in found.skipped) == [
        "bad_mask.png", "one_mask.png"]
    settled = load_samples(scan, encoding=encoding)
    assert [s.name for s in settled.samples] == [s.name for s in found.samples] == ["w0", "w1", "w2"]
    for a, b in zip(settled.samples, found.samples):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image) and a.encoding == b.encoding
    assert [s.path.name for s in settled.skipped] == ["bad_mask.png", "one_mask.png"]  # refused by the mapping


def test_scale_rotate_moves_image_and_mask_together_and_costs_nothing_when_off():
    """augment_pair's scale_rotate: the mask follows the image (an image that is its own
    mask stays its mask after the warp, but on the few edge pixels where linear and
    nearest interpolation part), its classes stay classes; at 0 the random stream and
    the result are those of plain augmentation."""
    from ielstudio.core.dataset import augment_pair

    mask = np.zeros((64, 64), np.int64)
    mask[10:30, 20:50] = 1
    mask[40:56, 8:24] = 2
    image = (mask / 2.0).astype(np.float32)[None]
    moved = 0
    for seed in range(6):
        img, m = augment_pair(image, mask, np.random.default_rng(seed), None, True, scale_rotate=1.0)
        assert set(np.unique(m)) <= {0, 1, 2} and img.shape == (1, 64, 64)
        # intensity jitter (gain, bias, gamma) keeps the order of the three levels: nearest level = class
        levels = [np.median(img[0][m == c]) for c in range(3)]
        nearest = np.abs(img[0][..., None] - np.array(levels)).argmin(-1)
        assert (nearest == m).mean() > 0.95
        plain = augment_pair(image, mask, np.random.default_rng(seed), None, True)[1]
        moved += not np.array_equal(m, plain)
    assert moved == 6  # every pair was turned or scaled
    for seed in range(3):
        a = augment_pair(image, mask, np.random.default_rng(seed), 32, True)
        b = augment_pair(image, mask, np.random.default_rng(seed), 32, True, scale_rotate=0.0)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
