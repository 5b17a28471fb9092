"""Read and write 3-D clinical volumes (NIfTI, NRRD, 3D Slicer ``.seg.nrrd``, DICOM series); grid checks.

Arrays keep the axes the file stores: ``(i, j, k)`` voxel indices, as nibabel gives
them and as pynrrd gives them in its default Fortran index order; DICOM series come
as ``(column, row, slice)``, as nibabel's DICOM reader gives them, slices in ascending
position along the slice normal. Nothing is reoriented. ``affine`` maps ``(i, j, k, 1)`` to world millimetres in the frame that
``space`` names: right-anterior-superior (RAS) for NIfTI and DICOM (converted from
DICOM's LPS, as dcm2niix does), the file's own ``space`` field for NRRD (often
left-posterior-superior). :func:`ras_affine` brings any of them to RAS.

Label volumes are written back with :func:`write_label_volume` in the format, grid,
voxel type and header of the label file they correct (DICOM is only read), atomically
(temp file + ``os.replace``, see :func:`~ielstudio.core.imageio.atomic_write_bytes`).

nibabel, pynrrd and pydicom (``pip install 'ielstudio[medical]'``) are imported
when a function needs them. Problems with user files raise
:class:`~ielstudio.core.errors.DataError` naming the file or folder.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .errors import DataError
from .imageio import atomic_write_bytes, ensure_not_overwriting, file_suffix

#: Spacings closer than this (relative) are the same.
SPACING_RTOL = 1e-3
#: Grids whose voxel centres lie closer than this (mm) everywhere are the same.
POSITION_TOL_MM = 1e-3
#: DICOM slice gaps may differ from the median gap by this much (relative).
SLICE_GAP_RTOL = 1e-2

FORMATS = ("nifti", "nrrd", "seg.nrrd", "dicom")
RAS = "right-anterior-superior"
_INSTALL_HINT = "pip install 'ielstudio[medical]'"
#: Sign flips that take each anatomical NRRD space to RAS.
_TO_RAS = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(\w+)$")


# --------------------------------------------------------------------------- volumes


@dataclass(eq=False)
class Volume:
    """A 3-D volume (``array`` may be a copy-on-write memory map of an uncompressed NIfTI file).

    ``spacing``: mm along the array's three axes. ``affine``: 4x4 voxel index ->
    world mm in ``space`` (see the module docstring). ``header``: the library's own
    header (nibabel header, pynrrd dict, list of pydicom datasets without pixels),
    kept for writing. ``segment_names``: label value -> segment name (``.seg.nrrd``).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    format: str
    header: Any
    segment_names: dict[int, str] = field(default_factory=dict)
    path: Path | None = None
    space: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The 2-D slice ``index`` along ``axis`` (the other two axes in order)."""
        _check_slice(self.shape, axis, index)
        return np.asarray(self.array[(slice(None),) * axis + (index,)])


class OpenVolume:
    """A volume whose geometry is known and whose voxels are read when asked for.

    NIfTI slices are read from the file alone (nibabel's array proxy); NRRD loads the
    whole array on the first request; DICOM reads one file per slice along the
    slice axis (2) and the whole series for the other axes.
    """

    def __init__(self, path: Path, format: str, shape: tuple[int, int, int], dtype: np.dtype | None,
                 spacing: tuple[float, float, float], affine: np.ndarray, space: str, header: Any,
                 segment_names: dict[int, str], load: Callable[[], np.ndarray],
                 read_slice: Callable[[int, int], np.ndarray] | None = None):
        self.path, self.format, self.shape = path, format, shape
        self._dtype = None if dtype is None else np.dtype(dtype)
        self.spacing, self.affine, self.space, self.header = spacing, affine, space, header
        self.segment_names = segment_names
        self._load, self._read_slice, self._array = load, read_slice, None

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The 2-D slice ``index`` along ``axis`` (the other two axes in order)."""
        _check_slice(self.shape, axis, index)
        if self._array is None and self._read_slice is not None:
            out = self._read_slice(axis, index)
            if out is not None:
                return out
        return np.asarray(self.array[(slice(None),) * axis + (index,)])

    @property
    def dtype(self) -> np.dtype:
        """The voxel type of :attr:`array` (read from the header where it says)."""
        return self._dtype if self._dtype is not None else self.array.dtype

    @property
    def array(self) -> np.ndarray:
        """All voxels (read on first access, then kept)."""
        if self._array is None:
            self._array = self._load()
        return self._array

    def read(self) -> Volume:
        """The whole :class:`Volume`."""
        return Volume(self.array, self.spacing, self.affine, self.format, self.header,
                      dict(self.segment_names), self.path, self.space)


def _check_slice(shape: tuple[int, ...], axis: int, index: int) -> None:
    if axis not in (0, 1, 2):
        raise IndexError(f"axis {axis} is not 0, 1 or 2")
    if not 0 <= index < shape[axis]:
        raise IndexError(f"slice {index} is outside 0..{shape[axis] - 1} along axis {axis}")


def iter_slices(volume: Volume | OpenVolume, axis: int | None = None) -> Iterator[np.ndarray]:
    """Yield the 2-D slices along ``axis`` (default :func:`slice_axis`), in index order."""
    axis = slice_axis(volume) if axis is None else axis
    for i in range(volume.shape[axis]):
        yield volume.slice(axis, i)


def slice_axis(volume: Volume | OpenVolume) -> int:
    """The axis to slice along: the coarsest spacing (the last such axis; 2 when isotropic),
    so that each 2-D slice has the finest in-plane spacing."""
    sp = [float(s) for s in volume.spacing]
    top = max(sp)
    return max(a for a in range(3) if sp[a] >= top * (1 - SPACING_RTOL))


def label_values(volume: Volume | OpenVolume) -> list[int]:
    """The distinct voxel values of a label volume, ascending (0 included when present).

    Raises DataError for values that are not whole numbers.
    """
    arr = np.asarray(volume.array)
    if arr.dtype == bool or (arr.dtype.kind == "u" and arr.dtype.itemsize <= 2):
        counts = np.bincount(arr.reshape(-1).astype(np.intp, copy=False)) if arr.size else np.zeros(0)
        return [int(v) for v in np.flatnonzero(counts)]
    uniq = np.unique(arr)
    if uniq.dtype.kind == "f" and (not np.all(np.isfinite(uniq)) or not np.all(uniq == np.round(uniq))):
        bad = uniq[~np.isfinite(uniq) | (uniq != np.round(uniq))][:3]
        raise DataError(volume.path, f"label volume has values that are not whole numbers "
                                     f"({', '.join(f'{v:g}' for v in bad)}); expected label values")
    return [int(v) for v in uniq]


# --------------------------------------------------------------------------- reading


def read_volume(path: str | Path, warnings: list[str] | None = None) -> Volume:
    """Read a volume: ``.nii``/``.nii.gz`` (nibabel), ``.nrrd``/``.nhdr`` (pynrrd),
    ``.seg.nrrd`` (3D Slicer segmentation, one layer), or a folder holding one DICOM series.

    ``warnings`` (a list) receives a line for each file skipped in a DICOM folder.
    """
    return open_volume(path, warnings).read()


def open_volume(path: str | Path, warnings: list[str] | None = None) -> OpenVolume:
    """Open a volume for reading slices: geometry now, voxels when asked (see :class:`OpenVolume`)."""
    path = Path(path)
    if path.is_dir():
        return _open_dicom_series(path, warnings)
    name = path.name.lower()
    suffix = file_suffix(path)
    if name.endswith(".seg.nrrd"):
        return _open_nrrd(path, segmentation=True)
    if suffix in (".nrrd", ".nhdr"):
        return _open_nrrd(path, segmentation=False)
    if suffix in (".nii", ".nii.gz"):
        return _open_nifti(path)
    _check_file(path)
    if suffix == ".dcm":
        raise DataError(path, "a DICOM volume is read from its series folder: choose the folder, not one file")
    raise DataError(path, f"unsupported volume file type '{suffix or path.name}' "
                          "(expected .nii, .nii.gz, .nrrd, .nhdr, .seg.nrrd or a DICOM folder)")


def read_dicom_series(folder: str | Path, warnings: list[str] | None = None) -> Volume:
    """Read the DICOM series in ``folder`` (see :func:`read_volume`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "is not a folder; a DICOM series is read from the folder holding its files")
    return _open_dicom_series(folder, warnings).read()


def _import(module: str, what: str, path: Path):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(path, f"{what} support is not installed: {_INSTALL_HINT}") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        if os.path.islink(path):
            raise DataError(path, "is a broken link (its target does not exist)")
        raise DataError(path, "file does not exist")
    if path.is_dir():
        raise DataError(path, "is a folder, not a file")
    try:
        if path.stat().st_size == 0:
            raise DataError(path, "file is empty (0 bytes)")
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None


def _library_error(path: Path, what: str, e: BaseException) -> DataError:
    if isinstance(e, DataError):
        return e
    if isinstance(e, MemoryError):
        return DataError(path, f"not enough memory to read the {what} file")
    return DataError(path, f"cannot read {what} file ({type(e).__name__}: {e})")


def _spatial_shape(path: Path, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """The 3-D shape of ``shape``, allowing trailing axes of length 1."""
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise DataError(path, f"{what} data has shape {shape}; expected a 3-D volume")
    if 0 in shape[:3]:
        raise DataError(path, f"{what} volume has shape {shape}, with no voxels")
    return tuple(int(s) for s in shape[:3])


def ras_affine(volume: Volume | OpenVolume) -> np.ndarray | None:
    """The volume's affine in RAS mm, or None when its ``space`` is not an anatomical frame."""
    signs = _TO_RAS.get(volume.space.lower())
    if signs is None:
        return None
    return np.diag(list(signs) + [1]).astype(np.float64) @ np.asarray(volume.affine, np.float64)


# NIfTI --------------------------------------------------------------------------


def _open_nifti(path: Path) -> OpenVolume:
    _check_file(path)
    nib = _import("nibabel", "NIfTI", path)
    try:
        img = nib.load(str(path))  # memory-maps uncompressed .nii when unscaled
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(path, f"is a {type(img).__name__}, not a NIfTI image")
        hdr = img.header
        full_shape = tuple(int(s) for s in img.shape)
        shape = _spatial_shape(path, full_shape, "NIfTI")
        unit = hdr.get_xyzt_units()[0]
        to_mm = {"meter": 1000.0, "micron": 1e-3}.get(unit, 1.0)
        spacing = tuple(float(z) * to_mm for z in hdr.get_zooms()[:3])
        affine = np.array(img.affine, np.float64)
        affine[:3] *= to_mm
        coded = int(hdr["sform_code"]) > 0 or int(hdr["qform_code"]) > 0
        dtype = img.get_data_dtype() if _unscaled(hdr) else None  # scaled: nibabel picks a float type
    except Exception as e:
        raise _library_error(path, "NIfTI", e) from None
    extra = (0,) * (len(full_shape) - 3)

    def load() -> np.ndarray:
        try:
            return np.asanyarray(img.dataobj).reshape(shape)
        except Exception as e:
            raise _library_error(path, "NIfTI", e) from None

    def read_slice(axis: int, index: int) -> np.ndarray:
        key = [slice(None)] * 3 + list(extra)
        key[axis] = index
        try:
            return np.asarray(img.dataobj[tuple(key)])
        except Exception as e:
            raise _library_error(path, "NIfTI", e) from None

    return OpenVolume(path, "nifti", shape, dtype, spacing, affine, RAS if coded else "", hdr, {},
                      load, read_slice)


def _unscaled(hdr) -> bool:
    slope, inter = hdr.get_slope_inter()
    return slope in (None, 1.0) and inter in (None, 0.0)


# NRRD ---------------------------------------------------------------------------


def _open_nrrd(path: Path, segmentation: bool) -> OpenVolume:
    _check_file(path)
    nrrd = _import("nrrd", "NRRD", path)
    what = "segmentation (.seg.nrrd)" if segmentation else "NRRD"
    try:
        header = nrrd.read_header(str(path))
    except Exception as e:
        raise _library_error(path, what, e) from None
    sizes = tuple(int(s) for s in header.get("sizes", ()))
    if segmentation and len(sizes) == 4:
        raise DataError(path, f"segmentation has {sizes[0]} layers (overlapping segments); only one-layer "
                              "segmentations (one label value per voxel) can be read - export it as a labelmap")
    shape = _spatial_shape(path, sizes, what)
    dim = len(sizes)
    spacing, affine = _nrrd_geometry(path, header, dim)
    names = parse_segment_names(path, header) if segmentation else {}
    try:  # pynrrd has no public name for this; without it the type is known once loaded
        dtype = getattr(nrrd.reader, "_determine_datatype")(header)
    except Exception:
        dtype = None

    def load() -> np.ndarray:
        try:
            data, _ = nrrd.read(str(path), index_order="F")
        except Exception as e:
            raise _library_error(path, what, e) from None
        return data.reshape(shape, order="F")

    space = str(header.get("space", "") or "")
    return OpenVolume(path, "seg.nrrd" if segmentation else "nrrd", shape, dtype, spacing, affine, space,
                      header, names, load)


def _nrrd_geometry(path: Path, header: dict, dim: int) -> tuple[tuple[float, float, float], np.ndarray]:
    """Spacing and affine from ``space directions``/``space origin`` (else ``spacings``)."""
    affine = np.eye(4)
    if "space directions" in header:
        dirs = np.asarray(header["space directions"], np.float64)
        if dirs.ndim != 2 or dirs.shape[0] != dim or dirs.shape[1] != 3 or not np.all(np.isfinite(dirs[:3])):
            raise DataError(path, f"NRRD 'space directions' {header['space directions']!r} do not give "
                                  "three 3-D axis vectors")
        affine[:3, :3] = dirs[:3].T  # row a of the field is the world vector of axis a
        spacing = tuple(float(v) for v in np.linalg.norm(dirs[:3], axis=1))
        origin = np.asarray(header.get("space origin", np.zeros(3)), np.float64).reshape(-1)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise DataError(path, f"NRRD 'space origin' {header.get('space origin')!r} is not a 3-D point")
        affine[:3, 3] = origin
    else:
        sp = np.asarray(header.get("spacings", [1.0] * dim), np.float64)[:3]
        spacing = tuple(float(v) if np.isfinite(v) and v > 0 else 1.0 for v in sp)
        affine[:3, :3] = np.diag(spacing)
    if min(spacing) <= 0:
        raise DataError(path, f"NRRD voxel spacing {spacing} has a zero axis")
    return spacing, affine


def parse_segment_names(path: str | Path | None, header: dict) -> dict[int, str]:
    """Label value -> segment name from the ``Segment<N>_*`` fields of a 3D Slicer ``.seg.nrrd`` header."""
    segs: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        m = _SEGMENT_KEY.match(str(key))
        if m:
            segs.setdefault(int(m.group(1)), {})[m.group(2)] = str(value)
    names: dict[int, str] = {}
    for n in sorted(segs):
        seg = segs[n]
        name = seg.get("Name", seg.get("ID", f"Segment_{n + 1}"))
        if "LabelValue" in seg:
            try:
                value = int(seg["LabelValue"])
            except ValueError:
                raise DataError(path, f"Segment{n}_LabelValue is '{seg['LabelValue']}', not a whole number") from None
        elif len(segs) == 1:
            value = 1
        else:
            raise DataError(path, f"Segment{n}_LabelValue is missing; segment '{name}' has no label value")
        if value in names:
            raise DataError(path, f"segments '{names[value]}' and '{name}' both have label value {value}")
        names[value] = name
    return names


# DICOM --------------------------------------------------------------------------


def _open_dicom_series(folder: Path, warnings: list[str] | None) -> OpenVolume:
    pydicom = _import("pydicom", "DICOM", folder)
    slices = _scan_dicom_folder(pydicom, folder, warnings)
    geo = _dicom_geometry(folder, slices)
    files = [p for p, _ in geo["order"]]
    datasets = [ds for _, ds in geo["order"]]
    rescale = [(float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0))
               for ds in datasets]
    dtype = _dicom_dtype(datasets[0], rescale)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    ds_bits = datasets[0].get("BitsStored", "?")

    def read_plane(k: int) -> np.ndarray:
        p = files[k]
        try:
            pixels = np.asarray(pydicom.dcmread(str(p)).pixel_array)
        except Exception as e:
            raise _library_error(p, "DICOM", e) from None
        if pixels.shape != (rows, cols):
            raise DataError(p, f"pixel data has shape {pixels.shape}; expected {rows} x {cols} (one frame)")
        slope, inter = rescale[k]
        if dtype.kind == "f":
            plane = pixels.astype(np.float32) * np.float32(slope) + np.float32(inter)
        else:
            plane = pixels.astype(np.int32) + int(inter)
            if dtype == np.int16 and plane.size and (plane.min() < -32768 or plane.max() > 32767):
                raise DataError(p, f"pixel values exceed the {ds_bits} bits the series declares (BitsStored)")
            plane = plane.astype(dtype)
        return plane.T  # (row, column) -> (column, row): axis 0 runs along a row

    def load() -> np.ndarray:
        out = np.empty((cols, rows, len(files)), dtype)
        for k in range(len(files)):
            out[:, :, k] = read_plane(k)
        return out

    def read_slice(axis: int, index: int) -> np.ndarray | None:
        return read_plane(index) if axis == 2 else None

    return OpenVolume(folder, "dicom", (cols, rows, len(files)), dtype, geo["spacing"], geo["affine"], RAS,
                      datasets, {}, load, read_slice)


