"""Read and write images and masks in every supported format; atomic writes.

Images: PNG, JPEG, BMP (OpenCV), TIFF (tifffile; first page, 8/16/32-bit, gray or
RGB), DICOM and NIfTI 2-D slices when the optional ``ielstudio[medical]`` extra is
installed (first frame / first slice of a volume).

Masks are returned as class-index arrays (``int64``, 0 = background) together with
a :class:`MaskEncoding` that records how the file stored them, so that
:func:`write_mask` writes a corrected mask back in the same convention, format and
name. Accepted conventions (per file):

- ``binary``: two stored values ``0`` and ``v`` (0/255, 0/1, 0/65535 ...).
- ``index``: gray levels that are multiples of a common step ``s``: class = value / s
  (0..C-1 class indices, or e.g. 0/85/170/255 for 4 classes). At most
  ``MAX_CLASSES`` classes.
- ``color``: RGB masks with one colour per class; black is background (class 0).

Anything else (many grey levels from JPEG compression or interpolation, stray
values such as 128 in a 0/255 mask, negative or fractional values) raises
:class:`~ielstudio.core.errors.DataError` naming the file and the problem.
Indexed (palette) PNGs: class = palette index, written back indexed with the
file's palette. RGBA: labels in the alpha channel (constant colour) are read
from and written to the alpha channel; fully transparent pixels are background.
Multi-page TIFF masks are refused (volumes are not supported yet).

Hostile files: the readers raise only DataError. The content must match the
name (a JPEG named ``.png`` is reported as a JPEG); sizes are checked from the
header against :data:`MAX_IMAGE_PIXELS` before anything is decoded.

Writes are atomic (temp file ``.<name>.<random>.ielstudio-tmp`` + ``os.replace``);
:func:`remove_stale_temp_files` removes the ones a killed process left.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import tifffile

from .errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz",
)
#: Files considered masks when pairing. JPEG is listed so that a JPEG mask is paired
#: and then rejected with a clear reason instead of being reported as "no mask".
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
#: Formats a mask can be written to (lossless).
WRITABLE_MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
MAX_CLASSES = 64

_CV2_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")


def file_suffix(path: str | Path) -> str:
    """Lower-case extension, with ``.nii.gz`` kept as one suffix."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def file_stem(path: str | Path) -> str:
    """File name without its (possibly double, ``.nii.gz``) extension."""
    name = os.path.basename(os.fspath(path))
    suf = file_suffix(name)
    return name[: len(name) - len(suf)] if suf else name


# --------------------------------------------------------------------------- limits

#: Largest image (width x height, any number of channels) the readers decode. A
#: 10000 x 10000 px RGB image takes 1.2 GB as the float32 array training uses, plus
#: the decoded file and the int64 class mask (0.8 GB): about what a 16 GB desktop
#: can hold next to the model. Set ``imageio.MAX_IMAGE_PIXELS`` higher to allow more
#: (the value is read on every call). Checked from the file header, before decoding.
MAX_IMAGE_PIXELS = 100_000_000

#: File signatures (magic bytes) -> format name; see :func:`sniff_format`.
_FORMAT_NAMES = {
    "png": "PNG image", "jpeg": "JPEG image", "bmp": "BMP image", "tiff": "TIFF image",
    "gif": "GIF image", "webp": "WebP image", "dicom": "DICOM file", "gzip": "gzip archive",
    "zip": "ZIP archive", "pdf": "PDF document", "text": "text file",
}
_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif",
                  "webp": ".webp", "dicom": ".dcm", "gzip": ".gz", "zip": ".zip", "pdf": ".pdf", "text": ".txt"}
_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff"}


def sniff_format(data: bytes) -> str | None:
    """What a file's first bytes say it is, whatever its name.

    One of ``"png", "jpeg", "bmp", "tiff", "gif", "webp", "dicom", "gzip", "zip",
    "pdf", "text"``, or None when the content is not recognised.
    """
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"%PDF"):
        return "pdf"
    sample = data[:1024]
    if sample and b"\x00" not in sample:
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError as e:  # a multi-byte character cut at the sample's end is fine
            text = sample[: e.start].decode("utf-8") if e.start >= len(sample) - 3 else ""
        if text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
            return "text"
    return None


