"""Volumes in the review window (no Qt here): a volume data set opened from its headers,
its slices read when shown, 3-D objects found across slices, and the decided slices
exported as label volumes with their header.

- **Opening** (`scan_volume_dataset`) reads headers only: each image/label pair is
  paired by name, its grids compared (`volumes.check_same_grid`) and cut into slices
  along `volumes.slice_axis`, as `ielstudio clean` cuts them. Each slice is one `Pair`
  named ``case/0012`` (`volume_data.SLICE_SEP`), so the project keeps one decision per
  slice, and undo stores the one slice a stroke changed, never the volume.
- **Orientation**: a slice is shown as radiologists read it (`display_orientation`:
  axial and coronal slices with the patient's right on the screen's left, anterior or
  superior up; sagittal with anterior on the left), from the image's RAS affine. The
  window and the project hold slices in that frame (`to_display`); the job's proposals
  are turned into it, and export turns the decided slices back (`from_display`).
- **Showing** (`VolumeSlices`) reads a slice when it is shown; the last three volumes
  stay open (an uncompressed NIfTI is memory-mapped, a compressed one is read once),
  and the window opens the neighbours of the shown one in the background (`open`).
  The window shows raw intensities (Hounsfield units for CT), so window/level presets
  mean what they say; the model sees the volume's normalised intensities, as in
  `volume_data.load_volume_dataset`.
- **Objects** (`object_in_volume`): the 26-connected object through a voxel, found
  slice by slice, reading only the slices it spans; `plan_object_take` turns taking its
  proposal into slice decisions ready to record, away from the window's thread.
- **Export** (`iter_volume_export`): every volume written in its label file's format and
  header, decided slices replaced and every other voxel as the file holds it.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .dataset import Pair, Sample, Scan, Skipped
from .errors import DataError
from .imageio import MaskEncoding, atomic_write_text
from .volume_data import (SLICE_SEP, checked_label_values, class_values, context_slices, scan_volume_pairs,
                          volume_encoding)

#: Volumes kept open by `VolumeSlices`: the one shown and the ones before and after it.
OPEN_VOLUMES = 3
#: Voxels a window may read at once when it shows a slice: a volume with no random
#: access (gzip NIfTI, NRRD, a DICOM series) and more voxels than this is opened in a
#: background thread first. A 512 x 512 x 48 CT in gzip NRRD (12.6 M voxels) took
#: 157 ms for the image and 30 ms for its label here, about 15 ns per voxel, so this is
#: about 30 ms.
READ_AT_ONCE_VOXELS = 2_000_000


def split_slice_name(name: str) -> tuple[str, int] | None:
    """``"case01/0012"`` -> ``("case01", 12)``; None for a name that is not a slice's."""
    volume, sep, index = str(name).rpartition(SLICE_SEP)
    if not sep or not index.isdigit():
        return None
    return volume, int(index)


#: The three slice views: name, and (screen right, screen up) as RAS unit vectors.
VIEWS = {2: ("axial", (-1, 0, 0), (0, 1, 0)), 1: ("coronal", (-1, 0, 0), (0, 0, 1)),
         0: ("sagittal", (0, -1, 0), (0, 0, 1))}


@dataclass(frozen=True)
class Orientation:
    """How an array slice becomes the displayed one: transposed, then rows and/or columns
    reversed. `view`: "axial", "coronal", "sagittal" (or "" without a world position)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    view: str = ""


def display_orientation(affine_ras: np.ndarray | None, axis: int) -> Orientation:
    """The `Orientation` that shows slices along array `axis` of a volume with this RAS
    affine the radiological way (see the module doc); identity without an affine."""
    if affine_ras is None:
        return Orientation()
    dirs = np.asarray(affine_ras, float)[:3, :3]
    dirs = dirs / np.maximum(np.linalg.norm(dirs, axis=0), 1e-12)
    view, right, up = VIEWS[int(np.argmax(np.abs(dirs[:, axis])))]
    rows, cols = (dirs[:, a] for a in range(3) if a != axis)
    transpose = abs(rows @ right) > abs(cols @ right)
    across, down = (rows, cols) if transpose else (cols, rows)
    return Orientation(bool(transpose), bool(down @ up > 0), bool(across @ right < 0), view)


def to_display(plane: np.ndarray, o: Orientation) -> np.ndarray:
    """An array slice (its last two axes) in the displayed frame."""
    a = np.asarray(plane)
    if o.transpose:
        a = np.swapaxes(a, -1, -2)
    if o.flip_rows:
        a = a[..., ::-1, :]
    if o.flip_cols:
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def from_display(plane: np.ndarray, o: Orientation) -> np.ndarray:
    """A displayed slice back in the array's frame (`to_display` undone)."""
    a = np.asarray(plane)
    if o.flip_cols:
        a = a[..., ::-1]
    if o.flip_rows:
        a = a[..., ::-1, :]
    if o.transpose:
        a = np.swapaxes(a, -1, -2)
    return np.ascontiguousarray(a)


