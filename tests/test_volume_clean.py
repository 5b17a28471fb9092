"""Volume folders cleaned headless: 3-D objects, slices of a volume held out together,
label volumes written back with their header; mixed 2-D/3-D and mismatched grids refused."""

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from torch import nn

from ielstudio import cli
from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.review import gate_changes
from ielstudio.core.training import fold_split, holdout_split
from ielstudio.core.volume_clean import postprocess_volume, review_volumes
from ielstudio.core.volume_data import is_volume_dataset, load_volume_dataset

SHAPE = (28, 24, 6)  # i, j, k; k has the 3 mm spacing, so the slices are (i, j)
SPACING = (0.8, 0.8, 3.0)
AFFINE = np.array([[0, -0.8, 0, 10], [0.8, 0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]], float)  # rotated in-plane


def ellipsoid(shape=SHAPE, centre=(14, 12, 2.5), radii=(7, 6, 2.2)) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
            + ((k - centre[2]) / radii[2]) ** 2) <= 1


def image_of(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (clean * 400 - 100 + rng.normal(0, 20, clean.shape)).astype(np.int16)  # CT-like values


@pytest.fixture
def volume_folders(tmp_path):
    """Three CT-like cases: two NIfTI (labels as *_seg.nii.gz, uint8 value 1), one NRRD (label value 3)."""
    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    for n in range(2):
        clean = ellipsoid(centre=(13 + n, 12, 2.5))
        nib.save(nib.Nifti1Image(image_of(clean, n), AFFINE), images / f"case{n}.nii.gz")
        nib.save(nib.Nifti1Image(clean.astype(np.uint8), AFFINE), masks / f"case{n}_seg.nii.gz")
    clean = ellipsoid(centre=(14, 11, 2.5))
    header = {"space": "left-posterior-superior", "space directions": np.diag(SPACING),
              "space origin": np.array([1.0, 2.0, 3.0]), "encoding": "gzip"}
    nrrd.write(str(images / "case2.nrrd"), image_of(clean, 2), header)
    nrrd.write(str(masks / "case2.nrrd"), (clean * 3).astype(np.int16), header)
    return images, masks


def test_a_volume_folder_is_cleaned_headless_with_the_label_headers_kept(volume_folders, tmp_path, capsys):
    images, masks = volume_folders
    # the labels stored 0 / 1 / 3, named by a Decathlon-style description beside the label folder
    (masks.parent / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "3": "tumour"}}))
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    out = tmp_path / "out"
    rc = cli.main(["clean", str(images), str(masks), "--out", str(out), "--steps", "4", "--device", "cpu",
                   "--width", "4", "--depth", "2", "--batch-size", "2", "--csv", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "found 3 image/label volume pairs (18 slices) (3 classes" in err
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before  # originals untouched
    assert sorted(p.name for p in out.glob("case*")) == ["case0_seg.nii.gz", "case1_seg.nii.gz", "case2.nrrd"]
    for n in range(2):
        given, written = nib.load(masks / f"case{n}_seg.nii.gz"), nib.load(out / f"case{n}_seg.nii.gz")
        np.testing.assert_array_equal(written.affine, given.affine)
        assert written.get_data_dtype() == given.get_data_dtype() and written.shape == given.shape
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    data, header = nrrd.read(str(out / "case2.nrrd"))
    _, given = nrrd.read(str(masks / "case2.nrrd"))
    assert data.dtype == np.int16 and set(np.unique(data)) <= {0, 3}  # the label value, not the class index
    np.testing.assert_array_equal(header["space directions"], given["space directions"])
    assert header["space"] == given["space"]
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert report["kind"] == "volumes" and report["n_images"] == 3 and report["n_slices"] == 18
    assert report["label_values"] == [0, 1, 3]
    assert report["n_classes"] == 3
    assert report["class_names"] == {"0": "background", "1": "liver", "2": "tumour"}  # class 2 stores 3
    rows = report["images"]
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)  # worst volume first
    for r in rows:
        assert r["slices"] == 6 and r["slice_axis"] == 2 and len(r["slice_scores"]) == 6
        assert [w["score"] for w in r["worst_slices"]] == sorted(r["slice_scores"])[:5]
    assert (tmp_path / "t.csv").read_text().count("\n") == 4


def test_held_out_slices_come_from_whole_volumes(volume_folders):
    ds = load_volume_dataset(*volume_folders)
    names, groups = [s.name for s in ds.samples], ds.groups()
    held = holdout_split(names, 0.3, seed=0, groups=groups)
    assert len({groups[n] for n in held}) == 1 and len(held) == 6  # one whole volume of 6 slices
    for fold in fold_split(names, 3, seed=1, groups=groups):
        assert len({groups[n] for n in fold}) == 1 and len(fold) == 6


def test_objects_are_3d_a_tip_stays_and_a_speck_goes():
    mask = np.zeros((5, 20, 20), np.int64)
    mask[0:4, 5:12, 5:12] = 1  # an object over 4 slices ...
    mask[4, 8:10, 8:10] = 1  # ... whose tip on the last slice is 4 px (< min_area 10 in 2-D)
    mask[2, 16:18, 16:18] = 1  # a 4-voxel speck on its own
    mask[1:3, 8:9, 8:9] = 0  # a cavity inside the object
    out = postprocess_volume(mask, CleanConfig(min_area=10))
    assert out[4, 8:10, 8:10].all()  # the tip belongs to the object
    assert not out[2, 16:18, 16:18].any()  # the speck is gone
    assert out[1:3, 8, 8].all()  # the cavity is filled


def test_a_changed_region_across_slices_is_taken_or_refused_as_a_whole():
    given = np.zeros((3, 8, 8), np.int64)
    proposal = given.copy()
    proposal[0:3, 2:4, 2:4] = 1  # one 3-D region added over three slices
    probs = np.zeros((2, 3, 8, 8), np.float32)
    probs[0] = 1.0
    probs[:, 0:2, 2:4, 2:4] = [[[[0.1]]], [[[0.9]]]]  # sure on two slices ...
    probs[:, 2, 2:4, 2:4] = [[[0.9]], [[0.1]]]  # ... not on the third: mean 0.63 < 0.75
    assert not gate_changes(proposal, given, probs, [True, True]).any()
    probs[:, 2, 2:4, 2:4] = [[[0.5]], [[0.5]]]  # mean 0.77: the whole region is applied
    np.testing.assert_array_equal(gate_changes(proposal, given, probs, [True, True]), proposal)


def test_a_held_out_volume_read_right_does_not_vouch_for_volumes_the_model_cannot_read(volume_folders, drain):
    """case2 labels its object as another class: the oracle, which knows one class, reads
    the held-out case0 perfectly but not case2, which it trained on. So the review checks
    the images it trained on too, and keeps every label (rule 1)."""
    images, masks = volume_folders
    ds = load_volume_dataset(images, masks)
    holdout = [s.name for s in ds.samples if s.name.startswith("case0/")]
    results, (_, reliability, warnings) = drain(review_volumes(Oracle(), ds, CleanConfig(), holdout))
    assert reliability.agreement[1] == pytest.approx(1.0) and not reliability.reliable[1]
    assert reliability.n_trained == 12 and reliability.trained_agreement[1] < 0.85
    assert any("on 12 image(s) it trained on it reproduces them only at" in w for w in warnings)
    for r in results:
        np.testing.assert_array_equal(r.proposal, r.given)


class Oracle(nn.Module):
    """Segments by intensity: the class the clean volume had (a model that is right)."""

    model_spec = {"arch": "oracle", "n_classes": 3, "in_channels": 1}

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))

    def forward(self, x):
        fg = self.scale * (x - 0.5)
        return torch.cat([-fg, fg, torch.full_like(fg, -50.0)], dim=1)


