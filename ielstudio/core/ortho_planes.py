"""The two other planes through a point of the volume slice under review, as 3D Slicer
and ITK-SNAP show them beside it (no Qt here).

The window reviews a volume slice by slice along one axis (`volume_review`). Beside the
slice, `ortho_planes` gives the two planes across the other two array axes through a
point of it: each in the radiological orientation of its own view
(`volume_review.display_orientation`), with its pixel spacing in mm (a reformat across
5 mm slices is drawn 5 mm tall per row), the labels as decided so far (a slice's
accepted or edited mask where it has one, else the label file), the point, and the
line along which the slice under review crosses it. `voxel_at` and `display_point` map
between a displayed pixel and the voxel it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .volume_review import Orientation, VolumeEntry, display_orientation, from_display, to_display


@dataclass(frozen=True)
class OrthoPlane:
    """One plane across array ``axis`` at ``index``, in its displayed frame."""

    axis: int
    index: int
    view: str  # "axial", "coronal", "sagittal", or "" without a world orientation
    orientation: Orientation
    image: np.ndarray  # raw intensities (H, W) float32
    labels: np.ndarray  # class indices (H, W) int64: decided masks where a slice has one, else the label file
    spacing: tuple[float, float]  # mm between rows, between columns
    point: tuple[int, int]  # the point's (row, col)
    reviewed_line: tuple[str, int]  # where the slice under review crosses: ("row", r) or ("col", c)
    volume_shape: tuple[int, int, int]

    def voxel(self, row: int, col: int) -> tuple[int, int, int]:
        """The voxel shown at (row, col) of this plane."""
        return voxel_at(self.volume_shape, self.axis, self.index, self.orientation, row, col)


def _plane_axes(axis: int) -> tuple[int, int]:
    """The array axes of a plane across ``axis`` (its rows, its columns before `to_display`)."""
    a, b = (x for x in range(3) if x != axis)
    return a, b


def display_point(shape: tuple[int, int, int], axis: int, o: Orientation, voxel) -> tuple[int, int]:
    """Where voxel (i, j, k) shows in the plane across ``axis`` displayed in ``o``: (row, col)."""
    a, b = _plane_axes(axis)
    r, c, h, w = voxel[a], voxel[b], shape[a], shape[b]
    if o.transpose:
        r, c, h, w = c, r, w, h
    if o.flip_rows:
        r = h - 1 - r
    if o.flip_cols:
        c = w - 1 - c
    return int(r), int(c)


def voxel_at(shape: tuple[int, int, int], axis: int, index: int, o: Orientation, row: int, col: int
             ) -> tuple[int, int, int]:
    """The voxel shown at (row, col) of plane ``index`` across ``axis`` displayed in ``o``
    (`display_point` undone)."""
    a, b = _plane_axes(axis)
    h, w = (shape[b], shape[a]) if o.transpose else (shape[a], shape[b])
    r, c = (h - 1 - row if o.flip_rows else row), (w - 1 - col if o.flip_cols else col)
    if o.transpose:
        r, c = c, r
    voxel = [0, 0, 0]
    voxel[axis], voxel[a], voxel[b] = int(index), int(r), int(c)
    return tuple(voxel)


def ortho_planes(cross_section: Callable, entry: VolumeEntry, voxel, decided: Callable[[str], np.ndarray | None]
                 ) -> list[OrthoPlane]:
    """The planes across the two axes other than ``entry.axis`` through ``voxel``.

    ``cross_section(volume, axis, index)``: (intensities, class indices, spacing per axis,
    RAS affine or None) of a plane in the array's frame (`VolumeSlices.cross_section`
    with the data set's encoding); ``decided(slice name)``: that slice's accepted or
    edited mask in the displayed frame, or None (kept as the file holds it). Reads only
    through these, so it runs in a worker thread."""
    masks = {k: decided(entry.slice_name(k)) for k in range(entry.n_slices)}
    planes = []
    for axis in _plane_axes(entry.axis):
        index = int(voxel[axis])
        image, labels, spacing, affine = cross_section(entry.name, axis, index)
        labels = np.array(labels, np.int64, copy=True)
        a, b = _plane_axes(axis)  # entry.axis is one of them; the other is shared with the slices
        for k, mask in masks.items():
            if mask is None:
                continue
            across = from_display(mask, entry.orientation)  # the slice in the array's frame
            # the line of slice k on this plane: where its own axis `axis` equals `index`
            sa, sb = _plane_axes(entry.axis)
            line = across[index, :] if sa == axis else across[:, index]
            if a == entry.axis:
                labels[k, :] = line
            else:
                labels[:, k] = line
        o = display_orientation(affine, axis)
        spacing_rc = (spacing[b], spacing[a]) if o.transpose else (spacing[a], spacing[b])
        shape = tuple(int(n) for n in entry.shape)
        point = display_point(shape, axis, o, voxel)
        # the slice under review is the set of voxels with voxel[entry.axis] fixed: a row or a column here
        along_rows = (a == entry.axis) != o.transpose
        line = ("row", point[0]) if along_rows else ("col", point[1])
        planes.append(OrthoPlane(axis, index, o.view, o, to_display(image, o), to_display(labels, o),
                                 spacing_rc, point, line, shape))
    return planes
