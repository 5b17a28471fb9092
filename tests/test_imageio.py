"""Reading/writing images and masks in each supported format; atomic writes; bad files."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ielstudio.core import imageio
from ielstudio.core.errors import DataError
from ielstudio.core.imageio import (
    MaskEncoding,
    atomic_write_bytes,
    atomic_write_image,
    atomic_write_text,
    ensure_not_overwriting,
    normalize_intensity,
    read_image,
    read_mask,
    read_raw,
    write_mask,
)


def ramp(h=20, w=30, dtype=np.uint8, channels=0, scale=1):
    y, x = np.mgrid[0:h, 0:w]
    a = (y * w + x) * scale
    if channels:
        a = np.stack([a, a[::-1] // 2, a[:, ::-1] // 3], axis=-1)
    return (a % (np.iinfo(dtype).max + 1)).astype(dtype)


# ------------------------------------------------------------------ images

@pytest.mark.parametrize("suffix,dtype,channels", [
    (suffix, dtype, channels)
    for suffix in (".png", ".bmp", ".tif", ".tiff")
    for dtype in (np.uint8, np.uint16)
    for channels in (0, 3)
    if not (suffix == ".bmp" and dtype == np.uint16)  # BMP has no 16-bit
])
def test_image_round_trip_is_exact(tmp_path, suffix, dtype, channels):
    arr = ramp(dtype=dtype, channels=channels, scale=37 if dtype == np.uint16 else 1)
    path = tmp_path / f"img{suffix}"
    atomic_write_image(path, arr)
    raw = read_raw(path)
    assert raw.dtype == dtype and raw.shape == arr.shape
    np.testing.assert_array_equal(raw, arr)
    img = read_image(path)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, arr.astype(np.float32))


def test_rgb_channel_order_is_rgb(tmp_path):
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[..., 0] = 200  # red
    atomic_write_image(tmp_path / "red.png", arr)
    # OpenCV itself (BGR) sees the red value in its last channel
    bgr = cv2.imread(str(tmp_path / "red.png"))
    assert bgr[0, 0].tolist() == [0, 0, 200]
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [200.0, 0.0, 0.0]


def test_jpeg_with_exif_thumbnail_and_trailer_is_complete_but_cut_one_is_not(tmp_path):
    main = imageio.encode_image(".jpg", ramp(64, 64))
    thumb = imageio.encode_image(".jpg", ramp(8, 8))
    # an APP1 segment right after SOI holding a whole thumbnail JPEG (with its own end marker)
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumb
    full = main[:2] + app1 + main[2:] + b"TRAILER" * 1000
    (tmp_path / "ok.jpg").write_bytes(full)
    assert read_image(tmp_path / "ok.jpg").shape == (64, 64)
    (tmp_path / "cut.jpg").write_bytes(main[:2] + app1 + main[2:-200])
    with pytest.raises(DataError, match="JPEG file is truncated"):
        read_image(tmp_path / "cut.jpg")


def test_jpeg_image_reads_approximately(tmp_path):
    arr = np.full((16, 16), 120, np.uint8)
    atomic_write_image(tmp_path / "a.jpg", arr)
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (16, 16) and abs(float(img.mean()) - 120) < 2


def test_multipage_and_planar_tiff_give_first_plane(tmp_path):
    stack = np.stack([np.full((6, 7), v, np.uint16) for v in (10, 20, 30)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")  # 3 pages
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), np.full((6, 7), 10, np.float32))
    planar = np.stack([np.full((6, 7), v, np.uint8) for v in (1, 2, 3)])  # (3, H, W) RGB planes
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    img = read_image(tmp_path / "planar.tif")
    assert img.shape == (6, 7, 3) and img[0, 0].tolist() == [1.0, 2.0, 3.0]


def test_rgba_png_drops_alpha(tmp_path):
    arr = np.zeros((3, 4, 4), np.uint8)
    arr[..., 1] = 50
    arr[..., 3] = 255
    atomic_write_image(tmp_path / "a.png", arr)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (3, 4, 3) and img[0, 0].tolist() == [0.0, 50.0, 0.0]


def test_float_tiff_keeps_values(tmp_path):
    arr = np.linspace(-3.5, 1e4, 12, dtype=np.float32).reshape(3, 4)
    atomic_write_image(tmp_path / "f.tif", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), arr)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_truncated_files_raise_data_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    atomic_write_image(path, ramp(64, 64, channels=3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(path) in str(e.value) and e.value.path == path


def test_empty_missing_and_garbage_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_bytes(b"hello this is not a png IEND")
    with pytest.raises(DataError, match="cannot decode PNG"):
        read_image(tmp_path / "text.png")
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(tmp_path / "x.gif")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=300), suffix=st.sampled_from([".png", ".tif", ".jpg", ".bmp"]))
def test_random_bytes_never_crash(tmp_path, data, suffix):
    path = tmp_path / f"rnd{suffix}"
    path.write_bytes(data)
    try:
        read_mask(path)
    except DataError as e:
        assert e.path == path


def test_normalize_intensity_percentiles_and_constant():
    img = np.arange(101, dtype=np.float32)  # percentile p is exactly p
    out = normalize_intensity(img, 10, 90)
    assert out.dtype == np.float32
    assert out[10] == 0.0 and out[90] == 1.0 and out[0] == 0.0 and out[100] == 1.0
    assert out[50] == pytest.approx(0.5)
    assert not normalize_intensity(np.full((4, 4), 7.0)).any()
    # percentiles equal (mostly constant) -> full range used, no division by zero
    spiky = np.zeros((10, 10), np.float32)
    spiky[0, 0] = 5
    out = normalize_intensity(spiky)
    assert out[0, 0] == 1.0 and out.sum() == 1.0


# ------------------------------------------------------------------ medical (optional)

def test_nifti_slice(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(read_image(tmp_path / "v.nii.gz"), vol[:, :, 0].T.astype(np.float32))


def test_dicom_example():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(img, expected)


def test_missing_medical_extra_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / "a.nii").write_bytes(b"x")
    for name in ("a.dcm", "a.nii"):
        with pytest.raises(DataError, match=r"ielstudio\[medical\]"):
            read_image(tmp_path / name)


# ------------------------------------------------------------------ masks

def blob_mask(h=24, w=32, fg=255, dtype=np.uint8):
    m = np.zeros((h, w), dtype)
    m[4:12, 5:15] = fg
    return m


@pytest.mark.parametrize("fg", [255, 1])
def test_binary_mask_round_trip_same_values_and_name(tmp_path, fg):
    src = tmp_path / "in" / "cell_mask.png"
    atomic_write_image(src, blob_mask(fg=fg))
    classes, enc = read_mask(src)
    assert classes.dtype == np.int64 and set(np.unique(classes)) == {0, 1}
    assert classes.sum() == 80
    assert enc.kind == "binary" and enc.values == (0, fg) and enc.suffix == ".png"
    dst = tmp_path / "out" / src.name
    write_mask(dst, classes, enc)
    np.testing.assert_array_equal(read_raw(dst), blob_mask(fg=fg))
    assert read_raw(dst).dtype == np.uint8


def test_index_mask_16bit_tiff_round_trip(tmp_path):
    m = np.zeros((10, 12), np.uint16)
    m[1:4, 1:4], m[5:8, 5:9], m[0, 11] = 1, 3, 2
    atomic_write_image(tmp_path / "m.tif", m)
    classes, enc = read_mask(tmp_path / "m.tif")
    assert enc.kind == "index" and enc.values == (0, 1, 2, 3) and enc.dtype == "uint16"
    np.testing.assert_array_equal(classes, m.astype(np.int64))
    write_mask(tmp_path / "o" / "m.tif", classes, enc)
    out = tifffile.imread(tmp_path / "o" / "m.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, m)


def test_evenly_spaced_gray_levels_are_classes(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[0:2], m[2:4], m[4:6] = 85, 170, 255
    atomic_write_image(tmp_path / "lv.png", m)
    classes, enc = read_mask(tmp_path / "lv.png")
    assert enc.values == (0, 85, 170, 255)
    assert classes[1, 0] == 1 and classes[3, 0] == 2 and classes[5, 0] == 3 and classes[7, 0] == 0


def test_colour_mask_round_trip(tmp_path):
    m = np.zeros((10, 10, 3), np.uint8)
    m[1:4, 1:4] = (255, 0, 0)
    m[5:9, 5:9] = (0, 255, 0)
    atomic_write_image(tmp_path / "c.png", m)
    classes, enc = read_mask(tmp_path / "c.png")
    assert enc.kind == "color" and enc.colors == ((0, 0, 0), (0, 255, 0), (255, 0, 0))
    assert (classes == 2).sum() == 9 and (classes == 1).sum() == 16
    write_mask(tmp_path / "o" / "c.png", classes, enc)
    np.testing.assert_array_equal(read_raw(tmp_path / "o" / "c.png"), m)


def test_gray_mask_saved_as_rgb_is_written_back_as_rgb(tmp_path):
    m = np.repeat(blob_mask()[..., None], 3, axis=2)
    atomic_write_image(tmp_path / "g.png", m)
    classes, enc = read_mask(tmp_path / "g.png")
    assert enc.kind == "binary" and enc.channels == 3
    write_mask(tmp_path / "o" / "g.png", classes, enc)
    np.testing.assert_array_equal(read_raw(tmp_path / "o" / "g.png"), m)


def test_read_with_dataset_encoding_maps_values(tmp_path):
    atomic_write_image(tmp_path / "a.png", blob_mask(fg=2))
    dataset_enc = MaskEncoding.gray(4, 1)
    classes, enc = read_mask(tmp_path / "a.png", dataset_enc)
    assert classes.max() == 2 and enc.values == (0, 1, 2, 3)
    atomic_write_image(tmp_path / "b.png", blob_mask(fg=9))
    with pytest.raises(DataError, match="not one of the dataset's class values"):
        read_mask(tmp_path / "b.png", dataset_enc)


def test_jpeg_mask_rejected_with_file_name(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (32, 32), 20, 255, -1)
    path = tmp_path / "nucleus_mask.jpg"
    atomic_write_image(path, m)
    with pytest.raises(DataError) as e:
        read_mask(path)
    msg = str(e.value)
    n = len(np.unique(read_raw(path)))
    assert n > 2
    assert msg.startswith(f"{path}: mask has {n} distinct values; expected class indices or 0/255")
    assert "saved as JPEG" in msg


def test_many_grey_levels_message_counts_them(tmp_path):
    m = (np.arange(100 * 3) % 100).reshape(30, 10).astype(np.uint8)
    atomic_write_image(tmp_path / "m.png", m)
    with pytest.raises(DataError, match="mask has 100 distinct values; expected class indices or 0/255"):
        read_mask(tmp_path / "m.png")


def test_stray_value_in_binary_mask(tmp_path):
    m = blob_mask()
    m[0, 0] = 128
    atomic_write_image(tmp_path / "s.png", m)
    with pytest.raises(DataError, match="stray values such as 128"):
        read_mask(tmp_path / "s.png")


def test_fractional_and_negative_masks(tmp_path):
    atomic_write_image(tmp_path / "f.tif", np.array([[0, 0.5], [1, 1]], np.float32))
    with pytest.raises(DataError, match="non-integer"):
        read_mask(tmp_path / "f.tif")
    atomic_write_image(tmp_path / "n.tif", np.array([[0, -1], [1, 1]], np.int16))
    with pytest.raises(DataError, match="negative"):
        read_mask(tmp_path / "n.tif")


def test_mask_encoding_json_round_trip():
    enc = MaskEncoding("color", (), ((0, 0, 0), (255, 0, 0)), "uint8", ".tif", 4)
    assert MaskEncoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    assert enc.n_classes == 2


def test_write_mask_refuses_to_overwrite_original(tmp_path):
    src = tmp_path / "m_mask.png"
    atomic_write_image(src, blob_mask())
    before = src.read_bytes()
    classes, enc = read_mask(src)
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_mask(src, np.zeros_like(classes), enc, protect=[src])
    link = tmp_path / "link.png"
    os.symlink(src, link)
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_mask(link, np.zeros_like(classes), enc, protect=[src])
    with pytest.raises(DataError):
        ensure_not_overwriting(tmp_path / "." / "m_mask.png", [src])
    assert src.read_bytes() == before
    ensure_not_overwriting(tmp_path / "other.png", [src])  # different file: fine


def test_write_mask_rejects_jpeg_and_out_of_range_classes(tmp_path):
    enc = MaskEncoding.gray(2, 255)
    with pytest.raises(DataError, match="losslessly"):
        write_mask(tmp_path / "m.jpg", np.zeros((3, 3), np.int64), enc)
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.png", np.full((3, 3), 2), enc)
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------ atomic writes

def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "héllo")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic_write_image(tmp_path / "sub" / "c.png", blob_mask())
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt", "b.bin", "c.png"]
    assert (tmp_path / "sub" / "a.txt").read_text("utf-8") == "héllo"


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old content")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(imageio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new content that never lands")
    monkeypatch.undo()
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_image_encode_error_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_image(tmp_path / "x.png", np.full((3, 3), -5, np.int32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_umask_mode_not_private(tmp_path):
    import os
    import stat

    from ielstudio.core.imageio import atomic_write_bytes

    old = os.umask(0o022)
    os.umask(old)
    target = tmp_path / "m.png"
    atomic_write_bytes(target, b"x")
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~old, oct(mode)