def test_a_reliable_model_removes_a_3d_speck_and_keeps_the_rest(volume_folders, drain):
    images, masks = volume_folders
    for folder in (images, masks):  # case2 labels its object with another class, which the oracle does not know
        (folder / "case2.nrrd").unlink()
    noisy = nib.load(masks / "case1_seg.nii.gz")
    labels = np.asarray(noisy.dataobj).copy()
    labels[22:25, 2:5, 1:4] = 1  # a 27-voxel blob the annotator added by mistake
    nib.save(nib.Nifti1Image(labels, AFFINE), masks / "case1_seg.nii.gz")
    ds = load_volume_dataset(images, masks)
    holdout = [s.name for s in ds.samples if s.name.startswith("case0/")]
    results, (_, reliability, warnings) = drain(review_volumes(Oracle(), ds, CleanConfig(), holdout))
    by_name = {r.case.name: r for r in results}
    assert reliability.reliable[1] and reliability.out_of_sample, reliability.messages
    assert reliability.n_trained == 6 and reliability.trained_agreement[1] > 0.9  # case1's slices, the blob's too
    r = by_name["case1"]
    blob = np.zeros_like(r.given, bool)  # slices first: (k, i, j)
    blob[1:4, 22:25, 2:5] = True
    assert r.given[blob].all() and not r.proposal[blob].any()  # removed as a whole
    np.testing.assert_array_equal(r.proposal[~blob], r.given[~blob])  # nothing else touched
    assert r.score < by_name["case0"].score  # the doubtful label ranks first


