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
    assert enc.stored_values == ()  # colour masks: classes are not keyed by a gray value
    assert MaskEncoding("index", (0, 64, 128)).stored_values == (0, 64, 128)


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


# ------------------------------------------------------------------ hostile input (issue 19)

import struct  # noqa: E402
import zlib  # noqa: E402


def _png_with_size(width, height):
    """A small valid PNG whose IHDR (with a correct CRC) claims width x height px."""
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_png_claiming_100000_px_square_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_size(100_000, 100_000))
    for read in (read_image, read_mask):
        with pytest.raises(DataError) as e:  # was cv2.error, which aborted the whole run
            read(path)
        assert e.value.path == path and "100000 x 100000" in str(e.value) and "MAX_IMAGE_PIXELS" in str(e.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_image_size_limit_is_checked_before_decoding_every_format(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"a{suffix}"
    atomic_write_image(path, ramp(20, 30))
    assert imageio.image_size_from_header(path.read_bytes()) in (None, (30, 20))
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 599)
    decoded = []
    monkeypatch.setattr(imageio.cv2, "imdecode", lambda *a: decoded.append(1))
    monkeypatch.setattr(imageio.tifffile.TiffPage, "asarray", lambda *a, **k: decoded.append(1))
    with pytest.raises(DataError, match="30 x 20 px"):
        read_image(path)
    assert decoded == []
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 600)
    monkeypatch.undo()
    assert read_image(path).shape == (20, 30)


def test_cv2_error_and_memory_error_become_data_error(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    atomic_write_image(path, ramp())

    def cv2_fails(*a):
        raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS")

    monkeypatch.setattr(imageio.cv2, "imdecode", cv2_fails)
    with pytest.raises(DataError, match="OpenCV") as e:
        read_mask(path)
    assert e.value.path == path

    def no_memory(*a):
        raise MemoryError

    monkeypatch.setattr(imageio.cv2, "imdecode", no_memory)
    with pytest.raises(DataError, match="not enough memory"):
        read_image(path)


def test_misnamed_files_say_what_they_are(tmp_path):
    jpg = cv2.imencode(".jpg", ramp(16, 16))[1].tobytes()
    (tmp_path / "photo.png").write_bytes(jpg)
    with pytest.raises(DataError, match="it is a JPEG image, not PNG") as e:
        read_image(tmp_path / "photo.png")
    assert "truncated" not in str(e.value) and ".jpg" in str(e.value)
    (tmp_path / "notes.png").write_text("just some notes\nnot an image\n")
    with pytest.raises(DataError, match="not an image"):
        read_mask(tmp_path / "notes.png")
    (tmp_path / "scan.tif").write_bytes(cv2.imencode(".png", ramp())[1].tobytes())
    with pytest.raises(DataError, match="PNG image"):
        read_image(tmp_path / "scan.tif")
    assert imageio.sniff_format(b"GIF89a" + b"\0" * 20) == "gif"
    assert imageio.sniff_format(bytes(range(256))) is None


def test_nan_and_inf_pixels_are_zeroed_with_a_warning_naming_the_file(tmp_path):
    arr = np.ones((4, 5), np.float32)
    arr[0, 0], arr[1, 1], arr[2, 2] = np.nan, np.inf, -np.inf
    tifffile.imwrite(tmp_path / "f.tif", arr)
    warnings = []
    img = read_image(tmp_path / "f.tif", warnings)
    assert np.isfinite(img).all() and img[0, 0] == 0 and img[3, 4] == 1
    assert len(warnings) == 1 and str(tmp_path / "f.tif") in warnings[0] and "3 pixel" in warnings[0]
    read_image(tmp_path / "f.tif")  # without a list: still fine
    atomic_write_image(tmp_path / "ok.tif", np.ones((3, 3), np.float32))
    ok = []
    read_image(tmp_path / "ok.tif", ok)
    assert ok == []


def test_multipage_tiff_mask_is_refused_not_cut_to_page_one(tmp_path):
    stack = np.zeros((3, 6, 7), np.uint8)
    stack[1, 2:4, 2:4] = 255
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack")
    with pytest.raises(DataError, match="stack of 3 pages"):
        read_mask(tmp_path / "vol.tif")
    tifffile.imwrite(tmp_path / "one.tif", stack[1], photometric="minisblack")
    assert read_mask(tmp_path / "one.tif")[0].sum() == 4


def test_rgba_mask_with_label_in_alpha_is_read_and_written_back_in_alpha(tmp_path):
    m = np.zeros((6, 8, 4), np.uint8)
    m[..., :3] = (10, 20, 30)  # constant colour: it carries no label
    m[1:4, 2:6, 3] = 255
    atomic_write_image(tmp_path / "a.png", m)
    classes, enc = read_mask(tmp_path / "a.png")
    assert classes.sum() == 12 and classes[0, 0] == 0  # was: all foreground
    assert enc.alpha == "label" and enc.fill == (10, 20, 30) and enc.channels == 4
    assert MaskEncoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    edited = classes.copy()
    edited[5, 7] = 1
    write_mask(tmp_path / "out" / "a.png", edited, enc)
    back = read_raw(tmp_path / "out" / "a.png")
    assert back.shape == (6, 8, 4) and (back[..., :3] == (10, 20, 30)).all()
    np.testing.assert_array_equal(back[..., 3], edited.astype(np.uint8) * 255)


def test_rgba_colour_mask_transparent_pixels_are_background(tmp_path):
    m = np.zeros((6, 8, 4), np.uint8)
    m[...] = (255, 255, 255, 0)  # fully transparent white: background
    m[:2] = (255, 0, 0, 255)
    m[4:, :3] = (0, 0, 255, 255)
    atomic_write_image(tmp_path / "c.png", m)
    classes, enc = read_mask(tmp_path / "c.png")
    assert enc.kind == "color" and enc.colors == ((0, 0, 0), (0, 0, 255), (255, 0, 0))
    assert (classes == 0).sum() == 48 - 16 - 6 and enc.alpha == "background"
    write_mask(tmp_path / "out" / "c.png", classes, enc)
    back = read_raw(tmp_path / "out" / "c.png")
    np.testing.assert_array_equal(back[..., 3], np.where(classes > 0, 255, 0))
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "c.png")[0], classes)


