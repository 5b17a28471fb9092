"""The other two planes through a point of a volume slice: voxel <-> displayed pixel in
every orientation, decided slices drawn into the reformats, pixel spacing and the line
of the slice under review."""

import itertools

import numpy as np
import pytest

from ielstudio.core.ortho_planes import display_point, ortho_planes, voxel_at
from ielstudio.core.volume_review import Orientation, VolumeEntry, display_orientation, to_display

SHAPE = (7, 9, 5)
ORIENTATIONS = [Orientation(*flags) for flags in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize("o", ORIENTATIONS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_voxel_shows_where_to_display_puts_it_and_maps_back(axis, o):
    rng = np.random.default_rng(axis)
    for _ in range(10):
        voxel = tuple(int(rng.integers(0, n)) for n in SHAPE)
        volume = np.zeros(SHAPE, np.uint8)
        volume[voxel] = 1
        shown = to_display(volume[(slice(None),) * axis + (voxel[axis],)], o)
        point = display_point(SHAPE, axis, o, voxel)
        assert tuple(np.argwhere(shown)[0]) == point
        assert voxel_at(SHAPE, axis, voxel[axis], o, *point) == voxel


def cross_section_of(image, label, spacing, affine):
    def cross_section(volume, axis, index):
        take = (slice(None),) * axis + (index,)
        return image[take].astype(np.float32), label[take].astype(np.int64), spacing, affine

    return cross_section


def test_the_planes_show_decided_slices_the_point_and_the_reviewed_slice_in_true_aspect():
    # an LPS-like RAS affine: 0.8 mm in plane, 3 mm slices along array axis 2
    affine = np.diag([-0.8, -0.8, 3.0, 1.0])
    shape = (12, 10, 6)
    label = np.zeros(shape, np.int64)
    label[3:9, 2:8, 1:5] = 1
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    entry = VolumeEntry("case", None, None, 2, shape[2], shape, display_orientation(affine, 2))
    k = 3
    # slice 3 was edited: its object erased; slice 2 has no decision (the file's labels)
    edited = np.zeros(to_display(label[:, :, k], entry.orientation).shape, np.int64)
    decided = {entry.slice_name(k): edited}
    point_on_slice = display_point(shape, 2, entry.orientation, (5, 4, k))
    voxel = voxel_at(shape, 2, k, entry.orientation, *point_on_slice)
    assert voxel == (5, 4, k)
    planes = ortho_planes(cross_section_of(image, label, (0.8, 0.8, 3.0), affine), entry, voxel, decided.get)
    assert [p.axis for p in planes] == [0, 1] and [p.index for p in planes] == [5, 4]
    assert {p.view for p in planes} == {"sagittal", "coronal"}
    for p in planes:
        take = (slice(None),) * p.axis + (p.index,)
        expected = label[take].copy()
        expected[:, k] = 0  # the plane's array frame: (other in-plane axis, slice axis)
        np.testing.assert_array_equal(p.labels, to_display(expected, p.orientation))
        np.testing.assert_array_equal(p.image, to_display(image[take], p.orientation))
        assert p.image[p.point] == image[voxel]  # the cross is on the voxel
        assert p.voxel(*p.point) == voxel
        # the slices run up the screen, 3 mm apart; the reviewed one is a row through the point
        assert p.spacing == (3.0, 0.8)
        assert p.reviewed_line == ("row", p.point[0])
        rows = {p.voxel(p.reviewed_line[1], c)[2] for c in range(p.image.shape[1])}
        assert rows == {k}
