"""3-D volume I/O (NIfTI, NRRD, .seg.nrrd, DICOM series), label writers and grid checks."""

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ielstudio.core import volumes as V
from ielstudio.core.errors import DataError
from ielstudio.core.imageio import TEMP_SUFFIX

SHAPE = (6, 5, 4)


def rotated_affine(spacing=(0.7, 0.7, 5.0), degrees=30.0, origin=(-10.0, 20.5, 3.25)):
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def labels(dtype=np.uint8, seed=0, top=4):
    return np.random.default_rng(seed).integers(0, top, SHAPE).astype(dtype)


def save_nifti(path, data, affine, qcode=1, scode=2):
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def nrrd_header(encoding="gzip", space="left-posterior-superior"):
    return {
        "space": space,
        "space directions": np.array([[-0.7, 0.0, 0.0], [0.0, 0.0, 0.7], [0.0, 5.0, 0.0]]),
        "space origin": np.array([12.5, -3.0, 40.0]),
        "kinds": ["domain", "domain", "domain"],
        "encoding": encoding,
    }


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_nifti_label_round_trip_keeps_geometry_and_dtype(tmp_path, suffix, dtype):
    affine = rotated_affine()
    src = save_nifti(tmp_path / f"lab{suffix}", labels(dtype), affine, qcode=1, scode=4)
    like = V.read_volume(src)
    assert like.format == "nifti" and like.space == V.RAS and like.dtype == dtype
    np.testing.assert_allclose(like.affine, affine, atol=1e-5)
    np.testing.assert_allclose(like.spacing, (0.7, 0.7, 5.0), rtol=1e-6)

    new = labels(np.int64, seed=1)  # the cleaner's int64 labels are cast to the file's type
    out = tmp_path / "out" / f"clean{suffix}"
    V.write_label_volume(out, new, like)
    if suffix == ".nii.gz":
        assert out.read_bytes()[:2] == b"\x1f\x8b"
    back = nib.load(str(out))
    orig = nib.load(str(src))
    assert np.array_equal(back.affine, orig.affine)
    assert np.array_equal(back.header.get_qform(), orig.header.get_qform())
    assert np.array_equal(back.header.get_sform(), orig.header.get_sform())
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 4)
    assert back.header.get_zooms() == orig.header.get_zooms()
    assert back.get_data_dtype() == np.dtype(dtype)
    voxels = np.asanyarray(back.dataobj)
    assert voxels.dtype == np.dtype(dtype) and np.array_equal(voxels, new)


def test_nifti_volume_is_memory_mapped_and_slices_read_lazily(tmp_path):
    data = labels(np.int16, top=50)
    src = save_nifti(tmp_path / "lab.nii", data, rotated_affine())
    vol = V.read_volume(src)
    assert isinstance(vol.array, np.memmap)
    assert vol.shape == SHAPE and np.array_equal(vol.array, data)
    opened = V.open_volume(src)
    assert opened.shape == SHAPE and opened.dtype == np.int16 and opened._array is None
    for axis in range(3):
        for i in range(SHAPE[axis]):
            assert np.array_equal(opened.slice(axis, i), np.take(data, i, axis=axis))
    assert opened._array is None  # slices came from the file, not a loaded array
    with pytest.raises(IndexError):
        opened.slice(2, 4)


def test_nifti_with_a_trailing_axis_of_one_is_3d_and_written_back_4d(tmp_path):
    src = save_nifti(tmp_path / "lab.nii.gz", labels()[..., None], rotated_affine())
    vol = V.read_volume(src)
    assert vol.shape == SHAPE
    V.write_label_volume(tmp_path / "out.nii.gz", labels(seed=3), vol)
    back = nib.load(str(tmp_path / "out.nii.gz"))
    assert back.shape == SHAPE + (1,) and np.array_equal(np.asanyarray(back.dataobj)[..., 0], labels(seed=3))


def test_4d_nifti_is_refused(tmp_path):
    src = save_nifti(tmp_path / "t.nii", np.zeros(SHAPE + (2,), np.uint8), np.eye(4))
    with pytest.raises(DataError, match=r"shape \(6, 5, 4, 2\); expected a 3-D volume") as e:
        V.read_volume(src)
    assert e.value.path == src