def test_palette_png_mask_classes_are_palette_indices_and_written_back_indexed(tmp_path):
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 0), (0, 255, 0, 128)]  # index 2 repeats black
    idx = np.zeros((5, 6), np.uint8)
    idx[1, :] = 1
    idx[2, :] = 2
    idx[3, :] = 3
    data = imageio.encode_indexed_png(idx, palette)
    assert data[25] == 3 and b"PLTE" in data and b"tRNS" in data
    rgba = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert rgba[3, 0].tolist() == [0, 255, 0, 128] and rgba[1, 0].tolist() == [255, 0, 0, 255]
    (tmp_path / "p.png").write_bytes(data)
    classes, enc = read_mask(tmp_path / "p.png")
    np.testing.assert_array_equal(classes, idx)  # was: colours, black of index 0 and 2 merged
    assert enc.n_classes == 4 and enc.palette[1] == (255, 0, 0, 255) and enc.palette[3] == (0, 255, 0, 128)
    edited = classes.copy()
    edited[0, 0] = 3
    write_mask(tmp_path / "out" / "p.png", edited, enc)
    out = (tmp_path / "out" / "p.png").read_bytes()
    assert out[25] == 3 and imageio._png_palette(out) == enc.palette
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "p.png")[0], edited)


def test_palette_png_made_by_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    idx = np.zeros((4, 4), np.uint8)
    idx[1:3, 1:3] = 5
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0] + [200, 10, 10] * 4 + [0, 128, 255] + [0, 0, 0] * 250)
    img.save(tmp_path / "pil.png")
    classes, enc = read_mask(tmp_path / "pil.png")
    np.testing.assert_array_equal(classes, idx)
    assert enc.n_classes == 6 and enc.palette[5] == (0, 128, 255)
    write_mask(tmp_path / "out" / "pil.png", classes, enc)
    again = Image.open(tmp_path / "out" / "pil.png")
    assert again.mode == "P" and np.array_equal(np.asarray(again), idx)
    assert again.getpalette()[15:18] == [0, 128, 255]


def test_palette_index_beyond_class_limit_is_refused(tmp_path):
    idx = np.zeros((3, 3), np.uint8)
    idx[1, 1] = 255
    (tmp_path / "voc.png").write_bytes(imageio.encode_indexed_png(idx, [(i, i, i) for i in range(256)]))
    with pytest.raises(DataError, match="palette index 255"):
        read_mask(tmp_path / "voc.png")