class Blind(Oracle):
    """Finds nothing anywhere: reliable for no class."""

    def forward(self, x):
        return torch.cat([torch.full_like(x, 5.0), torch.full_like(x, -5.0), torch.full_like(x, -50.0)], dim=1)


def test_an_unreliable_models_slice_scores_include_the_shape_prior(volume_folders, drain):
    """No class is reliable: every label volume is kept, and each slice's score is the
    model's times its mask's outline smoothness squared (`review.image_score`), so a
    volume whose label has a ragged slice ranks below its clean twin."""
    from ielstudio.core.boundary_fit import outline_fit_dice
    from ielstudio.core.cleaning import label_quality
    from ielstudio.core.mask_prior import outline_smoothness

    images, masks = volume_folders
    labels = np.asarray(nib.load(masks / "case1_seg.nii.gz").dataobj).copy()
    labels[::2, :, 2] |= np.roll(labels[::2, :, 2], 1, axis=1)  # slice 2: every other row pushed out a voxel
    nib.save(nib.Nifti1Image(labels, AFFINE), masks / "case1_seg.nii.gz")
    ds = load_volume_dataset(images, masks)
    holdout = [s.name for s in ds.samples if s.name.startswith("case0/")]
    results, (_, reliability, _) = drain(review_volumes(Blind(), ds, CleanConfig(), holdout))
    assert not reliability.any_reliable
    by_name = {r.case.name: r for r in results}
    r = by_name["case1"]
    np.testing.assert_array_equal(r.proposal, r.given)
    slices = {s.name: s for s in ds.samples}
    for k, score in enumerate(r.slice_scores):
        probs = r.probs[:, k].astype(np.float32)
        image = slices[f"case1/{k:04d}"].image
        assert score == pytest.approx(label_quality(probs, r.given[k])[0] * outline_smoothness(r.given[k]) ** 2
                                      * outline_fit_dice(image, r.given[k]), abs=1e-3)  # probs kept as float16
    assert outline_smoothness(r.given[2]) < outline_smoothness(by_name["case0"].given[2])
    assert r.score < by_name["case0"].score