# --------------------------------------------------------------------------- NRRD


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_nrrd_label_round_trip_keeps_header(tmp_path, encoding):
    src = tmp_path / "lab.nrrd"
    header = nrrd_header(encoding)
    header["my custom key"] = "kept as is"
    nrrd.write(str(src), labels(np.int16), header)
    like = V.read_volume(src)
    assert like.format == "nrrd" and like.space == "left-posterior-superior" and like.dtype == np.int16
    assert like.spacing == pytest.approx((0.7, 0.7, 5.0))
    expected = np.eye(4)
    expected[:3, :3] = header["space directions"].T
    expected[:3, 3] = header["space origin"]
    assert np.array_equal(like.affine, expected)

    new = labels(np.int32, seed=2)
    out = tmp_path / "clean.nrrd"
    V.write_label_volume(out, new, like)
    data, back = nrrd.read(str(out))
    _, orig = nrrd.read(str(src))
    for key in ("type", "dimension", "space", "sizes", "kinds", "encoding", "endian", "my custom key"):
        assert key not in orig or np.array_equal(back[key], orig[key]), key
    assert back["encoding"] == encoding and back["type"] == "int16"
    assert np.array_equal(back["space directions"], orig["space directions"])
    assert np.array_equal(back["space origin"], orig["space origin"])
    assert data.dtype == np.int16 and np.array_equal(data, new)
    raw = out.read_bytes()
    body = raw[raw.index(b"\n\n") + 2:]
    assert (body[:2] == b"\x1f\x8b") == (encoding == "gzip")  # gzip stream after the header, or raw voxels


def test_ras_affine_of_lps_nrrd_flips_the_first_two_world_axes(tmp_path):
    src = tmp_path / "lab.nrrd"
    nrrd.write(str(src), labels(), nrrd_header())
    vol = V.read_volume(src)
    ras = V.ras_affine(vol)
    assert np.array_equal(ras[:3, 3], [-12.5, 3.0, 40.0])
    assert np.array_equal(ras[:3, 0], [0.7, 0.0, 0.0]) and np.array_equal(ras[:3, 2], [0.0, -5.0, 0.0])
    # the same grid stored as RAS NIfTI is the same grid
    nifti = V.Volume(np.zeros(SHAPE), vol.spacing, ras, "nifti", None, space=V.RAS)
    V.check_same_grid(nifti, vol)
    # without a space field there is no world frame
    nrrd.write(str(tmp_path / "plain.nrrd"), labels(), {"spacings": [0.5, 0.5, 2.0]})
    plain = V.read_volume(tmp_path / "plain.nrrd")
    assert plain.space == "" and plain.spacing == (0.5, 0.5, 2.0) and V.ras_affine(plain) is None


def test_nhdr_detached_header_is_read(tmp_path):
    data = labels(np.uint16, top=1000)
    nrrd.write(str(tmp_path / "lab.nhdr"), data, nrrd_header("raw"))
    vol = V.read_volume(tmp_path / "lab.nhdr")
    assert vol.format == "nrrd" and np.array_equal(vol.array, data)
    with pytest.raises(DataError, match=r"written as \.nrrd \(one file\)"):
        V.write_label_volume(tmp_path / "out.nhdr", data, vol)
    V.write_label_volume(tmp_path / "out.nrrd", data, vol)
    _, back = nrrd.read(str(tmp_path / "out.nrrd"))
    assert "data file" not in back and back["encoding"] == "raw"


# --------------------------------------------------------------------------- .seg.nrrd


def slicer_segmentation(path, data, layers=None):
    header = nrrd_header()
    header.update({
        "Segment0_Color": "0.501961 0.682353 0.501961",
        "Segment0_ColorAutoGenerated": "1",
        "Segment0_Extent": "0 5 0 4 0 3",
        "Segment0_ID": "Segment_1",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Name": "liver",
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Tags": "Segmentation.Status:inprogress|TerminologyEntry:Segmentation category and type - "
                         "3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver|",
        "Segment1_Color": "0.945098 0.839216 0.568627",
        "Segment1_Extent": "1 3 0 2 1 2",
        "Segment1_ID": "Segment_2",
        "Segment1_LabelValue": "3",
        "Segment1_Layer": "0",
        "Segment1_Name": "tumour",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    })
    if layers:
        header["kinds"] = ["list"] + header["kinds"]
        header["space directions"] = np.vstack([np.full(3, np.nan), header["space directions"]])
    nrrd.write(str(path), data, header)
    return header


