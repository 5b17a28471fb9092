"""Fuzz the image and mask readers with mutated PNG, TIFF and JPEG bytes (issue 19).

Small valid files made with OpenCV/tifffile are damaged (bytes flipped, cut,
inserted, header fields overwritten); whatever comes out, the readers may only
raise the project's own DataError, naming the file. Bounded to run in seconds.
"""

import io
import zlib
from unittest import mock

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ielstudio.core import imageio
from ielstudio.core.errors import DataError


def _seeds() -> dict[str, list[bytes]]:
    y, x = np.mgrid[0:12, 0:10]
    gray = ((y * 10 + x) * 2).astype(np.uint8)
    mask = np.zeros((12, 10), np.uint8)
    mask[3:8, 2:6] = 255
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    rgba = np.concatenate([rgb, mask[..., None]], axis=-1)
    png = [cv2.imencode(".png", a)[1].tobytes()
           for a in (gray, mask, rgb, rgba, mask.astype(np.uint16) * 257)]
    png.append(imageio.encode_indexed_png((mask > 0).astype(np.uint8), [(0, 0, 0), (200, 30, 30, 128)]))
    tiff = []
    for arr, kw in ((gray, {}), (mask, {"compression": "zlib"}), (rgb, {"photometric": "rgb"}),
                    (np.stack([mask, mask]), {}), (gray.astype(np.float32) / 7, {})):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        tiff.append(buf.getvalue())
    jpeg = [cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for a in (gray, rgb)]
    return {".png": png, ".tif": tiff, ".jpg": jpeg}


SEEDS = _seeds()

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("big"), st.integers(0, 10**6), st.sampled_from([b"\xff\xff", b"\x7f\xff\xff\xff", b"\0\0"])),
    # PNG width/height (bytes 16..24 of the IHDR): huge, zero or odd sizes
    st.tuples(st.just("dims"), st.sampled_from([0, 1, 3, 70_000, 100_000, 2**31 - 1]),
              st.sampled_from([0, 1, 12, 70_000, 100_000])),
)


def _mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in mutations:
        if not b:
            break
        i = pos % len(b)
        if kind == "dims" and not b.startswith(b"\x89PNG"):
            continue
        if kind == "flip":
            b[i] ^= arg
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "dims":
            b[16:24] = pos.to_bytes(4, "big") + arg.to_bytes(4, "big")
        else:  # overwrite with a large number: sizes, offsets, lengths
            b[i:i + len(arg)] = arg
    return bytes(b)


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC, so that libpng takes mutated headers at their word."""
    b = bytearray(data)
    i = 8
    while i + 12 <= len(b):
        length = int.from_bytes(b[i:i + 4], "big")
        end = i + 8 + length
        if end + 4 > len(b):
            break
        b[end:end + 4] = (zlib.crc32(bytes(b[i + 4:end])) & 0xFFFFFFFF).to_bytes(4, "big")
        i = end + 4
    return bytes(b)


def _check(tmp_path, suffix: str, data: bytes) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    # a small limit keeps mutated "huge image" headers from making the test slow
    with mock.patch.object(imageio, "MAX_IMAGE_PIXELS", 1 << 20):
        for read in (imageio.read_image, imageio.read_mask):
            try:
                read(path)
            except DataError as e:
                assert e.path == path, e
            # anything else propagates and fails the test


_SETTINGS = settings(max_examples=150, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_mutated_files_raise_only_data_error(tmp_path, suffix):
    @_SETTINGS
    @given(seed=st.sampled_from(SEEDS[suffix]), mutations=st.lists(_mutation, min_size=1, max_size=4),
           fix_crc=st.booleans())
    def run(seed, mutations, fix_crc):
        data = _mutate(seed, mutations)
        if fix_crc and suffix == ".png":
            data = _fix_png_crcs(data)
        _check(tmp_path, suffix, data)

    run()


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from([".png", ".tif", ".jpg"]), name=st.sampled_from([".png", ".tif", ".jpg", ".bmp"]),
       index=st.integers(0, 10), mutations=st.lists(_mutation, max_size=2))
def test_files_under_the_wrong_name_raise_only_data_error(tmp_path, source, name, index, mutations):
    seeds = SEEDS[source]
    _check(tmp_path, name, _mutate(seeds[index % len(seeds)], mutations))


def test_seeds_are_valid():
    for suffix, seeds in SEEDS.items():
        for data in seeds:
            assert imageio.sniff_format(data) == {".png": "png", ".tif": "tiff", ".jpg": "jpeg"}[suffix]