def _scan_dicom_folder(pydicom, folder: Path, warnings: list[str] | None) -> list[tuple[Path, Any]]:
    """``(file, dataset without pixels)`` of every image file of the folder's one series."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(folder, f"cannot list folder ({e.strerror or e})") from None
    found: list[tuple[Path, Any]] = []
    subfolders = 0
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            subfolders += 1
            continue
        p = Path(e.path)
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            _warn(warnings, p, "skipped: not a DICOM file (no 'DICM' marker)")
            continue
        except Exception as exc:
            _warn(warnings, p, f"skipped: cannot read it as DICOM ({type(exc).__name__}: {exc})")
            continue
        if ds.get("Rows") is None:  # DICOMDIR, structured reports, presentation states
            _warn(warnings, p, "skipped: DICOM file without an image")
            continue
        found.append((p, ds))
    if not found:
        more = f" (it has {subfolders} subfolder(s): choose the folder of one series)" if subfolders else ""
        raise DataError(folder, f"holds no DICOM image files{more}")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
    if len(series) > 1:
        raise DataError(folder, f"holds {len(series)} DICOM series (different SeriesInstanceUID); "
                                "put each series in its own folder")
    return found


def _warn(warnings: list[str] | None, path: Path, message: str) -> None:
    if warnings is not None:
        warnings.append(f"{path}: {message}")


def _floats(path: Path, ds, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DataError(path, f"DICOM {keyword} is {value!r}; expected {n} numbers")
    return out


def _dicom_geometry(folder: Path, slices: list[tuple[Path, Any]]) -> dict:
    """Slices sorted along the slice normal, spacing and RAS affine of a one-series folder."""
    p0, ds0 = slices[0]
    iop0 = _floats(p0, ds0, "ImageOrientationPatient", 6)
    ps0 = _floats(p0, ds0, "PixelSpacing", 2)
    size0 = (int(ds0.get("Rows", 0) or 0), int(ds0.get("Columns", 0) or 0))
    positions = []
    for p, ds in slices:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(p, "is a multi-frame (enhanced) DICOM file; only one-slice-per-file series are "
                               "read - convert it with dcm2niix")
        if not np.allclose(_floats(p, ds, "ImageOrientationPatient", 6), iop0, atol=1e-4):
            raise DataError(p, f"slice orientation differs from {p0.name}'s; the series is not one stack")
        if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != size0:
            raise DataError(p, f"slice size differs from {p0.name}'s {size0[0]} x {size0[1]} px")
        if not np.allclose(_floats(p, ds, "PixelSpacing", 2), ps0, rtol=SPACING_RTOL):
            raise DataError(p, f"PixelSpacing differs from {p0.name}'s {list(ps0)}")
        positions.append(_floats(p, ds, "ImagePositionPatient", 3))
    if 0 in size0:
        raise DataError(p0, f"DICOM image is {size0[1]} x {size0[0]} px")
    row_dir, col_dir = iop0[:3], iop0[3:]  # along a row (columns increase), down a column
    normal = np.cross(row_dir, col_dir)
    pos = np.array(positions)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    pos, along = pos[order], along[order]
    if len(pos) > 1:
        gaps = np.diff(along)
        if gaps.min() <= POSITION_TOL_MM:
            i = int(np.argmin(gaps))
            raise DataError(folder, f"slices {slices[order[i]][0].name} and {slices[order[i + 1]][0].name} lie "
                                    f"at the same position ({along[i]:.4g} mm along the slice normal)")
        median = float(np.median(gaps))
        if np.abs(gaps - median).max() > SLICE_GAP_RTOL * median:
            raise DataError(folder, f"slice gaps are not uniform ({gaps.min():.4g} to {gaps.max():.4g} mm "
                                    "along the slice normal): a slice is missing or the series mixes stacks")
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
        drift = np.abs(pos - (pos[0] + np.arange(len(pos))[:, None] * step)).max()
        if drift > max(POSITION_TOL_MM, SLICE_GAP_RTOL * float(np.linalg.norm(step))):
            raise DataError(folder, f"slice positions are not on one line (they stray by up to {drift:.3g} mm)")
    else:
        thick = float(ds0.get("SpacingBetweenSlices", 0) or ds0.get("SliceThickness", 0) or 1.0)
        step = normal * thick
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]  # PixelSpacing = (between rows, between columns)
    lps[:3, 1] = col_dir * ps0[0]
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS, as nibabel and dcm2niix
    spacing = (float(ps0[1]), float(ps0[0]), float(np.linalg.norm(step)))
    return {"order": [slices[i] for i in order], "spacing": spacing, "affine": affine}


def _dicom_dtype(ds, rescale: list[tuple[float, float]]) -> np.dtype:
    """int16/int32 when every slope is 1 and every intercept whole (CT), else float32."""
    if any(s != 1.0 or i != round(i) for s, i in rescale):
        return np.dtype(np.float32)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    inters = [i for _, i in rescale]
    if lo + min(inters) >= -32768 and hi + max(inters) <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


# --------------------------------------------------------------------------- geometry


def check_same_grid(image: Volume | OpenVolume, label: Volume | OpenVolume) -> None:
    """Raise DataError (naming the label file) unless both volumes share one voxel grid.

    Compares shape, spacing (relative :data:`SPACING_RTOL`) and, in RAS, the axis
    directions and origin (voxel centres within :data:`POSITION_TOL_MM`). A volume
    without an anatomical ``space`` (NRRD without ``space``, NIfTI with no q/sform)
    has no world position: only its shape and spacing are compared.
    """
    where = label.path
    if tuple(image.shape) != tuple(label.shape):
        raise DataError(where, f"label grid {_fmt_shape(label.shape)} voxels does not match the image's "
                               f"{_fmt_shape(image.shape)}")
    si, sl = np.asarray(image.spacing, float), np.asarray(label.spacing, float)
    if np.any(np.abs(si - sl) > SPACING_RTOL * np.maximum(np.abs(si), np.abs(sl))):
        raise DataError(where, f"label spacing {_fmt(sl)} mm does not match the image's {_fmt(si)} mm")
    ai, al = ras_affine(image), ras_affine(label)
    if ai is None or al is None:
        return
    extent = np.array(label.shape, float) - 1
    corners = np.array([[x, y, z] for x in (0, extent[0]) for y in (0, extent[1]) for z in (0, extent[2])])
    turn = np.abs(corners @ (al[:3, :3] - ai[:3, :3]).T).max()
    if turn > POSITION_TOL_MM:
        raise DataError(where, f"label orientation (RAS axis directions) {_fmt_dirs(al)} does not match the "
                               f"image's {_fmt_dirs(ai)} (voxels up to {turn:.3g} mm apart)")
    shift = float(np.linalg.norm(al[:3, 3] - ai[:3, 3]))
    if shift > POSITION_TOL_MM:
        raise DataError(where, f"label origin {_fmt(al[:3, 3])} mm (RAS) does not match the image's "
                               f"{_fmt(ai[:3, 3])} mm ({shift:.3g} mm apart)")


def _fmt(v: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def _fmt_shape(shape: Iterable[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _fmt_dirs(affine: np.ndarray) -> str:
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return ", ".join(_fmt(cols[:, a]) for a in range(3))


# --------------------------------------------------------------------------- writing


def write_label_volume(path: str | Path, labels: np.ndarray, like: Volume | OpenVolume,
                       protect: Iterable[str | Path] = ()) -> None:
    """Atomically write ``labels`` in the format, grid, voxel type and header of ``like``.

    ``like`` is the label volume being corrected: NIfTI keeps its header (affine,
    q/sform codes, zooms, dtype; ``path`` may be ``.nii`` or ``.nii.gz``); NRRD keeps
    every header field (space, space directions, origin, type, encoding, custom
    fields) and ``.seg.nrrd`` every ``Segment*`` field, except that each
    ``Segment<N>_Extent`` is recomputed for the new labels (Slicer crops a
    segment to its extent when loading). ``protect`` (and ``like.path``) are never
    overwritten. DataError when the shape differs, a value does not fit the dtype,
    the suffix is not ``like``'s format, or the file cannot be written.
    """
    path = Path(path)
    ensure_not_overwriting(path, [*protect, *([like.path] if like.path is not None else [])])
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(like.shape):
        raise DataError(path, f"labels have shape {_fmt_shape(labels.shape)} but the volume they correct "
                              f"({like.path}) has {_fmt_shape(like.shape)}")
    name, suffix = path.name.lower(), file_suffix(path)
    if like.format == "nifti":
        if suffix not in (".nii", ".nii.gz"):
            raise DataError(path, f"labels of a NIfTI volume are written as .nii or .nii.gz, not '{suffix}'")
        data = _nifti_bytes(path, labels, like, compress=suffix == ".nii.gz")
    elif like.format in ("nrrd", "seg.nrrd"):
        if like.format == "seg.nrrd" and not name.endswith(".seg.nrrd"):
            raise DataError(path, "labels of a 3D Slicer segmentation are written as .seg.nrrd")
        if suffix != ".nrrd":
            raise DataError(path, f"labels of a NRRD volume are written as .nrrd (one file), not '{suffix}'")
        data = _nrrd_bytes(path, labels, like)
    else:
        raise DataError(path, f"labels are written as NIfTI or NRRD, like the label file they correct; "
                              f"'{like.format}' volumes are only read")
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise DataError(path, f"cannot write the label volume ({e.strerror or e})") from None


def _fit_dtype(path: Path, labels: np.ndarray, dtype: np.dtype, like_path: Path | None) -> np.ndarray:
    """``labels`` cast to ``dtype``; DataError when a value would change."""
    if labels.dtype.kind not in "biuf":
        raise DataError(path, f"labels have dtype {labels.dtype}; expected whole-number label values")
    with np.errstate(all="ignore"):
        out = labels.astype(dtype)
        same = np.array_equal(out, labels)
    if not same:
        lo, hi = labels.min(), labels.max()
        room = f" ({np.iinfo(dtype).min}..{np.iinfo(dtype).max})" if dtype.kind in "iu" else ""
        raise DataError(path, f"label values {lo}..{hi} do not fit the {dtype} voxels{room} of "
                              f"{like_path.name if like_path else 'the original label file'}")
    return out


def _nifti_bytes(path: Path, labels: np.ndarray, like: Volume | OpenVolume, compress: bool) -> bytes:
    nib = _import("nibabel", "NIfTI", path)
    hdr = like.header.copy()
    dtype = hdr.get_data_dtype()
    data = _fit_dtype(path, labels, dtype, like.path).reshape(hdr.get_data_shape())
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    try:
        # the header's own affine: nibabel then leaves qform, sform, codes and zooms untouched
        img = klass(data, hdr.get_best_affine(), header=hdr)
        raw = img.to_bytes()
    except Exception as e:
        raise DataError(path, f"cannot encode the NIfTI file ({type(e).__name__}: {e})") from None
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def _nrrd_bytes(path: Path, labels: np.ndarray, like: Volume | OpenVolume) -> bytes:
    nrrd = _import("nrrd", "NRRD", path)
    header = copy.deepcopy(like.header)
    for key in ("data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"):
        header.pop(key, None)
    data = _fit_dtype(path, labels, np.dtype(like.dtype), like.path)
    if like.format == "seg.nrrd":
        _update_segment_extents(header, data)
    buf = io.BytesIO()
    try:
        nrrd.write(buf, data, header, compression_level=6, index_order="F")
    except Exception as e:
        raise DataError(path, f"cannot encode the NRRD file ({type(e).__name__}: {e})") from None
    return buf.getvalue()


def _update_segment_extents(header: dict, labels: np.ndarray) -> None:
    """Set each ``Segment<N>_Extent`` present to the bounding box of its label value."""
    values: dict[int, int] = {}
    for key in header:
        m = _SEGMENT_KEY.match(str(key))
        if m and m.group(2) == "LabelValue" and str(header[key]).strip().lstrip("-").isdigit():
            values[int(m.group(1))] = int(header[key])
    for n, value in values.items():
        key = f"Segment{n}_Extent"
        if key not in header:
            continue
        where = [np.flatnonzero((labels == value).any(axis=tuple(b for b in range(3) if b != a)))
                 for a in range(3)]
        box = [0, -1] * 3 if not where[0].size else [int(x) for w in where for x in (w[0], w[-1])]
        header[key] = " ".join(str(v) for v in box)