def test_seg_nrrd_names_and_segment_keys_survive_a_write(tmp_path):
    data = np.zeros(SHAPE, np.uint8)
    data[1:4, 0:3, 1:3] = 3
    data[0, 4, 3] = 1
    src = tmp_path / "case.seg.nrrd"
    header = slicer_segmentation(src, data)
    seg = V.read_volume(src)
    assert seg.format == "seg.nrrd" and seg.segment_names == {1: "liver", 3: "tumour"}
    assert V.label_values(seg) == [0, 1, 3]

    new = data.copy()
    new[5, 0, 0] = 3  # the tumour grows: its extent must grow with it
    new[0, 4, 3] = 0  # the liver segment becomes empty
    out = tmp_path / "case.clean.seg.nrrd"
    V.write_label_volume(out, new, seg)
    voxels, back = nrrd.read(str(out))
    seg_keys = [k for k in header if k.startswith("Segment")]
    assert [k for k in back if k.startswith("Segment")] == seg_keys
    for k in seg_keys:
        if not k.endswith("_Extent"):
            assert back[k] == header[k], k
    assert back["Segment1_Extent"] == "1 5 0 2 0 2"
    assert back["Segment0_Extent"] == "0 -1 0 -1 0 -1"
    assert np.array_equal(voxels, new) and voxels.dtype == np.uint8
    assert V.read_volume(out).segment_names == {1: "liver", 3: "tumour"}
    with pytest.raises(DataError, match=r"written as \.seg\.nrrd"):
        V.write_label_volume(tmp_path / "case.clean.nrrd", new, seg)


def test_multi_layer_segmentation_is_refused(tmp_path):
    src = tmp_path / "overlap.seg.nrrd"
    slicer_segmentation(src, np.zeros((2,) + SHAPE, np.uint8), layers=2)
    with pytest.raises(DataError, match="2 layers") as e:
        V.read_volume(src)
    assert e.value.path == src


def test_segments_sharing_a_label_value_are_refused(tmp_path):
    with pytest.raises(DataError, match="both have label value 1"):
        V.parse_segment_names("x.seg.nrrd", {"Segment0_Name": "a", "Segment0_LabelValue": "1",
                                             "Segment1_Name": "b", "Segment1_LabelValue": "1"})


# --------------------------------------------------------------------------- grids


def grid(shape=SHAPE, spacing=(0.7, 0.7, 5.0), affine=None, name="label.nii.gz"):
    affine = rotated_affine(spacing) if affine is None else affine
    return V.Volume(np.zeros(shape, np.uint8), spacing, affine, "nifti", None, path=Path(name), space=V.RAS)


def test_same_anisotropic_grid_is_accepted_and_sliced_along_its_coarse_axis():
    image = grid(name="image.nii.gz")
    nearly = rotated_affine()
    nearly[:3, 3] += 2e-4  # well inside the 1e-3 mm tolerance
    V.check_same_grid(image, grid(affine=nearly))
    assert V.slice_axis(image) == 2
    assert V.slice_axis(grid(shape=(4, 5, 6), spacing=(5.0, 0.7, 0.7))) == 0
    assert V.slice_axis(grid(spacing=(1.0, 1.0, 1.0))) == 2
    vol = V.Volume(np.arange(120).reshape(SHAPE), (5.0, 0.7, 0.7), np.eye(4), "nrrd", None)
    slices = list(V.iter_slices(vol))
    assert len(slices) == 6 and slices[2].shape == (5, 4) and np.array_equal(slices[2], vol.array[2])


@pytest.mark.parametrize("label, message", [
    (grid(shape=(6, 5, 5)), r"label grid 6 x 5 x 5 voxels does not match the image's 6 x 5 x 4"),
    (grid(spacing=(0.7, 0.7, 5.01)), r"label spacing \(0.7, 0.7, 5.01\) mm does not match the image's \(0.7, 0.7, 5\)"),
    (grid(affine=rotated_affine(origin=(-10.0, 20.5, 3.26))),
     r"label origin \(-10, 20.5, 3.26\) mm \(RAS\) does not match the image's \(-10, 20.5, 3.25\)"),
    (grid(affine=rotated_affine(degrees=31.0)), r"label orientation .* does not match the image's"),
    (grid(affine=rotated_affine() @ np.diag([-1.0, 1.0, 1.0, 1.0])), r"label orientation"),
])
def test_a_different_grid_is_refused_naming_the_label_and_both_values(label, message):
    with pytest.raises(DataError, match=message) as e:
        V.check_same_grid(grid(name="image.nii.gz"), label)
    assert e.value.path == Path("label.nii.gz")