def _check_format(path: Path, suffix: str, data: bytes) -> None:
    """Raise DataError when the bytes are not the format the file name says, naming what they are."""
    expected = _SUFFIX_FORMAT[suffix]
    actual = sniff_format(data)
    if actual == expected:
        return
    want = suffix[1:].upper()
    if actual == "text":
        raise DataError(path, f"cannot decode {want} file: it is not an image (the file holds text)")
    if actual is None:
        raise DataError(path, f"cannot decode {want} file: it does not start like one "
                              "(damaged, or not an image)")
    raise DataError(path, f"cannot decode {want} file: it is a {_FORMAT_NAMES[actual]}, not {want} "
                          f"(rename it to {_FORMAT_SUFFIX[actual]})")


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG or BMP header without decoding pixels; None if unknown."""
    kind = sniff_format(data)
    try:
        if kind == "png":
            if data[12:16] != b"IHDR":
                return None
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if kind == "bmp":
            dib = struct.unpack("<I", data[14:18])[0]
            if dib == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            i, n = 2, len(data)
            while i + 4 <= n:
                if data[i] != 0xFF:
                    return None
                m = data[i + 1]
                if m == 0xFF:  # fill byte
                    i += 1
                    continue
                if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
                    i += 2
                    continue
                if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                    return None
                length = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return (w, h) if h else None  # height 0: given later by a DNL marker
                i += 2 + length
    except struct.error:  # header cut short
        return None
    return None


def check_image_size(path: str | Path, width: int, height: int) -> None:
    """Raise DataError when ``width x height`` exceeds :data:`MAX_IMAGE_PIXELS`."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(path, f"image is {width} x {height} px ({width * height / 1e6:,.0f} Mpx), more than "
                              f"the {MAX_IMAGE_PIXELS / 1e6:,.0f} Mpx limit (imageio.MAX_IMAGE_PIXELS); "
                              "crop or tile it, or raise the limit")


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(path, "is a broken link (its target does not exist)") from None
        raise DataError(path, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a file") from None
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    except MemoryError:
        raise DataError(path, "not enough memory to read the file") from None
    if not data:
        raise DataError(path, "file is empty (0 bytes)")
    return data


def _check_complete(path: Path, suffix: str, data: bytes) -> None:
    """Catch truncated PNG/JPEG files that decoders may half-decode silently."""
    if suffix == ".png" and data.rfind(b"IEND") < 0:
        raise DataError(path, "PNG file is truncated or damaged (no end marker)")
    # JPEG: an end-of-image marker must follow the last start-of-scan (entropy-coded
    # data cannot contain it; an EXIF thumbnail's marker comes before the main scan)
    if suffix in _JPEG_EXTENSIONS and data.find(b"\xff\xd9", max(0, data.rfind(b"\xff\xda"))) < 0:
        raise DataError(path, "JPEG file is truncated or damaged (no end marker)")


def _first_plane(arr: np.ndarray) -> np.ndarray:
    """Reduce a decoded array to (H, W) or (H, W, C): first page/plane of stacks."""
    arr = np.asarray(arr)
    # planar RGB(A) stored as (C, H, W)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _decode_cv2(path: Path, suffix: str, data: bytes) -> np.ndarray:
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        first = (str(e).strip().splitlines() or [""])[-1][:160]
        raise DataError(path, f"cannot decode {suffix[1:].upper()} file (OpenCV: {first})") from None
    except MemoryError:
        raise DataError(path, "not enough memory to decode the image") from None
    if arr is None:
        raise DataError(path, f"cannot decode {suffix[1:].upper()} file (damaged or not an image)")
    return arr


def _read_cv2(path: Path, suffix: str, data: bytes | None = None) -> np.ndarray:
    data = _read_bytes(path) if data is None else data
    _check_format(path, suffix, data)
    size = image_size_from_header(data)
    if size is None and suffix == ".png":
        raise DataError(path, "PNG file is damaged (no image header)")
    if size is not None:
        if 0 in size:
            raise DataError(path, f"image header says {size[0]} x {size[1]} px")
        check_image_size(path, *size)
    _check_complete(path, suffix, data)
    arr = _decode_cv2(path, suffix, data)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


#: Pages of a TIFF looked at, at most, to tell a single image from a stack: a damaged or
#: crafted file can chain millions of page headers (tifffile's `series` walks them all,
#: logging each bad one, for minutes and gigabytes).
MAX_TIFF_PAGES = 1000


def _count_tiff_pages(tf) -> int:
    """Full-resolution pages, counted up to MAX_TIFF_PAGES + 1 (reduced-resolution
    thumbnails, subfile type 1, are not pages of the image)."""
    n = 0
    for i in range(MAX_TIFF_PAGES + 1):
        try:
            page = tf.pages[i]
        except Exception:  # past the last page, or a damaged header: no more pages
            break
        if i and getattr(page, "is_reduced", False):
            continue
        n += 1
        if n > MAX_TIFF_PAGES:
            break
    return n


def _read_tiff(path: Path, single_page: bool = False) -> np.ndarray:
    """First page of a TIFF; ``single_page``: refuse stacks (masks must not lose pages)."""
    data = _read_bytes(path)
    _check_format(path, ".tif", data)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            try:
                page = tf.pages[0]
            except IndexError:
                raise DataError(path, "TIFF file has no pages") from None
            h, w = int(getattr(page, "imagelength", 0)), int(getattr(page, "imagewidth", 0))
            if h <= 0 or w <= 0:
                raise DataError(path, f"TIFF page is {w} x {h} px")
            check_image_size(path, w, h)
            if single_page:
                n = _count_tiff_pages(tf)
                depth = int(getattr(page, "imagedepth", 1) or 1)
                if n > 1 or depth > 1:
                    many = f"more than {MAX_TIFF_PAGES}" if n > MAX_TIFF_PAGES else str(max(n, depth))
                    raise DataError(path, f"TIFF holds a stack of {many} pages; masks must be "
                                          "single 2-D images (volumes are not supported yet) - "
                                          "save each slice as its own file")
            return page.asarray()
    except DataError:
        raise
    except MemoryError:
        raise DataError(path, "not enough memory to decode the TIFF file") from None
    except Exception as e:  # tifffile raises many kinds for damaged files
        raise DataError(path, f"cannot decode TIFF file ({type(e).__name__}: {e})") from None


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError(path, "DICOM support is not installed: pip install 'ielstudio[medical]'") from None
    try:
        ds = pydicom.dcmread(str(path))
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        check_image_size(path, cols, rows)
        arr = np.asarray(ds.pixel_array)
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"cannot decode DICOM file ({type(e).__name__}: {e})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    arr = arr.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: high values are dark
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise DataError(path, "NIfTI support is not installed: pip install 'ielstudio[medical]'") from None
    try:
        img = nibabel.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) >= 2:
            check_image_size(path, shape[0], shape[1])
        # NIfTI stores (x, y, z, ...): read only the first slice of every extra axis
        arr = np.asarray(img.dataobj[(slice(None), slice(None)) + (0,) * (len(shape) - 2)]
                         if len(shape) > 2 else img.dataobj)
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"cannot decode NIfTI file ({type(e).__name__}: {e})") from None
    # transpose so rows are y (the usual radiological display is left to viewers).
    while arr.ndim > 2:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"NIfTI data has shape {arr.shape}; expected a 2-D slice")
    return arr.T