def test_mixed_2d_and_3d_and_mismatched_grids_are_refused(volume_folders, tmp_path, capsys):
    images, masks = volume_folders
    import cv2

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in images.iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(mixed / "slice.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(Exception, match="mixes 3-D volumes .* and 2-D images"):
        is_volume_dataset(mixed)
    bad = nib.load(masks / "case0_seg.nii.gz")
    affine = AFFINE.copy()
    affine[2, 2] = 2.5
    nib.save(nib.Nifti1Image(np.asarray(bad.dataobj), affine), masks / "case0_seg.nii.gz")
    ds = load_volume_dataset(images, masks)
    assert [c.name for c in ds.cases] == ["case1", "case2"]
    assert [s.path.name for s in ds.skipped] == ["case0_seg.nii.gz"] and "spacing" in ds.skipped[0].problem
    rc = cli.main(["predict", str(tmp_path / "m.pt"), str(images), "--out", str(tmp_path / "p")])
    assert rc == 2 and "holds 3-D volumes" in capsys.readouterr().err


def test_dicom_series_with_nifti_and_slicer_labels_are_cleaned_end_to_end(tmp_path, capsys):
    """Images as DICOM series folders; labels as NIfTI (RAS) and a 3D Slicer .seg.nrrd (LPS)
    on the same grid: paired, checked, and written back in their own formats."""
    from test_volumes import ct_series, slicer_segmentation

    from ielstudio.core import volumes

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for case in ("case0", "case1"):
        ct_series(images / case)
    grid = volumes.read_volume(images / "case0")
    assert grid.shape == (5, 3, 4)  # columns, rows, slices
    label = np.zeros(grid.shape, np.uint8)
    label[1:4, 0:2, 1:3] = 1
    nib.save(nib.Nifti1Image(label, grid.affine), labels / "case0_seg.nii.gz")
    lps = grid.affine.copy()
    lps[:2] *= -1  # RAS -> LPS world coordinates, as NRRD stores them
    header = slicer_segmentation(labels / "case1.seg.nrrd", label * 3)
    header.update({"space directions": lps[:3, :3].T, "space origin": lps[:3, 3]})
    nrrd.write(str(labels / "case1.seg.nrrd"), label * 3, header)
    out = tmp_path / "out"
    rc = cli.main(["clean", str(images), str(labels), "--out", str(out), "--steps", "2", "--device", "cpu",
                   "--width", "4", "--depth", "2", "--batch-size", "2", "--crop", "16"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "found 2 image/label volume pairs (8 slices)" in err and "skipped 0 file(s)" in err
    assert sorted(p.name for p in out.glob("case*")) == ["case0_seg.nii.gz", "case1.seg.nrrd"]
    np.testing.assert_allclose(nib.load(out / "case0_seg.nii.gz").affine, grid.affine)
    seg = volumes.read_volume(out / "case1.seg.nrrd")
    assert seg.segment_names == {1: "liver", 3: "tumour"} and set(np.unique(seg.array)) <= {0, 1, 3}
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert {r["name"] for r in report["images"]} == {"case0", "case1"}


def test_train_on_volumes_holds_out_whole_volumes_and_its_model_fine_tunes_a_clean(volume_folders, tmp_path,
                                                                                   capsys):
    from ielstudio.core.training import load_checkpoint

    images, masks = volume_folders
    model = tmp_path / "vol.pt"
    flags = ["--device", "cpu", "--width", "4", "--depth", "2", "--batch-size", "2"]
    assert cli.main(["train", str(images), str(masks), "--save-model", str(model), "--steps", "3", *flags]) == 0
    assert "found 3 image/label volume pairs (18 slices)" in capsys.readouterr().err
    _, _, meta = load_checkpoint(model)
    assert meta["volumes"] and meta["label_values"] == [0, 1, 3] and meta["n_classes"] == 3
    out = tmp_path / "out"
    assert cli.main(["clean", str(images), str(masks), "--out", str(out), "--checkpoint", str(model),
                     "--steps", "2", *flags]) == 0
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert report["settings"]["train"]["init_checkpoint"] == str(model) and report["n_images"] == 3


def test_neighbouring_slices_as_input_channels_train_and_clean_volumes(volume_folders, tmp_path, capsys):
    from ielstudio.core.imageio import normalize_intensity
    from ielstudio.core.training import load_checkpoint

    images, masks = volume_folders
    ds = load_volume_dataset(images, masks, context=1)
    assert ds.in_channels == 3
    by_name = {s.name: s for s in ds.samples}
    volume = normalize_intensity(np.asarray(nib.load(str(images / "case0.nii.gz")).dataobj, np.float32))
    np.testing.assert_allclose(by_name["case0/0002"].image, np.moveaxis(volume[:, :, 1:4], -1, 0))
    np.testing.assert_allclose(by_name["case0/0000"].image, np.moveaxis(volume[:, :, [0, 0, 1]], -1, 0))  # edge
    assert load_volume_dataset(images, masks).in_channels == 1
    model = tmp_path / "ctx.pt"
    flags = ["--device", "cpu", "--width", "4", "--depth", "2", "--batch-size", "2", "--slice-context", "1"]
    assert cli.main(["clean", str(images), str(masks), "--out", str(tmp_path / "out"), "--steps", "3",
                     "--save-model", str(model), *flags]) == 0
    net, config, _ = load_checkpoint(model)
    assert config.slice_context == 1 and net.model_spec["in_channels"] == 3
    report = json.loads((tmp_path / "out" / "ielstudio-report.json").read_text())
    assert report["settings"]["train"]["slice_context"] == 1 and report["n_images"] == 3


def test_the_windows_volume_scoring_removes_a_blob_and_adds_a_bite_and_says_so(volume_folders, drain):
    """Rules 3 and 4 through the window's volume job (`gui.volume_jobs.volume_scoring_job`):
    the model misses half of case1's object (its image shows only the lower slices), so it
    is not reliable for the class (held-out agreement between ADD_MIN_AGREEMENT and the
    bar) and every label is kept, except a 27-voxel blob drawn on case0's background,
    beside the object it finds there, and a bite cut off that object through slices 2-3,
    which the model and the image both find; the last message counts both."""
    from ielstudio.core.review import ADD_MIN_AGREEMENT, NOT_RELIABLE, RELIABLE_AGREEMENT
    from ielstudio.gui.volume_jobs import volume_scoring_job

    images, masks = volume_folders
    labels = np.asarray(nib.load(masks / "case0_seg.nii.gz").dataobj).copy()
    labels[22:25, 2:5, 1:4] = 1
    whole = labels.copy()
    labels[6:13, 6:18, 2:4] = 0  # the object's upper part, cut off its mask on two slices
    bite = (whole == 1) & (labels == 0)
    nib.save(nib.Nifti1Image(labels, AFFINE), masks / "case0_seg.nii.gz")
    image1 = np.asarray(nib.load(images / "case1.nii.gz").dataobj).copy()
    image1[:, :, 3:] = np.random.default_rng(5).normal(-100, 20, image1[:, :, 3:].shape)  # its upper half unseen
    nib.save(nib.Nifti1Image(image1, AFFINE), images / "case1.nii.gz")
    ds = load_volume_dataset(images, masks)
    messages, _ = drain(volume_scoring_job(Oracle(), ds, CleanConfig(), lambda: False,
                                           holdout=[s.name for s in ds.samples]))
    reliability = drain(review_volumes(Oracle(), ds, CleanConfig(), [s.name for s in ds.samples]))[1][1]
    assert ADD_MIN_AGREEMENT <= reliability.agreement[1] < RELIABLE_AGREEMENT
    assert messages[-1].done == messages[-1].total == len(ds.samples)
    assert messages[-1].objects_removed == 1 and messages[-1].regions_added == 1 and bite.sum() >= 50
    warning = messages[-1].warnings[0]
    assert warning.startswith(NOT_RELIABLE) and "except 1 object(s)" in warning and ", and 1 region(s)" in warning
    changed = {name for m in messages for name, r in m.items.items() if r.changed > 0}
    assert changed == {f"case0/{k:04d}" for k in (1, 2, 3)}  # the blob's and the bite's slices, nothing else


def test_the_training_eta_of_a_volume_clean_counts_the_scoring_after_it(volume_folders, tmp_path, monkeypatch):
    """As for images (`review.scoring_predictions`): every slice, the calibration subset
    and the reliability check's held-out and trained slices, not the slices alone."""
    from ielstudio.core import volume_clean
    from ielstudio.core.review import scoring_predictions

    seen = {}

    def no_training(samples, config, predictions_after=0, **kwargs):
        seen["predictions_after"], seen["n"] = predictions_after, len(samples)
        return iter(())

    monkeypatch.setattr(volume_clean, "train", no_training)
    images, masks = volume_folders
    list(volume_clean.clean_volumes(images, masks, tmp_path / "out"))
    assert seen["n"] == 18 and seen["predictions_after"] == scoring_predictions(18) > 18