def test_sixteen_bit_binary_mask_reads_as_binary_and_maps_onto_a_0_255_dataset(tmp_path):
    m = np.zeros((5, 5), np.uint16)
    m[1:3, 1:3] = 65535
    atomic_write_image(tmp_path / "m16.png", m)
    classes, enc = read_mask(tmp_path / "m16.png")
    assert enc.kind == "binary" and enc.values == (0, 65535) and imageio.is_binary_mask_encoding(enc)
    dataset = MaskEncoding.gray(2, 255)
    mapped, fenc = read_mask(tmp_path / "m16.png", dataset)
    assert mapped.max() == 1 and fenc.values == (0, 65535) and fenc.dtype == "uint16"
    write_mask(tmp_path / "out" / "m16.png", mapped, fenc)
    np.testing.assert_array_equal(read_raw(tmp_path / "out" / "m16.png"), m)
    assert not imageio.is_binary_mask_encoding(MaskEncoding.gray(2, 3))  # 0/3 is class 3


def test_encoding_values_that_overflow_the_file_dtype_give_a_clear_error(tmp_path):
    enc = MaskEncoding.gray(3, 200, "uint8", ".bmp")
    with pytest.raises(ValueError, match="do not fit"):
        write_mask(tmp_path / "x.bmp", np.array([[0, 2]]), enc)
    assert enc.with_file_format(MaskEncoding.gray(2, 1, "uint8", ".png")).dtype == "uint16"


def test_atomic_write_text_escapes_names_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"\xff.png")  # a Linux file name that is not UTF-8
    atomic_write_text(tmp_path / "report.csv", f"name\n{name}\n")
    assert (tmp_path / "report.csv").read_text("utf-8") == "name\n\\udcff.png\n"
    if sys.platform.startswith("linux"):
        atomic_write_text(tmp_path / name, "x")  # the file name itself is fine too
        assert os.fsencode(tmp_path / name).endswith(b"\xff.png")


@pytest.mark.parametrize("where,err", [("fsync", 28), ("replace", 13)])
def test_atomic_write_errors_name_the_target_not_the_temp_file(tmp_path, monkeypatch, where, err):
    target = tmp_path / "mask.png"

    def fail(*a, **k):
        raise OSError(err, os.strerror(err), str(tmp_path / ".mask.png.abc123.ielstudio-tmp"))

    monkeypatch.setattr(imageio.os, where, fail)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"data")
    monkeypatch.undo()
    assert e.value.errno == err and e.value.filename == str(target)
    assert "mask.png" in str(e.value) and "ielstudio-tmp" not in str(e.value)
    assert (err == 13) == isinstance(e.value, PermissionError)
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temp_files_removes_only_old_temp_files_of_ours(tmp_path):
    import time

    old = time.time() - 3600
    stale = tmp_path / f"{imageio.temp_name_prefix(tmp_path / 'a.png')}k3j2h1{imageio.TEMP_SUFFIX}"
    fresh = tmp_path / f".b.png.x8y7z6{imageio.TEMP_SUFFIX}"
    user = tmp_path / ".notes.tmp"
    for p in (stale, fresh, user):
        p.write_bytes(b"partial")
    os.utime(stale, (old, old))
    os.utime(user, (old, old))
    removed = imageio.remove_stale_temp_files(tmp_path)
    assert removed == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, user.name])
    assert imageio.remove_stale_temp_files(tmp_path / "missing") == []
    # the temp files atomic writes make are recognised
    seen = []
    real = imageio.os.replace
    monkey = pytest.MonkeyPatch()
    monkey.setattr(imageio.os, "replace", lambda a, b: (seen.append(a), real(a, b)))
    atomic_write_bytes(tmp_path / ("n" * 250 + ".png"), b"x")  # long names still fit
    monkey.undo()
    assert imageio.is_temp_file_name(os.path.basename(seen[0]))


def test_a_tiff_with_very_many_pages_is_refused_without_walking_them_all(tmp_path):
    """A damaged or crafted TIFF can chain page after page; counting stops after
    MAX_TIFF_PAGES, so it is refused at once instead of parsed for minutes."""
    from ielstudio.core.imageio import MAX_TIFF_PAGES

    with tifffile.TiffWriter(tmp_path / "many.tif") as tw:
        for _ in range(MAX_TIFF_PAGES + 5):
            tw.write(np.zeros((2, 2), np.uint8), contiguous=False)
    with pytest.raises(DataError, match=f"stack of more than {MAX_TIFF_PAGES} pages"):
        read_mask(tmp_path / "many.tif")
    assert read_image(tmp_path / "many.tif").shape == (2, 2)  # an image is its first page
