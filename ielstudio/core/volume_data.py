"""Volume data sets: a folder of image volumes (NIfTI, NRRD, DICOM series folders) and a
folder of label volumes beside it, paired by name, checked for the same grid, and cut
into the 2-D slices the segmenter trains on (`core.volumes` reads and writes the files).

Pairing follows `dataset.scan_pairs`: ``case01.nii.gz`` matches ``case01.nii.gz``,
``case01_seg.nii.gz``, ``case01-label.nrrd`` or 3D Slicer's ``case01.seg.nrrd``; a DICOM
series is a sub-folder of the images folder, matched by the folder's name. Slices are
taken across the axis with the coarsest spacing (`volumes.slice_axis`), so each slice
has the finest in-plane spacing. Intensities are normalised per volume (1st-99th
percentile), so the slices of one scan keep their relative contrast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import Sample, Skipped, mask_key
from .errors import DataError
from .imageio import IMAGE_EXTENSIONS, MAX_CLASSES, MaskEncoding, file_stem, file_suffix, normalize_intensity

#: Files that hold a volume (a DICOM series is a folder).
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr")
#: Separates a volume's name from its slice index in a sample name: ``case01/z012``.
SLICE_SEP = "/"


@dataclass
class VolumePair:
    name: str
    image_path: Path  # a file, or a DICOM series folder
    label_path: Path


@dataclass
class VolumeCase:
    """One image volume with its label volume, on one grid; `axis`: the axis sliced across."""

    name: str
    image_path: Path
    label_path: Path
    label: object  # volumes.Volume of the label file (its header is written back)
    axis: int
    n_slices: int
    warnings: list[str] = field(default_factory=list)

    def slice_name(self, k: int) -> str:
        return f"{self.name}{SLICE_SEP}{k:04d}"


@dataclass
class VolumeDataset:
    """Every usable volume pair cut into slices. `values[c]`: the label value of class c
    (class 0 is value 0); `samples`: one per slice, named `case.slice_name(k)`."""

    cases: list[VolumeCase]
    samples: list[Sample]
    values: list[int]
    skipped: list[Skipped]
    warnings: list[str]
    context: int = 0  # neighbouring slices on each side stacked as input channels

    @property
    def n_classes(self) -> int:
        return max(2, len(self.values))

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    @property
    def encoding(self) -> MaskEncoding:
        return volume_encoding(self.values)

    def groups(self) -> dict[str, str]:
        """Sample name -> volume name: the slices of a volume are held out together."""
        return {s.name: s.name.split(SLICE_SEP)[0] for s in self.samples}

    def slices_of(self, case: VolumeCase) -> list[Sample]:
        prefix = case.name + SLICE_SEP
        return [s for s in self.samples if s.name.startswith(prefix)]


def volume_encoding(values, dtype: str = "uint8") -> MaskEncoding:
    """The class mapping of a volume data set: class c is label value ``values[c]``."""
    return MaskEncoding("index", tuple(int(v) for v in values), dtype=str(dtype), suffix=".nii.gz")


def checked_label_values(present: set[int], masks_dir: str | Path) -> list[int]:
    """The label values found over a data set's label volumes, ascending (0 included);
    DataError naming the masks folder when they are more than `MAX_CLASSES`."""
    values = sorted({0, *present})
    if len(values) > MAX_CLASSES:
        raise DataError(masks_dir, f"the label volumes hold {len(values)} different values; at most {MAX_CLASSES} "
                                   "classes are supported")
    return values


def _volume_name(path: Path) -> str:
    stem = file_stem(path.name) if path.is_file() else path.name
    return stem[:-4] if stem.lower().endswith(".seg") else stem


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and file_suffix(path) in VOLUME_EXTENSIONS


def _nifti_is_3d(path: Path) -> bool:
    try:
        import nibabel

        shape = nibabel.load(str(path)).shape
    except Exception:  # unreadable: let the volume reader name the problem
        return True
    return len(shape) >= 3 and sum(1 for s in shape[:3] if s > 1) == 3


def is_volume_dataset(images_dir: str | Path) -> bool:
    """True when the images folder holds volumes (3-D NIfTI/NRRD files or DICOM series
    folders), False for 2-D images; DataError when it mixes both."""
    folder = Path(images_dir)
    if not folder.is_dir():
        return False
    volumes, flat = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if any(c.is_file() and not c.name.startswith(".") for c in p.iterdir()):
                volumes.append(p)
        elif file_suffix(p) in (".nrrd", ".nhdr") or (file_suffix(p) in (".nii", ".nii.gz") and _nifti_is_3d(p)):
            volumes.append(p)
        elif file_suffix(p) in IMAGE_EXTENSIONS:
            flat.append(p)
    if volumes and flat:
        raise DataError(folder, f"mixes 3-D volumes ({volumes[0].name}, ...) and 2-D images ({flat[0].name}, ...); "
                                "put them in separate data sets")
    return bool(volumes)


def scan_volume_pairs(images_dir: str | Path, masks_dir: str | Path) -> tuple[list[VolumePair], list[Skipped]]:
    """Pair image volumes with label volumes by name (no voxels read)."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(masks_dir, "masks folder does not exist" if not masks_dir.exists() else "not a folder")
    skipped: list[Skipped] = []
    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith(".") or not (p.is_dir() or _is_volume_file(p)):
            continue
        key = _volume_name(p).lower()
        if key in images:
            skipped.append(Skipped(p, f"another volume has the same name ({images[key].name}); skipped"))
        else:
            images[key] = p
    labels: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if p.name.startswith(".") or not _is_volume_file(p):
            continue
        stem = _volume_name(p)
        key = next((k for k in mask_key(stem) if k in images), None)
        if key is None:
            skipped.append(Skipped(p, "no image volume with a matching name"))
        elif key in labels:
            skipped.append(Skipped(p, f"volume {images[key].name} already has a label volume ({labels[key].name})"))
        else:
            labels[key] = p
    pairs = []
    for key, path in images.items():
        if key in labels:
            pairs.append(VolumePair(_volume_name(path), path, labels[key]))
        else:
            skipped.append(Skipped(path, f"no label volume found (looked for {_volume_name(path)}.nii.gz, "
                                         f"{_volume_name(path)}_seg.nii.gz, .nrrd, .seg.nrrd ... in {masks_dir})"))
    if not pairs and not skipped:
        raise DataError(images_dir, "no volumes in this folder")
    return pairs, skipped