@dataclass(frozen=True)
class VolumeEntry:
    """One image volume and its label volume on one grid, cut along `axis` into `n_slices`,
    shown in `orientation`."""

    name: str
    image_path: Path
    label_path: Path
    axis: int
    n_slices: int
    shape: tuple[int, int, int]
    orientation: Orientation = Orientation()

    def slice_name(self, k: int) -> str:
        return f"{self.name}{SLICE_SEP}{k:04d}"

    def slice_names(self) -> list[str]:
        return [self.slice_name(k) for k in range(self.n_slices)]

    def index(self, k: int) -> tuple:
        """The numpy index of slice k in the volume's array."""
        return (slice(None),) * self.axis + (k,)


@dataclass
class VolumeScan(Scan):
    """A `dataset.Scan` of a volume data set: one `Pair` per slice (``pairs``), the
    volumes they come from (``volumes``) and the files skipped, with why."""

    volumes: list[VolumeEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {v.name: v for v in self.volumes}

    def volume(self, name: str) -> VolumeEntry | None:
        return self._by_name.get(name)

    def locate(self, slice_name: str) -> tuple[VolumeEntry, int] | None:
        """The volume and slice index of a slice name (None when it is not one of this scan)."""
        parts = split_slice_name(slice_name)
        if parts is None or parts[0] not in self._by_name:
            return None
        entry = self._by_name[parts[0]]
        return (entry, parts[1]) if 0 <= parts[1] < entry.n_slices else None

    def group_of(self) -> dict[str, str]:
        """Slice name -> volume name."""
        return {p.name: p.name.rpartition(SLICE_SEP)[0] for p in self.pairs}


def scan_volume_dataset(images_dir: str | Path, masks_dir: str | Path) -> VolumeScan:
    """Pair the volumes of two folders and cut them into slices from their headers (no
    voxels read); a pair whose grids differ or whose header cannot be read is skipped,
    naming the file and the difference."""
    from . import volumes

    pairs, skipped = scan_volume_pairs(images_dir, masks_dir)
    entries, slice_pairs = [], []
    for pair in pairs:
        try:
            image = volumes.open_volume(pair.image_path)
            label = volumes.open_volume(pair.label_path)
            volumes.check_same_grid(image, label)
        except DataError as e:
            skipped.append(Skipped(e.path or pair.label_path, e.problem))
            continue
        axis = volumes.slice_axis(image)
        entry = VolumeEntry(pair.name, Path(pair.image_path), Path(pair.label_path), axis, int(image.shape[axis]),
                            tuple(int(s) for s in image.shape),
                            display_orientation(volumes.ras_affine(image), axis))
        entries.append(entry)
        slice_pairs += [Pair(entry.slice_name(k), entry.image_path, entry.label_path) for k in range(entry.n_slices)]
    return VolumeScan(slice_pairs, skipped, Path(images_dir), Path(masks_dir), volumes=entries)


def settle_volume_encoding(scan: VolumeScan, progress: Callable[[int, int], None] | None = None
                           ) -> tuple[MaskEncoding, list[Skipped]]:
    """The data set's class mapping from its label volumes (every value found, ascending;
    what `load_volume_dataset` finds), and the label files that cannot be read."""
    from . import volumes

    present, skipped, dtype = {0}, [], None
    for i, entry in enumerate(scan.volumes):
        try:
            label = volumes.open_volume(entry.label_path)
            present.update(volumes.label_values(label))
            dtype = dtype or str(label.dtype)
        except DataError as e:
            skipped.append(Skipped(e.path or entry.label_path, e.problem))
        if progress is not None:
            progress(i + 1, len(scan.volumes))
    return volume_encoding(checked_label_values(present, scan.masks_dir), dtype or "uint8"), skipped


def classes_of(labels: np.ndarray, encoding: MaskEncoding, path: Path | None = None) -> np.ndarray:
    """Label values -> class indices (int64) of the data set's mapping; DataError naming
    ``path`` for a value the mapping does not know."""
    values = np.asarray(encoding.values, np.int64)
    labels = np.asarray(labels)
    flat = labels.astype(np.int64, copy=False).reshape(-1)
    pos = np.searchsorted(values, flat).clip(0, len(values) - 1)
    known = values[pos] == flat
    if not known.all():
        bad = int(flat[~known][0])
        raise DataError(path, f"label value {bad} is not one of the data set's values {list(encoding.values)}")
    return pos.reshape(labels.shape)


class VolumeSlices:
    """Slices of a `VolumeScan` read when asked for (the window's image under review)."""

    def __init__(self, scan: VolumeScan, keep: int = OPEN_VOLUMES):
        import threading

        self.scan, self.keep = scan, keep
        self._open: OrderedDict[str, tuple] = OrderedDict()
        self._own_values: dict[str, list[int]] = {}  # volume -> its label values (a whole-volume np.unique)
        self._ranges: dict[str, tuple[float, float] | None] = {}  # volume -> its intensity range (`model_input`)
        self._lock = threading.RLock()  # a background thread may open the next volume meanwhile

    def open(self, volume: str) -> None:
        """Read volume ``volume`` now (from a background thread: the next one in the queue),
        so that showing its slices later reads nothing more from a compressed file."""
        entry = self.scan.volume(volume)
        if entry is not None:
            with self._lock:
                for vol in self._volumes(entry):
                    if not _random_access(vol.path):
                        vol.array  # noqa: B018  (loads and keeps the voxels)

    def ready(self, volume: str) -> bool:
        """Whether showing a slice of ``volume`` is quick: it is open (`open`), it reads
        single slices from its files (uncompressed NIfTI), or it is small
        (`READ_AT_ONCE_VOXELS`). Never waits for a thread that is opening it."""
        entry = self.scan.volume(volume)
        if entry is None or int(np.prod(entry.shape)) <= READ_AT_ONCE_VOXELS:
            return True
        opened = self._open.get(entry.name)
        if opened is None:
            return all(_random_access(p) for p in (entry.image_path, entry.label_path))
        return all(_random_access(v.path) or v._array is not None for v in opened)

    def _volumes(self, entry: VolumeEntry):
        if entry.name in self._open:
            self._open.move_to_end(entry.name)
            return self._open[entry.name]
        from . import volumes

        image = volumes.open_volume(entry.image_path)
        label = volumes.open_volume(entry.label_path)
        if tuple(image.shape) != entry.shape or tuple(label.shape) != entry.shape:
            raise DataError(entry.label_path, "the volume changed on disk since the data set was opened; reopen it")
        self._open[entry.name] = (image, label)
        while len(self._open) > self.keep:
            self._open.popitem(last=False)
        return image, label

    def _plane(self, volume, entry: VolumeEntry, k: int) -> np.ndarray:
        """Slice k in the displayed frame."""
        with self._lock:
            return self._read_plane(volume, entry, k)

    @staticmethod
    def _read_plane(volume, entry: VolumeEntry, k: int) -> np.ndarray:
        return to_display(_array_plane(volume, entry.axis, k), entry.orientation)

    def cross_section(self, volume: str, axis: int, index: int, encoding: MaskEncoding | None):
        """Plane ``index`` across array ``axis`` of ``volume`` (any of the three axes), in
        the array's frame: (raw intensities float32, class indices of the label file,
        spacing in mm per array axis, RAS affine or None). For the orthogonal views
        (`core.ortho_planes`); safe in a worker thread."""
        from . import volumes

        entry = self.scan.volume(volume)
        if entry is None:
            raise KeyError(volume)
        with self._lock:
            image, label = self._volumes(entry)
            pixels = np.asarray(_array_plane(image, axis, index), np.float32)
            values = _array_plane(label, axis, index)
        encoding = self._own_encoding(entry, label) if encoding is None else encoding
        pixels[~np.isfinite(pixels)] = 0.0
        return (pixels, classes_of(values, encoding, entry.label_path), tuple(float(s) for s in image.spacing),
                volumes.ras_affine(image))


    def _locate(self, name: str) -> tuple[VolumeEntry, int]:
        found = self.scan.locate(name)
        if found is None:
            raise KeyError(name)
        return found

    def sample(self, name: str, encoding: MaskEncoding | None) -> Sample:
        """Slice ``name`` in the displayed frame: ``image`` (1, H, W) float32 raw intensities,
        ``mask`` its class indices (``encoding`` None, before the data set's mapping is
        settled: this volume's own values). DataError naming the file when it cannot be read."""
        entry, k = self._locate(name)
        with self._lock:
            image, label = self._volumes(entry)
        encoding = self._own_encoding(entry, label) if encoding is None else encoding
        pixels = np.asarray(self._plane(image, entry, k), np.float32)
        bad = ~np.isfinite(pixels)
        warnings = []
        if bad.any():
            pixels[bad] = 0.0
            warnings.append(f"{entry.image_path}: {int(bad.sum())} voxels of slice {k} are not numbers; shown as 0")
        mask = classes_of(self._plane(label, entry, k), encoding, entry.label_path)
        return Sample(name, pixels[None], mask, encoding, entry.image_path, entry.label_path, warnings)

    def model_input(self, name: str, context: int = 0) -> np.ndarray:
        """What a model trained on this data set (`volume_data.load_volume_dataset`) is given
        for slice ``name``: (2 context + 1, H, W) float32, the slice and ``context`` neighbours
        on either side (repeated at the volume's ends), rescaled by the whole volume's
        intensity range, in the array's frame (`to_display` turns its output to the window's).
        For a reopened project's prediction maps; safe in a worker thread."""
        from .imageio import intensity_range, rescale_intensity

        entry, k = self._locate(name)
        with self._lock:
            image, _ = self._volumes(entry)
            if entry.name not in self._ranges:  # reads the whole volume once
                self._ranges[entry.name] = intensity_range(np.asarray(image.array, np.float32))
            planes = np.stack([np.asarray(_array_plane(image, entry.axis, j), np.float32)
                               for j in context_slices(k, entry.n_slices, context)])
        return rescale_intensity(planes, self._ranges[entry.name])

    def orientation(self, name: str) -> Orientation:
        """How slice ``name``'s volume is shown (`to_display`)."""
        return self._locate(name)[0].orientation

    def _own_encoding(self, entry: VolumeEntry, label) -> MaskEncoding:
        """Until the data set's mapping is read: this volume's own label values (found once)."""
        from . import volumes

        with self._lock:
            if entry.name not in self._own_values:
                self._own_values[entry.name] = sorted({0, *volumes.label_values(label)})
        return volume_encoding(self._own_values[entry.name])

    def thumbnail_source(self, name: str) -> np.ndarray:
        """Slice ``name`` as a 2-D float array (for the queue's thumbnail)."""
        entry, k = self._locate(name)
        with self._lock:
            return np.asarray(self._plane(self._volumes(entry)[0], entry, k), np.float32)


def _array_plane(volume, axis: int, index: int) -> np.ndarray:
    """Plane ``index`` across ``axis`` of an open volume, in the array's frame."""
    if volume.format == "nifti" and str(volume.path).lower().endswith(".gz"):
        return np.asarray(volume.array[(slice(None),) * axis + (index,)])  # gzip has no random access: read once, keep
    return volume.slice(axis, index)


def _random_access(path: Path) -> bool:
    """Whether single slices of this file are read without reading it all (uncompressed NIfTI)."""
    return str(path).lower().endswith(".nii")


def object_in_volume(foreground: Callable[[int], np.ndarray], n_slices: int, k: int, row: int, col: int
                     ) -> dict[int, np.ndarray]:
    """The 26-connected object of foreground voxels through voxel (k, row, col), as
    {slice index: bool (H, W) mask of the object there}; empty when that voxel is
    background. ``foreground(j)`` gives slice j's foreground; only the slices the
    object spans (and one either side) are asked for."""
    import cv2

    labels: dict[int, np.ndarray] = {}

    def labels_of(j: int) -> np.ndarray:
        if j not in labels:
            fg = np.ascontiguousarray(np.asarray(foreground(j), bool), np.uint8)
            labels[j] = cv2.connectedComponents(fg, connectivity=8)[1]
        return labels[j]

    start = labels_of(k)[row, col]
    if start == 0:
        return {}
    region = {k: labels_of(k) == start}
    frontier = [k]
    kernel = np.ones((3, 3), np.uint8)
    while frontier:
        j = frontier.pop()
        reach = cv2.dilate(region[j].astype(np.uint8), kernel) > 0  # the 8 in-plane neighbours on the next slice
        for nb in (j - 1, j + 1):
            if not 0 <= nb < n_slices:
                continue
            lab = labels_of(nb)
            hit = np.unique(lab[reach & (lab > 0)])
            if hit.size == 0:
                continue
            grown = np.isin(lab, hit)
            old = region.get(nb)
            if old is not None:
                grown |= old
                if np.array_equal(grown, old):
                    continue
            region[nb] = grown
            frontier.append(nb)
    return region


@dataclass(frozen=True)
class ObjectTake:
    """What `plan_object_take` found: the slice decisions that take the proposal for one
    3-D object (`session.PlannedDecision`, status "edited", only slices it changes)."""

    volume: str
    plans: list
    first: int  # the slices the object spans (0-based)
    last: int

    @property
    def span(self) -> str:
        """The slices in words, counted from 1 as the slice bar counts them."""
        return f"slice {self.first + 1}" if self.first == self.last else f"slices {self.first + 1}-{self.last + 1}"


def plan_object_take(project, entry: VolumeEntry, k: int, row: int, col: int,
                     given_mask: Callable[[str], np.ndarray], proposal: Callable[[str], np.ndarray | None]
                     ) -> ObjectTake:
    """Take the proposal for the 3-D object under voxel (k, row, col) of volume ``entry``:
    the 26-connected object of foreground in the decided (else given) or proposed labels,
    replaced by the proposal on every slice it spans where that slice has one.

    Reads the project's decided masks and the given readers (``given_mask(name)``: the
    slice's mask as given; ``proposal(name)``: its proposal or None), all safe in a
    worker thread, and encodes the new masks there, so the window only records them
    (`Project.record_planned`, one transaction, refused when a slice was decided
    otherwise meanwhile). ValueError when a slice the object reaches cannot be read."""
    from .session import plan_decision

    names = entry.slice_names()
    seen, current, proposed = {}, {}, {}

    def foreground(j: int) -> np.ndarray:
        decided = project.decision(names[j])
        seen[j] = decided.id
        current[j] = project.mask(decided.mask_id) if decided.mask_id is not None else given_mask(names[j])
        if current[j] is None:
            raise ValueError(f"{names[j]} cannot be read")
        proposed[j] = proposal(names[j])
        fg = current[j] != 0
        return fg | (proposed[j] != 0) if proposed[j] is not None else fg

    region = object_in_volume(foreground, entry.n_slices, k, row, col)
    plans = []
    for j in sorted(region):
        if proposed.get(j) is None:
            continue
        after = np.array(current[j], np.int64, copy=True)
        after[region[j]] = proposed[j][region[j]]
        if not np.array_equal(after, current[j]):
            plans.append(plan_decision(names[j], "edited", after, seen[j]))
    return ObjectTake(entry.name, plans, min(region, default=k), max(region, default=k))


def volume_status(statuses: Iterable[str]) -> str:
    """One status for a volume from its slices': the common one when they agree;
    "unreviewed" while any slice is; "skipped" when every slice is; else "edited" (a
    mix of decisions: the volume differs from both the given and the proposed labels)."""
    counts = Counter(s for s in statuses)
    if not counts:
        return "unreviewed"
    if len(counts) == 1:
        return next(iter(counts))
    if counts.get("unreviewed"):
        return "unreviewed"
    decided = {s for s in counts if s != "skipped"}
    return next(iter(decided)) if len(decided) == 1 else "edited"


def next_slice_to_review(names: list[str], statuses: dict[str, str], scores: dict[str, float | None],
                         current: str | None = None) -> str | None:
    """Of one volume's slice names, the worst-scored unreviewed one other than `current`
    (unscored ones by position); None when every other slice is decided."""
    left = [n for n in names if n != current and statuses.get(n, "unreviewed") == "unreviewed"]
    if not left:
        return None
    return min(left, key=lambda n: (scores.get(n) is None, scores.get(n) or 0.0, names.index(n)))


# --------------------------------------------------------------------------- export


def iter_volume_export(project, scan: VolumeScan, out_dir: str | Path, volume_scores: dict | None = None,
                       cancel: Callable[[], bool] | None = None) -> Iterator:
    """Write every volume's label volume into `out_dir`: the label file's name, format and
    header (`volumes.write_label_volume`), the accepted/edited slices from the project
    and every other voxel exactly as the original holds it. One report row per volume
    (`report.json`, `report.csv`), with each slice's status. Yields
    `session.ExportProgress` per volume, then `session.ExportDone`."""
    from . import volumes
    from .session import ExportDone, ExportProgress, ExportReport, _now

    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(project.masks_dir).resolve():
        raise DataError(out_dir, "is the original masks folder; export into another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    encoding = project.mask_encoding()
    scores = volume_scores or {}
    rows, written, cancelled = [], 0, False
    for entry in scan.volumes:
        if cancel is not None and cancel():
            cancelled = True
            break
        decisions = [project.decision(n) for n in entry.slice_names()]
        statuses = Counter(d.status for d in decisions)
        row = {"name": entry.name, "status": volume_status(d.status for d in decisions), "output": None,
               "score": scores.get(entry.name), "slices": entry.n_slices, "slice_axis": entry.axis,
               "slice_statuses": dict(statuses),
               "changed_slices": [], "changed_voxels": None, "voxels_before": None, "voxels_after": None,
               "error": None}
        try:
            dst = out_dir / entry.label_path.name
            if dst.suffix.lower() == ".nhdr":  # a detached header is written back as one .nrrd file
                dst = dst.with_suffix(".nrrd")
            label = volumes.open_volume(entry.label_path)
            original = np.asarray(label.array)
            out = np.array(original, copy=True)
            for k, d in enumerate(decisions):
                if d.mask_id is None:
                    continue
                classes = from_display(project.mask(d.mask_id), entry.orientation)
                plane = out[entry.index(k)]
                if classes.shape != plane.shape:
                    raise DataError(entry.label_path, f"the decided mask of slice {k} is {classes.shape} but the "
                                                      f"volume's slices are {plane.shape}")
                new = class_values(classes, list(encoding.values), original.dtype)
                if not np.array_equal(new, plane):
                    row["changed_slices"].append(k)
                out[entry.index(k)] = new
            volumes.write_label_volume(dst, out, label, protect=[entry.label_path])
            written += 1
            row.update(output=dst.name, changed_voxels=int((out != original).sum()),
                       voxels_before=_value_counts(original), voxels_after=_value_counts(out))
        except (DataError, ValueError, OSError) as e:
            row["error"] = str(e)
        rows.append(row)
        yield ExportProgress(len(rows), len(scan.volumes), entry.name)
    report = ExportReport(out_dir, rows, written, sum(r["error"] is not None for r in rows),
                          out_dir / "report.csv", out_dir / "report.json")
    summary = {
        "project": str(project.path), "exported_at": _now(), "kind": "volumes",
        "images_dir": str(project.images_dir), "masks_dir": str(project.masks_dir),
        "checkpoint": None if project.checkpoint is None else
        {"path": str(project.checkpoint.path), "sha256": project.checkpoint.sha256},
        "label_values": list(encoding.values),
        "finished": not cancelled,
        "all_reviewed": not cancelled and all(not r["slice_statuses"].get("unreviewed") for r in rows),
        "total": len(scan.volumes), "written": written, "errors": report.errors,
        "skipped": [{"path": str(s.path), "problem": s.problem} for s in scan.skipped],
        "volumes": rows,
    }
    atomic_write_text(report.json_path, json.dumps(summary, indent=1))
    atomic_write_text(report.csv_path, _report_csv(rows))
    yield ExportDone(report)


def _value_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values, counts)}


def _report_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "status", "output", "score", "slices", "accepted", "edited", "kept", "unreviewed",
                "skipped", "changed_slices", "changed_voxels", "error"])
    for r in rows:
        s = r["slice_statuses"]
        w.writerow([r["name"], r["status"], r["output"] or "", "" if r["score"] is None else r["score"], r["slices"],
                    *(s.get(k, 0) for k in ("accepted", "edited", "kept", "unreviewed", "skipped")),
                    " ".join(str(k) for k in r["changed_slices"]),
                    "" if r["changed_voxels"] is None else r["changed_voxels"], r["error"] or ""])
    return buf.getvalue()