def _read_raw(path: Path, single_page: bool = False) -> np.ndarray:
    suffix = file_suffix(path)
    if suffix in _CV2_EXTENSIONS:
        arr = _read_cv2(path, suffix)
    elif suffix in _TIFF_EXTENSIONS:
        arr = _read_tiff(path, single_page)
    elif suffix == ".dcm":
        arr = _read_dicom(path)
    elif suffix in (".nii", ".nii.gz"):
        arr = _read_nifti(path)
    else:
        raise DataError(path, f"unsupported file type '{suffix or path.name}'")
    arr = _first_plane(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(path, f"decoded data has unusable shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise DataError(path, "complex-valued data is not an image")
    return arr


def read_raw(path: str | Path) -> np.ndarray:
    """Decode a file to its stored values and dtype: (H, W) or (H, W, 3|4), RGB order.

    Raises DataError (never another error) for unreadable, damaged, mislabelled
    (e.g. a JPEG named ``.png``) or oversized files (:data:`MAX_IMAGE_PIXELS`).
    """
    path = Path(path)
    try:
        return _read_raw(path)
    except MemoryError:
        raise DataError(path, "not enough memory to decode the image") from None


def read_image(path: str | Path, warnings: list[str] | None = None) -> np.ndarray:
    """Read an image as float32 ``(H, W)`` or ``(H, W, 3)`` in its raw value range.

    Alpha channels are dropped; multi-page files give their first page. NaN and
    infinite values become 0; when ``warnings`` (a list) is given, a message naming
    the file and the count is appended to it.
    """
    path = Path(path)
    arr = read_raw(path)
    if arr.ndim == 3:
        arr = arr[..., :3]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    try:
        out = arr.astype(np.float32)
        finite = np.isfinite(out)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
            if warnings is not None:
                warnings.append(f"{path}: {bad} pixel value(s) were NaN or infinite and were set to 0")
    except MemoryError:
        raise DataError(path, "not enough memory to convert the image to float32") from None
    return out


def normalize_intensity(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Robust rescale to float32 ``[0, 1]``: the ``low``/``high`` percentiles map to 0/1.

    All channels share one range (colours keep their balance). If the percentiles
    coincide the full min..max range is used; a constant image becomes all zeros.
    """
    img = np.asarray(img, dtype=np.float32)
    return rescale_intensity(img, intensity_range(img, low, high))


def intensity_range(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float] | None:
    """The (lo, hi) that `normalize_intensity` maps to 0 / 1, or None for a constant image;
    so that parts of a large volume (one slice and its neighbours) are rescaled as the whole was."""
    flat = np.asarray(img, dtype=np.float32).reshape(-1)
    if flat.size > 1_000_000:  # percentiles of a strided subsample are plenty
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = np.percentile(flat, [low, high])
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = float(flat.min()), float(flat.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return None
    return float(lo), float(hi)


def rescale_intensity(img: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """``img`` as float32 with ``bounds`` (lo, hi) mapped to 0 / 1, clipped; all zeros for None."""
    img = np.asarray(img, dtype=np.float32)
    if bounds is None:
        return np.zeros_like(img, dtype=np.float32)
    lo, hi = bounds
    out = (img - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskEncoding:
    """How class indices are stored in a mask file.

    ``kind``: ``"binary"``, ``"index"`` or ``"color"``. ``values[c]`` is the stored
    gray value of class ``c`` (binary/index); ``colors[c]`` its RGB colour (color).
    ``dtype``, ``suffix`` (file format, e.g. ``".png"``) and ``channels`` (1 gray,
    3 RGB, 4 RGBA; gray masks saved as RGB keep 3) describe the file itself.

    RGBA files: ``alpha`` is ``"label"`` when the classes are stored in the alpha
    channel (the colour channels then hold the constant ``fill``), ``"background"``
    when fully transparent pixels are background (written back transparent), and
    ``""`` otherwise (opaque). ``palette``: the RGB(A) entries of an indexed
    (palette) PNG, whose classes are its palette indices; written back indexed.
    """

    kind: str
    values: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()
    dtype: str = "uint8"
    suffix: str = ".png"
    channels: int = 1
    alpha: str = ""
    fill: tuple[int, ...] = ()
    palette: tuple[tuple[int, ...], ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.colors) if self.kind == "color" else len(self.values)

    @property
    def stored_values(self) -> tuple[int, ...]:
        """The gray value each class index is stored as, or () for colour masks (a class's
        name, per `class_names.names_by_class`, may be keyed by that value)."""
        return () if self.kind == "color" else self.values

    @property
    def step(self) -> int:
        """Gray-level step between classes (binary/index)."""
        return self.values[1] if len(self.values) > 1 else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["values"] = list(self.values)
        d["colors"] = [list(c) for c in self.colors]
        d["fill"] = list(self.fill)
        d["palette"] = [list(c) for c in self.palette]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MaskEncoding":
        return cls(
            kind=str(d["kind"]),
            values=tuple(int(v) for v in d.get("values", ())),
            colors=tuple(tuple(int(x) for x in c) for c in d.get("colors", ())),
            dtype=str(d.get("dtype", "uint8")),
            suffix=str(d.get("suffix", ".png")),
            channels=int(d.get("channels", 1)),
            alpha=str(d.get("alpha", "") or ""),
            fill=tuple(int(v) for v in d.get("fill", ()) or ()),
            palette=tuple(tuple(int(x) for x in c) for c in d.get("palette", ()) or ()),
        )

    def with_file_format(self, other: "MaskEncoding") -> "MaskEncoding":
        """This class mapping with the file details (dtype, suffix, channels, alpha, palette) of ``other``."""
        if self.kind == "color":
            rgba = other.channels == 4
            return replace(self, suffix=other.suffix, channels=4 if rgba else 3,
                           alpha=other.alpha if rgba and other.alpha != "label" else "", fill=(), palette=())
        out = replace(self, dtype=other.dtype, suffix=other.suffix, channels=other.channels,
                      alpha=other.alpha, fill=other.fill, palette=other.palette)
        return _fit_dtype(out)

    @staticmethod
    def gray(n_classes: int, step: int, dtype: str = "uint8", suffix: str = ".png",
             channels: int = 1) -> "MaskEncoding":
        """Gray-level encoding with classes stored as ``0, step, 2*step, ...``."""
        kind = "binary" if n_classes == 2 else "index"
        return MaskEncoding(kind, tuple(i * step for i in range(n_classes)), (), dtype, suffix, channels)


def _fit_dtype(enc: MaskEncoding) -> MaskEncoding:
    """A gray encoding whose values exceed its file dtype gets the smallest dtype that holds them
    (PNG/TIFF), losing a palette that cannot hold them; else unchanged (writing then says why)."""
    if enc.kind == "color" or not enc.values:
        return enc
    dt = np.dtype(enc.dtype)
    top = max(enc.values)
    if dt.kind not in "ui" or top <= np.iinfo(dt).max:
        return enc
    for cand in ("uint16", "uint32"):
        if top <= np.iinfo(cand).max and (enc.suffix in _TIFF_EXTENSIONS or (enc.suffix == ".png" and cand == "uint16")):
            return replace(enc, dtype=cand, palette=())
    return enc


def is_binary_mask_encoding(enc: MaskEncoding) -> bool:
    """True for a two-valued gray mask storing 0 and 1, 255, 65535 or its dtype's maximum:
    background/foreground, whatever the value (unlike 0/3, which is class 3)."""
    if enc.kind != "binary" or len(enc.values) != 2 or enc.values[0] != 0:
        return False
    v = enc.values[1]
    dt = np.dtype(enc.dtype)
    return v in (1, 255, 65535) or (dt.kind in "ui" and v == np.iinfo(dt).max)


def file_encoding(target: MaskEncoding, file_enc: MaskEncoding, classes: np.ndarray) -> MaskEncoding:
    """The encoding to write a file back with: ``target``'s classes in ``file_enc``'s format.

    A binary mask (:func:`is_binary_mask_encoding`) in a binary dataset keeps its own stored values (a 0/65535
    file is written back as 0/65535 even where most masks are 0/255).
    """
    out = target.with_file_format(file_enc)
    if (is_binary_mask_encoding(target) and is_binary_mask_encoding(file_enc)
            and classes.size and int(classes.max()) > 0):
        out = replace(out, values=file_enc.values, dtype=file_enc.dtype)
    return out


def _too_many_values_message(n: int, suffix: str, what: str = "values") -> str:
    msg = f"mask has {n} distinct {what}; expected class indices or 0/255"
    if suffix in _JPEG_EXTENSIONS:
        return msg + " - it was saved as JPEG, which blurs edges into grey levels; save masks as PNG or TIFF"
    return msg + " - was it saved as JPEG, resized with interpolation, or is it an instance-label mask?"


def _preview(values: Sequence, k: int = 6) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in list(values)[:k]]
    more = ", ..." if len(values) > k else ""
    return ", ".join(str(v) for v in vals) + more


def _decode_gray(path: Path, raw: np.ndarray, suffix: str, channels: int) -> tuple[np.ndarray, MaskEncoding]:
    dtype = str(raw.dtype)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
        dtype = "uint8"
    if raw.dtype in (np.uint8, np.uint16):  # counting beats sorting for big masks
        uniq = np.flatnonzero(np.bincount(raw.reshape(-1))).astype(raw.dtype)
    else:
        uniq = np.unique(raw)
    if len(uniq) > MAX_CLASSES:
        raise DataError(path, _too_many_values_message(len(uniq), suffix))
    if np.issubdtype(uniq.dtype, np.floating):
        if not np.all(np.isfinite(uniq)) or not np.all(uniq == np.round(uniq)):
            raise DataError(path, f"mask has non-integer values ({_preview(uniq)}); expected class indices")
    if uniq[0] < 0:
        raise DataError(path, f"mask has negative values ({_preview(uniq)}); expected class indices >= 0")
    ints = [int(v) for v in uniq]
    nonzero = [v for v in ints if v > 0]
    step = reduce(math.gcd, nonzero) if nonzero else None
    if step is None:  # empty mask: background only
        default = 1 if raw.dtype.kind == "f" else (255 if raw.dtype == np.uint8 else 1)
        enc = MaskEncoding("binary", (0, default), (), dtype, suffix, channels)
        return np.zeros(raw.shape, np.int64), enc
    n_classes = max(nonzero) // step + 1
    if n_classes > MAX_CLASSES and len(uniq) > 4:
        raise DataError(path, _too_many_values_message(len(uniq), suffix))
    if n_classes > MAX_CLASSES:
        stray = [v for v in nonzero if v != max(nonzero)][:6] or nonzero[:6]
        raise DataError(
            path,
            f"mask values ({_preview(ints)}) are neither class indices nor evenly spaced class levels "
            f"(stray values such as {', '.join(map(str, stray))}?); expected e.g. 0/255 or 0..C-1",
        )
    n_classes = max(n_classes, 2)
    if raw.dtype.kind == "f":
        classes = (raw // step).astype(np.int64)
    else:
        classes = (raw.astype(np.int64) // step)
    return classes, MaskEncoding.gray(n_classes, step, dtype, suffix, channels)


def _decode_color(path: Path, rgb: np.ndarray, suffix: str, channels: int) -> tuple[np.ndarray, MaskEncoding]:
    if rgb.dtype != np.uint8:
        raise DataError(path, f"colour mask has dtype {rgb.dtype}; expected 8-bit RGB")
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(packed.reshape(-1), return_inverse=True)
    if len(uniq) > MAX_CLASSES:
        raise DataError(path, _too_many_values_message(len(uniq), suffix, "colours"))
    colours = [((int(p) >> 16) & 255, (int(p) >> 8) & 255, int(p) & 255) for p in uniq]
    palette = [(0, 0, 0)] + sorted(c for c in colours if c != (0, 0, 0))
    lut = np.array([palette.index(c) for c in colours], np.int64)
    classes = lut[inverse].reshape(packed.shape)
    return classes, MaskEncoding("color", (), tuple(palette), "uint8", suffix, channels)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of PNG bytes, stopping at a cut or IEND."""
    i = 8
    while i + 8 <= len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        kind = data[i + 4:i + 8]
        payload = data[i + 8:i + 8 + length]
        if len(payload) < length:
            return
        yield kind, payload
        if kind == b"IEND":
            return
        i += 12 + length


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_palette(data: bytes) -> tuple[tuple[int, ...], ...] | None:
    """The RGB(A) palette of an indexed PNG (colour type 3), or None for other PNGs."""
    if len(data) < 26 or data[12:16] != b"IHDR" or data[25] != 3:
        return None
    plte, trns = b"", b""
    for kind, payload in _png_chunks(data):
        if kind == b"PLTE":
            plte = payload
        elif kind == b"tRNS":
            trns = payload
        elif kind == b"IDAT":
            break
    n = len(plte) // 3
    if n == 0:
        return None  # no palette: let the decoder report the damage
    rgb = [tuple(plte[3 * i:3 * i + 3]) for i in range(n)]
    if trns:
        return tuple(c + ((trns[i] if i < len(trns) else 255),) for i, c in enumerate(rgb))
    return tuple(rgb)


def _read_palette_mask(path: Path, data: bytes, palette: tuple) -> tuple[np.ndarray, MaskEncoding]:
    """Classes = palette indices: decode with the palette replaced by a gray ramp (entry i = i)."""
    ramp = bytes(v for i in range(len(palette)) for v in (i, i, i))
    out = [data[:8]]
    for kind, payload in _png_chunks(data):
        if kind == b"PLTE":
            payload = ramp
        elif kind == b"tRNS":
            continue
        out.append(_png_chunk(kind, payload))
    arr = _read_cv2(path, ".png", b"".join(out))
    index = arr[..., 0] if arr.ndim == 3 else arr
    top = int(index.max())
    if top + 1 > MAX_CLASSES:
        raise DataError(path, f"palette mask uses palette index {top}; at most {MAX_CLASSES} classes "
                              f"(indices 0..{MAX_CLASSES - 1}) are supported")
    n = max(2, top + 1)
    enc = MaskEncoding("binary" if n == 2 else "index", tuple(range(n)), (), "uint8", ".png", 1,
                       palette=tuple(palette))
    return index.astype(np.int64), enc


def encode_indexed_png(indices: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """An indexed (colour type 3) PNG of ``uint8`` palette indices with ``palette`` (RGB or RGBA entries).

    Entries missing for indices beyond the palette are added as gray ``(i, i, i)``.
    """
    idx = np.ascontiguousarray(indices, dtype=np.uint8)
    entries = [tuple(int(x) for x in c) for c in palette]
    top = int(idx.max()) if idx.size else 0
    entries += [(i, i, i) for i in range(len(entries), top + 1)]
    entries = entries[:256]
    ok, buf = cv2.imencode(".png", idx)
    if not ok:  # pragma: no cover - cv2 encodes any 2-D uint8 array
        raise ValueError("PNG encoding failed")
    data = buf.tobytes()
    plte = bytes(v for c in entries for v in c[:3])
    alphas = [c[3] if len(c) > 3 else 255 for c in entries]
    while alphas and alphas[-1] == 255:
        alphas.pop()
    out = [data[:8]]
    for kind, payload in _png_chunks(data):
        if kind == b"IHDR":
            payload = payload[:9] + b"\x03" + payload[10:]  # 8-bit gray rows = 8-bit index rows
            out.append(_png_chunk(kind, payload))
            out.append(_png_chunk(b"PLTE", plte))
            if alphas:
                out.append(_png_chunk(b"tRNS", bytes(alphas)))
        elif kind in (b"IDAT", b"IEND"):
            out.append(_png_chunk(kind, payload))
    return b"".join(out)


def _read_mask_native(path: Path) -> tuple[np.ndarray, MaskEncoding]:
    """Classes and encoding as this one file defines them."""
    suffix = file_suffix(path)
    if suffix not in MASK_EXTENSIONS:
        raise DataError(path, f"unsupported mask format '{suffix}'; use PNG, TIFF or BMP")
    if suffix == ".png":
        data = _read_bytes(path)
        _check_format(path, suffix, data)
        palette = _png_palette(data)
        if palette is not None:
            return _read_palette_mask(path, data, palette)
    raw = _read_raw(path, single_page=True)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if suffix in _JPEG_EXTENSIONS:
        n = len(np.unique(raw.reshape(-1, channels), axis=0))
        if n > 2:
            raise DataError(path, _too_many_values_message(n, suffix, "values" if channels == 1 else "colours"))
        raise DataError(path, "mask is a JPEG file; JPEG is lossy and cannot hold exact class values - save masks as PNG or TIFF")
    alpha_mode = ""
    if raw.ndim == 3:
        rgb = raw[..., :3]
        if channels == 4:
            a = raw[..., 3]
            first = rgb.reshape(-1, 3)[0]
            if np.array_equal(rgb, np.broadcast_to(first, rgb.shape)) and not np.all(a == a.flat[0]):
                # the colour channels carry nothing: the label is in the alpha channel
                classes, enc = _decode_gray(path, a, suffix, 4)
                return classes, replace(enc, alpha="label", fill=tuple(int(v) for v in first))
            transparent = a == 0
            if transparent.any():  # fully transparent pixels are background, whatever their colour
                rgb = rgb.copy()
                rgb[transparent] = 0
                alpha_mode = "background"
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            classes, enc = _decode_gray(path, rgb[..., 0], suffix, channels)
        else:
            classes, enc = _decode_color(path, rgb, suffix, channels)
    else:
        classes, enc = _decode_gray(path, raw, suffix, channels)
    return classes, replace(enc, alpha=alpha_mode) if alpha_mode else enc


def stored_keys(enc: MaskEncoding) -> list:
    """Per-class stored value (int) or colour (tuple) of an encoding."""
    return list(enc.colors) if enc.kind == "color" else list(enc.values)


def as_color(enc: MaskEncoding) -> MaskEncoding:
    """A gray encoding seen as colours ``(v, v, v)`` (for gray masks saved as RGB)."""
    if enc.kind == "color":
        return enc
    return replace(enc, kind="color", colors=tuple((v, v, v) for v in enc.values), values=(), dtype="uint8")


def remap_classes(path: str | Path, classes: np.ndarray, file_enc: MaskEncoding,
                  target: MaskEncoding) -> np.ndarray:
    """Translate a file's own class indices into ``target``'s classes via stored values.

    Binary masks (:func:`is_binary_mask_encoding`: 0/1, 0/255, 0/65535) map onto a
    binary ``target`` whatever value they store: all mean background/foreground. Raises DataError if
    a class present in the file has no counterpart in ``target``.
    """
    if not classes.size or classes.max() == 0:  # background only fits any mapping
        return np.zeros(classes.shape, np.int64)
    if is_binary_mask_encoding(target) and is_binary_mask_encoding(file_enc):
        return classes.astype(np.int64, copy=False)
    if target.kind == "color" and file_enc.kind != "color":
        if file_enc.channels < 3 or file_enc.alpha == "label":
            raise DataError(path, "mask is gray but the dataset's masks are colour-coded")
        file_enc = as_color(file_enc)
    elif target.kind != "color" and file_enc.kind == "color":
        raise DataError(path, "mask is colour-coded but the dataset's masks are gray class values")
    target_keys = {k: i for i, k in enumerate(stored_keys(target))}
    src_keys = stored_keys(file_enc)
    lut = np.array([target_keys.get(k, -1) for k in src_keys], np.int64)
    present = np.unique(classes) if classes.size else np.array([], np.int64)
    bad = [src_keys[c] for c in present if c < len(lut) and lut[c] < 0]
    if bad:
        allowed = _preview(stored_keys(target)) if target.kind != "color" else f"{target.n_classes} colours"
        raise DataError(path, f"mask contains {bad[0]!r}, which is not one of the dataset's class values ({allowed})")
    return lut[classes]


def read_mask(path: str | Path, encoding: MaskEncoding | None = None) -> tuple[np.ndarray, MaskEncoding]:
    """Read a mask as class indices ``int64 (H, W)`` and its :class:`MaskEncoding`.

    With ``encoding`` (the dataset's class mapping) stored values are translated to
    that mapping's classes; values outside it raise DataError. The returned encoding
    always carries this file's own dtype/suffix/channels, ready for :func:`write_mask`.
    Only DataError escapes for bad files (multi-page TIFF stacks are refused).
    """
    path = Path(path)
    try:
        classes, enc = _read_mask_native(path)
        if encoding is None:
            return classes, enc
        return remap_classes(path, classes, enc, encoding), file_encoding(encoding, enc, classes)
    except MemoryError:
        raise DataError(path, "not enough memory to read the mask") from None


def ensure_not_overwriting(dst: str | Path, protected: Iterable[str | Path]) -> None:
    """Raise DataError if ``dst`` is (or links to) one of the ``protected`` files."""
    dst = Path(dst)
    dst_res = dst.resolve()
    for p in protected:
        p = Path(p)
        same = dst_res == p.resolve()
        if not same and dst.exists() and p.exists():
            try:
                same = os.path.samefile(dst, p)
            except OSError:
                same = False
        if same:
            raise DataError(dst, "refusing to overwrite an original mask; choose another output folder")


def encode_mask(classes: np.ndarray, encoding: MaskEncoding) -> np.ndarray:
    """The array of stored values (gray or RGB[A]) that represents ``classes``."""
    classes = np.asarray(classes)
    n = encoding.n_classes
    if classes.size and (classes.min() < 0 or classes.max() >= n):
        raise ValueError(f"class indices {int(classes.min())}..{int(classes.max())} do not fit an encoding with {n} classes")
    idx = classes.astype(np.intp)
    if encoding.kind != "color":
        dtype = np.dtype(encoding.dtype)
        if dtype.kind in "ui" and encoding.values and max(encoding.values) > np.iinfo(dtype).max:
            raise ValueError(f"class values up to {max(encoding.values)} do not fit a {dtype} {encoding.suffix} file")
    if encoding.kind != "color" and encoding.channels == 4 and encoding.alpha == "label":
        dtype = np.dtype(encoding.dtype)
        alpha = np.array(encoding.values, dtype=dtype)[idx]
        fill = np.array((tuple(encoding.fill) + (0, 0, 0))[:3], dtype=dtype)
        return np.concatenate([np.broadcast_to(fill, alpha.shape + (3,)), alpha[..., None]], axis=2)
    if encoding.kind == "color":
        lut = np.array(encoding.colors, np.uint8).reshape(-1, 3)
        out = lut[idx]
    else:
        dtype = np.dtype(encoding.dtype)
        out = np.array(encoding.values, dtype=dtype)[idx]
        if encoding.channels >= 3:
            out = np.repeat(out[..., None], 3, axis=2)
    if encoding.channels == 4:
        alpha = np.full(out.shape[:2] + (1,), np.iinfo(out.dtype).max if out.dtype.kind in "ui" else 1, out.dtype)
        if encoding.alpha == "background":
            alpha[classes == 0] = 0
        out = np.concatenate([out, alpha], axis=2)
    return out


def write_mask(path: str | Path, classes: np.ndarray, encoding: MaskEncoding,
               protect: Iterable[str | Path] = ()) -> None:
    """Atomically write class indices in ``encoding``'s convention; format from ``path``'s suffix.

    Masks read from an indexed PNG are written as an indexed PNG with the file's
    palette; alpha-channel labels go back into the alpha channel.
    ``protect``: original mask paths that must never be overwritten (DataError).
    """
    path = Path(path)
    ensure_not_overwriting(path, protect)
    suffix = file_suffix(path)
    if suffix not in WRITABLE_MASK_EXTENSIONS:
        raise DataError(path, f"masks are written losslessly as PNG, TIFF or BMP, not '{suffix}'")
    arr = encode_mask(classes, encoding)
    if encoding.palette and suffix == ".png" and arr.ndim == 2 and arr.dtype == np.uint8:
        atomic_write_bytes(path, encode_indexed_png(arr, encoding.palette))
    else:
        atomic_write_image(path, arr)


# --------------------------------------------------------------------------- writing


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: Mode of files we write, as ``open()`` would create them under the process umask.
_FILE_MODE = _default_file_mode()


#: Temp files of atomic writes are named ``.<target name>.<random>`` + this suffix, so
#: that :func:`remove_stale_temp_files` can recognise the ones a killed process left.
TEMP_SUFFIX = ".ielstudio-tmp"
#: Temp files older than this (seconds) are stale: no write takes that long.
STALE_TEMP_AGE_S = 15 * 60
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$", re.DOTALL)


def temp_name_prefix(path: str | Path) -> str:
    """Prefix of a temp file for ``path`` (the name is shortened to keep under 255 bytes)."""
    name = os.path.basename(os.fspath(path))
    raw = os.fsencode(name)
    if len(raw) > 150:
        name = os.fsdecode(raw[:150])
    return f".{name}."


def is_temp_file_name(name: str) -> bool:
    """True for names made by :func:`atomic_write_bytes` (and the project file's creation)."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temp_files(folder: str | Path, older_than_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete temp files of atomic writes left in ``folder`` (not its subfolders) by a killed process.

    Only regular files named like our temp files (``.<name>.<random>.ielstudio-tmp``)
    and last modified more than ``older_than_s`` seconds ago are removed, so writes in
    progress (this or another process) are left alone. Returns the removed paths;
    never raises for a missing folder or a file that cannot be removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not is_temp_file_name(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _error_naming_target(e: OSError, path: Path, what: str) -> OSError:
    """The same kind of OSError, naming the file being written (not the temp file)."""
    reason = e.strerror or str(e)
    if e.errno is not None:
        return OSError(e.errno, f"cannot write {path.name} ({what}): {reason}", os.fspath(path))
    try:
        return type(e)(f"cannot write {path} ({what}): {reason}")
    except Exception:  # an OSError subclass with another signature
        return OSError(f"cannot write {path} ({what}): {reason}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers see the old file or the complete new one, never a partial file. The temp
    file is ``.<name>.<random>.ielstudio-tmp`` (see :func:`remove_stale_temp_files`).
    Errors (disk full, permission denied) are raised as OSError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _error_naming_target(e, path, "creating its folder") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_name_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as e:
        raise _error_naming_target(e, path, "creating a temporary file in its folder") from None
    step = "writing"
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        step = "setting its permissions"
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the usual umask-based mode
        step = "replacing it"
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _error_naming_target(e, path, step) from None
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically write a text file.

    Characters the encoding cannot hold (e.g. the surrogate escapes Python uses for
    file names that are not UTF-8) are written as backslash escapes (``\\udcff``), so
    reports never fail because of a file name.
    """
    atomic_write_bytes(path, text.encode(encoding, errors="backslashreplace"))


def encode_image(suffix: str, array: np.ndarray) -> bytes:
    """Encode an array to file bytes for ``suffix`` (RGB order for colour arrays).

    uint8/uint16 are stored as they are; bool becomes 0/255; float arrays are stored
    as float32 in TIFF and as 0..255 (clipped from [0, 1]) in PNG/JPEG/BMP.
    """
    arr = np.ascontiguousarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if suffix in _TIFF_EXTENSIONS:
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        buf = io.BytesIO()
        photometric = "rgb" if arr.ndim == 3 and arr.shape[2] in (3, 4) else "minisblack"
        extras = ["unassalpha"] if arr.ndim == 3 and arr.shape[2] == 4 else None
        tifffile.imwrite(buf, arr, photometric=photometric, compression="zlib", extrasamples=extras)
        return buf.getvalue()
    if suffix not in _CV2_EXTENSIONS:
        raise ValueError(f"cannot write images as '{suffix}'")
    if arr.dtype.kind == "f":
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype not in (np.uint8, np.uint16):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"values {arr.min()}..{arr.max()} do not fit a {suffix} file")
        arr = arr.astype(np.uint16 if arr.size and arr.max() > 255 else np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in _JPEG_EXTENSIONS else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.dtype} {arr.shape} array as {suffix}")
    return buf.tobytes()


def atomic_write_image(path: str | Path, array: np.ndarray) -> None:
    """Encode ``array`` by ``path``'s extension (PNG/JPEG/BMP/TIFF) and write it atomically."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(file_suffix(path), array))