def context_slices(k: int, n_slices: int, context: int) -> list[int]:
    """The slices a model with ``context`` is given for slice ``k``: k - context .. k + context,
    the first and last slice repeated at the volume's ends."""
    return [min(n_slices - 1, max(0, j)) for j in range(k - context, k + context + 1)]


def load_volume_dataset(images_dir: str | Path, masks_dir: str | Path,
                        progress: Callable[[int, int], None] | None = None, context: int = 0) -> VolumeDataset:
    """Read every volume pair into slices; a pair whose grids differ, or that cannot be
    read, is skipped with its reason. ``progress(done, total)`` after each volume read
    (it may raise to cancel). ``context``: each sample's image holds the ``context``
    slices on either side of its slice too (channels k-context .. k+context, the first
    and last slice repeated at the ends of the volume)."""
    from . import volumes

    context = int(context)
    if context < 0:
        raise ValueError(f"slice context must be 0 or more, got {context}")

    pairs, skipped = scan_volume_pairs(images_dir, masks_dir)
    read: list[tuple[VolumePair, object, object, list[str]]] = []
    present: set[int] = {0}  # label values over the data set
    for i, pair in enumerate(pairs):
        if progress is not None:
            progress(i, len(pairs))
        notes: list[str] = []
        try:
            image = volumes.open_volume(pair.image_path, notes)
            label = volumes.read_volume(pair.label_path)
            volumes.check_same_grid(image, label)
            found = volumes.label_values(label)
        except DataError as e:
            skipped.append(Skipped(e.path or pair.label_path, e.problem))
            continue
        read.append((pair, image, label, notes))
        present.update(found)
    if progress is not None:
        progress(len(pairs), len(pairs))
    values = checked_label_values(present, masks_dir)
    lookup = {v: c for c, v in enumerate(values)}
    cases, samples, warnings = [], [], []
    encoding = volume_encoding(values)
    for pair, image, label, notes in read:
        axis = volumes.slice_axis(image)
        voxels = normalize_intensity(np.asarray(image.array, dtype=np.float32))
        labels = np.asarray(label.array)
        classes = np.zeros(labels.shape, np.int64)
        for v, c in lookup.items():
            if v:
                classes[labels == v] = c
        case = VolumeCase(pair.name, pair.image_path, pair.label_path, label, axis, image.shape[axis], notes)
        for k in range(case.n_slices):
            index = (slice(None),) * axis + (k,)
            around = context_slices(k, case.n_slices, context)
            planes = np.stack([voxels[(slice(None),) * axis + (j,)] for j in around])
            samples.append(Sample(case.slice_name(k), np.ascontiguousarray(planes),
                                  np.ascontiguousarray(classes[index]), encoding, pair.image_path, pair.label_path))
        cases.append(case)
        warnings += notes
        del voxels
    return VolumeDataset(cases, samples, values, skipped, warnings, context)


def volume_of(case: VolumeCase, slices: list[np.ndarray]) -> np.ndarray:
    """The class volume (the label file's axes) from its 2-D class slices, in order."""
    return np.stack(slices, axis=case.axis)


def class_values(classes: np.ndarray, values: list[int], dtype) -> np.ndarray:
    """Class indices back to the label values of the files."""
    return np.asarray(values, dtype=np.int64)[classes].astype(dtype, copy=False)
