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
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Iterable, Sequence

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


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a file") from None
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
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


def _read_cv2(path: Path, suffix: str) -> np.ndarray:
    data = _read_bytes(path)
    _check_complete(path, suffix, data)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(path, f"cannot decode {suffix[1:].upper()} file (damaged or not an image)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    data = _read_bytes(path)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if not tf.pages:
                raise DataError(path, "TIFF file has no pages")
            return tf.pages[0].asarray()
    except DataError:
        raise
    except Exception as e:  # tifffile raises many kinds for damaged files
        raise DataError(path, f"cannot decode TIFF file ({type(e).__name__}: {e})") from None


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError(path, "DICOM support is not installed: pip install 'ielstudio[medical]'") from None
    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
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
        arr = np.asarray(img.dataobj)
    except Exception as e:
        raise DataError(path, f"cannot decode NIfTI file ({type(e).__name__}: {e})") from None
    # NIfTI stores (x, y, z, ...): take the first slice of every extra axis and
    # transpose so rows are y (the usual radiological display is left to viewers).
    while arr.ndim > 2:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"NIfTI data has shape {arr.shape}; expected a 2-D slice")
    return arr.T


def read_raw(path: str | Path) -> np.ndarray:
    """Decode a file to its stored values and dtype: (H, W) or (H, W, 3|4), RGB order."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix in _CV2_EXTENSIONS:
        arr = _read_cv2(path, suffix)
    elif suffix in _TIFF_EXTENSIONS:
        arr = _read_tiff(path)
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


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 ``(H, W)`` or ``(H, W, 3)`` in its raw value range.

    Alpha channels are dropped; multi-page files give their first page.
    """
    arr = read_raw(path)
    if arr.ndim == 3:
        arr = arr[..., :3]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def normalize_intensity(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Robust rescale to float32 ``[0, 1]``: the ``low``/``high`` percentiles map to 0/1.

    All channels share one range (colours keep their balance). If the percentiles
    coincide the full min..max range is used; a constant image becomes all zeros.
    """
    img = np.asarray(img, dtype=np.float32)
    flat = img.reshape(-1)
    if flat.size > 1_000_000:  # percentiles of a strided subsample are plenty
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = np.percentile(flat, [low, high])
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = float(flat.min()), float(flat.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(img, dtype=np.float32)
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
    """

    kind: str
    values: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()
    dtype: str = "uint8"
    suffix: str = ".png"
    channels: int = 1

    @property
    def n_classes(self) -> int:
        return len(self.colors) if self.kind == "color" else len(self.values)

    @property
    def step(self) -> int:
        """Gray-level step between classes (binary/index)."""
        return self.values[1] if len(self.values) > 1 else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["values"] = list(self.values)
        d["colors"] = [list(c) for c in self.colors]
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
        )

    def with_file_format(self, other: "MaskEncoding") -> "MaskEncoding":
        """This class mapping with the file details (dtype, suffix, channels) of ``other``."""
        if self.kind == "color":
            return replace(self, suffix=other.suffix, channels=4 if other.channels == 4 else 3)
        return replace(self, dtype=other.dtype, suffix=other.suffix, channels=other.channels)

    @staticmethod
    def gray(n_classes: int, step: int, dtype: str = "uint8", suffix: str = ".png",
             channels: int = 1) -> "MaskEncoding":
        """Gray-level encoding with classes stored as ``0, step, 2*step, ...``."""
        kind = "binary" if n_classes == 2 else "index"
        return MaskEncoding(kind, tuple(i * step for i in range(n_classes)), (), dtype, suffix, channels)


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


def _read_mask_native(path: Path) -> tuple[np.ndarray, MaskEncoding]:
    """Classes and encoding as this one file defines them."""
    suffix = file_suffix(path)
    if suffix not in MASK_EXTENSIONS:
        raise DataError(path, f"unsupported mask format '{suffix}'; use PNG, TIFF or BMP")
    raw = read_raw(path)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if suffix in _JPEG_EXTENSIONS:
        n = len(np.unique(raw.reshape(-1, channels), axis=0))
        if n > 2:
            raise DataError(path, _too_many_values_message(n, suffix, "values" if channels == 1 else "colours"))
        raise DataError(path, "mask is a JPEG file; JPEG is lossy and cannot hold exact class values - save masks as PNG or TIFF")
    if raw.ndim == 3:
        rgb = raw[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            classes, enc = _decode_gray(path, rgb[..., 0], suffix, channels)
        else:
            classes, enc = _decode_color(path, rgb, suffix, channels)
    else:
        classes, enc = _decode_gray(path, raw, suffix, channels)
    return classes, enc


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

    Raises DataError if a class present in the file has no counterpart in ``target``.
    """
    if not classes.size or classes.max() == 0:  # background only fits any mapping
        return np.zeros(classes.shape, np.int64)
    if target.kind == "color" and file_enc.kind != "color":
        if file_enc.channels < 3:
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
    """
    path = Path(path)
    classes, enc = _read_mask_native(path)
    if encoding is None:
        return classes, enc
    return remap_classes(path, classes, enc, encoding), encoding.with_file_format(enc)


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
        out = np.concatenate([out, alpha], axis=2)
    return out


def write_mask(path: str | Path, classes: np.ndarray, encoding: MaskEncoding,
               protect: Iterable[str | Path] = ()) -> None:
    """Atomically write class indices in ``encoding``'s convention; format from ``path``'s suffix.

    ``protect``: original mask paths that must never be overwritten (DataError).
    """
    path = Path(path)
    ensure_not_overwriting(path, protect)
    if file_suffix(path) not in WRITABLE_MASK_EXTENSIONS:
        raise DataError(path, f"masks are written losslessly as PNG, TIFF or BMP, not '{file_suffix(path)}'")
    atomic_write_image(path, encode_mask(classes, encoding))


# --------------------------------------------------------------------------- writing


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: Mode of files we write, as ``open()`` would create them under the process umask.
_FILE_MODE = _default_file_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers see the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically write a text file."""
    atomic_write_bytes(path, text.encode(encoding))


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