# --------------------------------------------------------------------------- DICOM


def write_ct_slice(path, z, instance, series_uid, pixels, spacing=(0.6, 0.8), bits=12):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-50.0, 30.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def ct_pixels(k, rows=3, cols=5):
    """Slice k: 100*k + 10*row + column, so order and transposition both show."""
    r, c = np.mgrid[:rows, :cols]
    return 100 * k + 10 * r + c


def ct_series(folder, zs=(10.0, 12.5, 15.0, 17.5), uid=None):
    """Slices named and numbered in an order unrelated to their position."""
    folder.mkdir(exist_ok=True)
    uid = uid or generate_uid()
    by_position = sorted(range(len(zs)), key=lambda i: zs[i])
    for n, i in enumerate([2, 0, 3, 1][: len(zs)]):
        k = by_position.index(i)  # rank of this slice along z
        write_ct_slice(folder / f"IMG{n:04d}.dcm", zs[i], instance=len(zs) - n, series_uid=uid, pixels=ct_pixels(k))
    return uid


def test_dicom_series_is_sorted_by_position_not_name_or_instance_number(tmp_path):
    folder = tmp_path / "ct"
    ct_series(folder, zs=(15.0, 10.0, 17.5, 12.5))
    (folder / "notes.txt").write_text("scanned on tuesday\n")
    warnings = []
    vol = V.read_volume(folder, warnings)
    assert vol.format == "dicom" and vol.space == V.RAS
    assert vol.shape == (5, 3, 4) and vol.dtype == np.int16
    for k in range(4):  # ascending z; (column, row) axes; HU = stored - 1024
        assert np.array_equal(vol.array[:, :, k], ct_pixels(k).T - 1024)
    assert vol.spacing == pytest.approx((0.8, 0.6, 2.5))
    assert np.allclose(vol.affine, [[-0.8, 0, 0, 50.0], [0, -0.6, 0, -30.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    assert [float(ds.ImagePositionPatient[2]) for ds in vol.header] == [10.0, 12.5, 15.0, 17.5]
    assert len(warnings) == 1 and "notes.txt" in warnings[0] and "not a DICOM file" in warnings[0]
    opened = V.open_volume(folder)
    assert np.array_equal(opened.slice(2, 3), ct_pixels(3).T - 1024) and opened._array is None
    assert np.array_equal(opened.slice(0, 1), vol.array[1])


def test_dicom_with_two_series_is_refused_naming_the_folder(tmp_path):
    folder = tmp_path / "mixed"
    ct_series(folder)
    write_ct_slice(folder / "other.dcm", 30.0, 1, generate_uid(), ct_pixels(0))
    with pytest.raises(DataError, match=r"holds 2 DICOM series") as e:
        V.read_volume(folder)
    assert e.value.path == folder


def test_dicom_with_a_missing_slice_is_refused(tmp_path):
    folder = tmp_path / "gap"
    ct_series(folder, zs=(10.0, 12.5, 15.0, 20.0))
    with pytest.raises(DataError, match=r"slice gaps are not uniform \(2.5 to 5 mm") as e:
        V.read_volume(folder)
    assert e.value.path == folder


def test_dicom_folder_without_images_is_refused(tmp_path):
    folder = tmp_path / "study"
    (folder / "series1").mkdir(parents=True)
    (folder / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no DICOM image files \(it has 1 subfolder"):
        V.read_volume(folder)


# --------------------------------------------------------------------------- safety


def test_writes_never_replace_an_original_and_leave_no_temp_file(tmp_path):
    src = save_nifti(tmp_path / "lab.nii.gz", labels(), rotated_affine())
    before = src.read_bytes()
    like = V.read_volume(src)
    with pytest.raises(DataError, match="refusing to overwrite an original"):
        V.write_label_volume(src, labels(seed=5), like)  # the file being corrected
    other = tmp_path / "other_original.nii.gz"
    other.write_bytes(before)
    with pytest.raises(DataError, match="refusing to overwrite an original"):
        V.write_label_volume(other, labels(seed=5), like, protect=[other])
    assert src.read_bytes() == before and other.read_bytes() == before

    out = tmp_path / "clean.nii.gz"
    V.write_label_volume(out, labels(seed=6), like)
    written = out.read_bytes()
    too_big = labels(np.int64, seed=7)
    too_big[0, 0, 0] = 300
    with pytest.raises(DataError, match=r"label values 0..300 do not fit the uint8 voxels \(0..255\) of lab.nii.gz"):
        V.write_label_volume(out, too_big, like)
    negative = labels(np.int16)
    negative[1, 1, 1] = -1
    with pytest.raises(DataError, match="do not fit the uint8"):
        V.write_label_volume(out, negative, like)
    with pytest.raises(DataError, match="do not fit"):
        V.write_label_volume(out, labels().astype(np.float32) + 0.5, like)
    with pytest.raises(DataError, match=r"labels have shape 6 x 5 x 3"):
        V.write_label_volume(out, np.zeros((6, 5, 3), np.uint8), like)
    with pytest.raises(DataError, match=r"written as \.nii or \.nii\.gz, not '\.nrrd'"):
        V.write_label_volume(tmp_path / "clean.nrrd", labels(), like)
    assert out.read_bytes() == written  # refused writes left the earlier result alone
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.nii.gz", "lab.nii.gz", "other_original.nii.gz"]


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    src = tmp_path / "lab.nrrd"
    nrrd.write(str(src), labels(), nrrd_header())
    like = V.read_volume(src)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(DataError, match="cannot write the label volume") as e:
        V.write_label_volume(tmp_path / "clean.nrrd", labels(seed=1), like)
    assert e.value.path == tmp_path / "clean.nrrd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.nrrd"]


def test_dicom_volumes_are_not_written(tmp_path):
    ct_series(tmp_path / "ct")
    vol = V.read_volume(tmp_path / "ct")
    with pytest.raises(DataError, match="'dicom' volumes are only read"):
        V.write_label_volume(tmp_path / "labels.nii.gz", np.zeros(vol.shape, np.uint8), vol)


@pytest.mark.parametrize("name, content, message", [
    ("missing.nii.gz", None, "file does not exist"),
    ("empty.nrrd", b"", r"file is empty \(0 bytes\)"),
    ("noise.nii.gz", b"\x1f\x8b" + bytes(range(256)) * 4, "cannot read NIfTI file"),
    ("text.nii", b"not a nifti file at all" * 30, "cannot read NIfTI file"),
    ("bad.nrrd", b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 6 5 4\nencoding: gzip\n\nnot gzip",
     "cannot read NRRD file"),
    ("bad.seg.nrrd", b"hello", r"cannot read segmentation \(.seg.nrrd\) file"),
    ("volume.mha", b"ObjectType = Image", "unsupported volume file type '.mha'"),
    ("slice.dcm", b"\0" * 200, "choose the folder, not one file"),
])
def test_bad_files_give_a_data_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        V.read_volume(path)
    assert e.value.path == path


def test_truncated_nifti_is_reported_when_its_voxels_are_read(tmp_path):
    src = save_nifti(tmp_path / "lab.nii", labels(np.int16), np.eye(4))
    src.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(DataError, match="cannot read NIfTI file") as e:
        V.read_volume(src)
    assert e.value.path == src
    gz = tmp_path / "lab.nii.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    with pytest.raises(DataError, match="cannot read NIfTI file"):
        V.read_volume(gz)


def test_label_values_refuse_fractions():
    vol = V.Volume(np.array([0.0, 1.0, 2.5]).reshape(1, 1, 3), (1, 1, 1), np.eye(4), "nifti", None,
                   path=Path("f.nii"))
    with pytest.raises(DataError, match=r"not whole numbers \(2.5\)"):
        V.label_values(vol)
    ints = V.Volume(np.array([7, 0, 7, 2], np.int16).reshape(1, 2, 2), (1, 1, 1), np.eye(4), "nrrd", None)
    assert V.label_values(ints) == [0, 2, 7]


def test_module_imports_without_the_medical_libraries_and_says_how_to_install_them(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('nibabel', 'nrrd', 'pydicom'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from ielstudio.core import volumes
        from ielstudio.core.errors import DataError
        for p in {[str(tmp_path / 'a.nii.gz'), str(tmp_path / 'a.nrrd'), str(tmp_path)]!r}:
            try:
                volumes.read_volume(p)
            except DataError as e:
                print(e.problem)
        """
    )
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "a.nrrd").write_bytes(b"x")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" support")[0] for line in lines] == ["NIfTI", "NRRD", "DICOM"]
    assert all("pip install 'ielstudio[medical]'" in line for line in lines)
