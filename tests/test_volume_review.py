"""core.volume_review: volumes opened from headers alone, 3-D objects across slices, the
radiological display frame and its inverse, and the per-volume status and slice order."""

import numpy as np
import pytest

from ielstudio.core import volumes
from ielstudio.core.errors import DataError
from ielstudio.core.volume_review import (
    Orientation,
    classes_of,
    display_orientation,
    from_display,
    next_slice_to_review,
    object_in_volume,
    scan_volume_dataset,
    to_display,
    volume_encoding,
    volume_status,
)

nib = pytest.importorskip("nibabel")
ndimage = pytest.importorskip("scipy.ndimage")


@pytest.mark.parametrize("seed", range(6))
def test_the_object_found_slice_by_slice_is_the_26_connected_component(seed):
    rng = np.random.default_rng(seed)
    fg = ndimage.binary_opening(rng.random((7, 30, 30)) > 0.55, np.ones((1, 2, 2)))  # blobs touching in many ways
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3, 3)))
    asked = []

    def foreground(j):
        asked.append(j)
        return fg[j]

    k, r, c = np.argwhere(fg)[rng.integers(len(np.argwhere(fg)))]
    region = object_in_volume(foreground, fg.shape[0], int(k), int(r), int(c))
    got = np.zeros_like(fg)
    for j, m in region.items():
        got[j] = m
    np.testing.assert_array_equal(got, labels == labels[k, r, c])
    assert set(asked) <= set(range(min(region) - 1, max(region) + 2))  # only the slices it spans, and one beside
    assert object_in_volume(lambda j: fg[j], fg.shape[0], *map(int, np.argwhere(~fg)[0])) == {}


def test_a_diagonal_touch_between_slices_connects_but_a_gap_does_not():
    fg = np.zeros((4, 5, 5), bool)
    fg[0, 1, 1] = True
    fg[1, 2, 2] = True  # a diagonal neighbour on the next slice: 26-connected
    fg[3, 2, 2] = True  # two slices away: another object
    region = object_in_volume(lambda j: fg[j], 4, 0, 1, 1)
    assert sorted(region) == [0, 1] and region[1][2, 2]


def test_axial_slices_of_a_ras_volume_show_anterior_up_and_the_patients_right_on_the_left():
    o = display_orientation(np.diag([0.8, 0.8, 3.0, 1.0]), axis=2)  # i -> R, j -> A
    assert o == Orientation(transpose=True, flip_rows=True, flip_cols=True, view="axial")
    plane = np.arange(12).reshape(3, 4)  # plane[i, j]
    shown = to_display(plane, o)
    assert shown.shape == (4, 3)
    assert shown[0, 0] == plane[2, 3]  # top-left: most anterior (j max), patient right (i max)
    np.testing.assert_array_equal(from_display(shown, o), plane)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_view_of_an_lps_volume_round_trips(axis):
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.array([[0, 0.7, 0], [0.7, 0, 0], [0, 0, 2.0]])  # rotated, LPS -> RAS
    affine = np.eye(4)
    affine[:3, :3] = lps
    o = display_orientation(affine, axis)
    assert o.view in ("axial", "coronal", "sagittal")
    stack = np.random.default_rng(axis).integers(0, 5, (2, 6, 9))  # (C, H, W): probabilities turn alike
    np.testing.assert_array_equal(from_display(to_display(stack, o), o), stack)
    assert display_orientation(None, axis) == Orientation()  # no world position: shown as stored


def test_a_volume_data_set_opens_from_headers_without_reading_voxels(tmp_path, monkeypatch):
    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    for n in range(3):
        nib.save(nib.Nifti1Image(np.zeros((20, 16, 5 + n), np.int16), np.diag([0.7, 0.7, 5.0, 1])),
                 images / f"ct{n}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((20, 16, 5 + n), np.uint8), np.diag([0.7, 0.7, 5.0, 1])),
                 masks / f"ct{n}_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 5), np.uint8), np.diag([0.7, 0.7, 4.0, 1])), masks / "ct2_seg.nii")

    def no_voxels(self):
        raise AssertionError("voxels read while opening")

    monkeypatch.setattr(volumes.OpenVolume, "array", property(no_voxels))
    scan = scan_volume_dataset(images, masks)
    assert [v.name for v in scan.volumes] == ["ct0", "ct1"]  # ct2: two label files (one refused), the first on another grid
    assert [v.n_slices for v in scan.volumes] == [5, 6] and len(scan.pairs) == 11
    assert scan.pairs[5].name == "ct1/0000" and scan.locate("ct1/0005")[1] == 5 and scan.locate("ct1/0006") is None
    assert any("already has a label volume" in s.problem for s in scan.skipped)


def test_label_values_outside_the_data_sets_mapping_are_named():
    enc = volume_encoding([0, 2, 7])
    np.testing.assert_array_equal(classes_of(np.array([[0, 7], [2, 2]]), enc), [[0, 2], [1, 1]])
    with pytest.raises(DataError, match="label value 5 is not one of"):
        classes_of(np.array([0, 5]), enc)


def test_a_volumes_status_and_the_next_slice_to_review():
    assert volume_status(["kept"] * 3) == "kept"
    assert volume_status(["kept", "unreviewed"]) == "unreviewed"
    assert volume_status(["kept", "accepted"]) == "edited"
    assert volume_status(["accepted", "skipped"]) == "accepted"
    assert volume_status(["skipped", "skipped"]) == "skipped"
    names = ["v/0", "v/1", "v/2", "v/3"]
    statuses = {"v/0": "unreviewed", "v/1": "accepted", "v/2": "unreviewed", "v/3": "unreviewed"}
    scores = {"v/0": 0.7, "v/1": 0.1, "v/2": 0.3, "v/3": None}
    assert next_slice_to_review(names, statuses, scores) == "v/2"  # worst unreviewed; decided ones are passed
    assert next_slice_to_review(names, statuses, scores, current="v/2") == "v/0"
    assert next_slice_to_review(names, {n: "kept" for n in names}, scores) is None


def test_a_volume_is_ready_to_show_when_small_open_or_read_slice_by_slice(tmp_path, monkeypatch):
    """`VolumeSlices.ready`: whether the window may read a slice now, in its own thread."""
    from ielstudio.core import volume_review
    from ielstudio.core.volume_review import VolumeSlices

    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    for name, ext in (("gz", ".nii.gz"), ("plain", ".nii")):
        nib.save(nib.Nifti1Image(np.zeros((20, 16, 5), np.int16), np.eye(4)), images / f"{name}{ext}")
        nib.save(nib.Nifti1Image(np.zeros((20, 16, 5), np.uint8), np.eye(4)), masks / f"{name}{ext}")
    slices = VolumeSlices(scan_volume_dataset(images, masks))
    assert slices.ready("gz") and slices.ready("plain")  # 1,600 voxels: read at once
    monkeypatch.setattr(volume_review, "READ_AT_ONCE_VOXELS", 1_599)
    assert not slices.ready("gz") and slices.ready("plain")  # gzip has no random access
    slices.open("gz")  # what the window's prefetch thread does
    assert slices.ready("gz")
    slices.keep = 1
    slices.sample("plain/0000", None)  # the other volume: "gz" is closed
    assert not slices.ready("gz") and slices.ready("plain")
    slices.sample("gz/0002", None)  # a slice of gzip reads the whole volume, in the thread that asks
    assert slices.ready("gz")


def test_slices_shown_before_the_mapping_is_known_find_their_volumes_values_once(tmp_path, monkeypatch):
    """Before the data set's label mapping is settled a slice's classes come from its own
    volume's values: one np.unique over the volume per volume, not per slice shown (on a
    512 x 512 x 48 CT that was 146 ms a slice)."""
    from ielstudio.core.volume_review import VolumeSlices

    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    label = np.zeros((20, 16, 5), np.uint8)
    label[4:9, 4:9, 1:4] = 7
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 5), np.int16), np.eye(4)), images / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), masks / "ct.nii.gz")
    calls = []
    found = volumes.label_values
    monkeypatch.setattr(volumes, "label_values", lambda v: calls.append(v.path) or found(v))
    slices = VolumeSlices(scan_volume_dataset(images, masks))
    shown = [slices.sample(f"ct/{k:04d}", None) for k in range(5)]
    assert len(calls) == 1
    assert [int(s.mask.max()) for s in shown] == [0, 1, 1, 1, 0] and shown[2].encoding.values == (0, 7)


@pytest.mark.parametrize("context", [0, 2])
def test_a_slices_model_input_is_what_the_model_trained_on(tmp_path, context):
    """`VolumeSlices.model_input` (a reopened project's prediction maps) gives the model a
    slice as `load_volume_dataset` gave it in training: its neighbours as channels, repeated
    at the volume's ends, rescaled by the whole volume's intensity range."""
    from ielstudio.core.volume_data import load_volume_dataset
    from ielstudio.core.volume_review import VolumeSlices

    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(context)
    ct = rng.normal(0, 300, (20, 16, 5)).astype(np.int16)
    ct[..., 4] += 2000  # one bright slice: its own range would differ from the volume's
    affine = np.array([[0, -0.8, 0, 0], [0.9, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ct, affine), images / "ct.nii.gz")
    nib.save(nib.Nifti1Image((ct > 0).astype(np.uint8), affine), masks / "ct.nii.gz")
    trained = load_volume_dataset(images, masks, context=context).samples
    slices = VolumeSlices(scan_volume_dataset(images, masks))
    assert len(trained) == 5
    for s in trained:
        assert s.image.shape == (2 * context + 1, 20, 16)
        np.testing.assert_array_equal(slices.model_input(s.name, context), s.image)
