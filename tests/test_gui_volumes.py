"""Volume data sets in the window, offscreen: one queue row per volume opened from the
headers, slices through PageUp/PageDown, Shift+wheel and the slice bar, decisions per
slice and per volume, a 3-D object taken whole with one undo step, CT window/level, and
export as label volumes with their headers (read back with nibabel and pynrrd)."""

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from ielstudio.core.iel import one_hot  # noqa: E402
from ielstudio.core.volume_review import from_display, to_display  # noqa: E402
from ielstudio.gui import jobs  # noqa: E402
from ielstudio.gui.main_window import MainWindow  # noqa: E402

SHAPE = (28, 24, 6)  # i, j, k; k is the 3 mm axis: slices are (i, j) planes, 6 per volume
AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])
LPS = {"space": "left-posterior-superior", "space directions": np.diag([0.8, 0.8, 3.0]),
       "space origin": np.array([1.0, 2.0, 3.0]), "encoding": "gzip"}


def ellipsoid(centre=(14, 12, 2.5), radii=(7, 6, 2.2)) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
            + ((k - centre[2]) / radii[2]) ** 2) <= 1


def given_label(n: int) -> np.ndarray:
    """The correct object with a dent through slices 1-3 and a speck on slice 5."""
    m = ellipsoid(centre=(13 + n, 12, 2.5)).astype(np.uint8)
    m[9 + n:12 + n, 9:13, 1:4] = 0
    m[2:4, 2:4, 5] = 1
    return m


def proposal_of(n: int) -> np.ndarray:
    return ellipsoid(centre=(13 + n, 12, 2.5)).astype(np.int64)  # dent filled, speck gone


@pytest.fixture
def volume_folders(tmp_path):
    """Two NIfTI cases (labels value 1, uint8) and one NRRD case (LPS, label value 3, int16)."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    masks.mkdir()
    for n in range(2):
        ct = (ellipsoid(centre=(13 + n, 12, 2.5)) * 300 - 200 + rng.normal(0, 15, SHAPE)).astype(np.int16)
        nib.save(nib.Nifti1Image(ct, AFFINE), images / f"case{n}.nii.gz")
        nib.save(nib.Nifti1Image(given_label(n), AFFINE), masks / f"case{n}_seg.nii.gz")
    ct = (ellipsoid() * 300 - 200 + rng.normal(0, 15, SHAPE)).astype(np.int16)
    nrrd.write(str(images / "case2.nrrd"), ct, LPS)
    nrrd.write(str(masks / "case2.nrrd"), (given_label(1) * 3).astype(np.int16), LPS)
    return images, masks


@pytest.fixture
def window(qtbot, tmp_path):
    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat),
                   data_dir=tmp_path / "data")
    from ielstudio.core.training import TrainConfig

    w.train_base = TrainConfig(width=4, depth=2, batch_size=2, crop=16, eval_every=4, min_steps=1)
    w.confirm_close_during_training = lambda: True
    w.train_in_process = False
    qtbot.addWidget(w)
    yield w
    w.close()


def settled(w, qtbot):
    qtbot.waitUntil(lambda: w.project.mask_encoding() is not None, timeout=20000)


def inject(w, volume: str, n: int, score_of=lambda k: 0.5 + 0.05 * k, cls: int = 1) -> None:
    """Proposals (of class ``cls``) for every slice of ``volume`` as the scoring job
    delivers them (in the window's frame, `to_display`), written into the project by
    the job's writer."""
    entry = w.scan.volume(volume)
    prop = proposal_of(n) * cls
    items = {}
    for k in range(entry.n_slices):
        p = to_display(prop[entry.index(k)], entry.orientation)
        given = w.sample(entry.slice_name(k)).mask
        items[entry.slice_name(k)] = jobs.ImageReview(one_hot(p, 3), p, score_of(k), float(np.mean(p != given)))
    writer = jobs.ScoreWriter(w.project.path)
    writer.source = "test"
    try:
        w.apply_reviews(writer(jobs.Reviews(None, items, len(items), len(items), volume_scores={volume: 0.4})))
    finally:
        writer.close()


def test_a_volume_folder_opens_one_row_per_volume_with_its_slices(window, volume_folders, qtbot):
    w = window
    assert w.open_folders(*volume_folders)
    settled(w, qtbot)
    assert [r.name for r in w.queue.model.rows] == ["case0", "case1", "case2"]
    assert len(w.queue.model.leaf_rows()) == 18 and len(w.project) == 18  # one project row per slice
    assert w.queue.model.members("case1") == [f"case1/{k:04d}" for k in range(6)]
    assert w.slice_bar.isVisible() or not w.isVisible()
    assert "3 volumes · 18 slices" in w.queue.summary.text()
    w.queue.select("case1")
    assert w.current == "case1/0003"  # before scoring: the middle slice
    assert w.slice_bar.text().startswith("axial slice 4/6")
    # the window shows raw values (CT units) in the radiological frame: anterior up, patient right on the left
    s = w.sample("case1/0003")
    raw = np.asarray(nib.load(str(volume_folders[0] / "case1.nii.gz")).dataobj)[:, :, 3]
    np.testing.assert_array_equal(s.image[0], raw.T[::-1, ::-1].astype(np.float32))
    np.testing.assert_array_equal(s.mask, given_label(1)[:, :, 3].T[::-1, ::-1])
    # the NRRD case: label value 3 is class 2 of the data set (values 0, 1, 3)
    assert w.project.mask_encoding().values == (0, 1, 3)
    assert int(w.sample("case2/0002").mask.max()) == 2


def test_a_volume_data_set_takes_its_class_names_by_label_value(window, volume_folders, qtbot):
    """A dataset.json beside the label folder names the stored values 1 and 3: class 2 is
    the data set's value 3, so it takes that value's name."""
    import json

    images, masks = volume_folders
    (masks.parent / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 3}}))
    assert window.open_folders(images, masks)
    settled(window, qtbot)
    assert "1 liver" in window.canvas.legend.plain_text() and "2 tumour" in window.canvas.legend.plain_text()


def test_page_keys_shift_wheel_and_the_slider_move_through_a_volume(window, volume_folders, qtbot):
    w = window
    w.show()
    qtbot.waitExposed(w)
    w.open_folders(*volume_folders)
    w.queue.select("case0")
    assert w.current == "case0/0003"
    from PySide6.QtWidgets import QApplication

    w.queue.focus_table()
    QApplication.processEvents()
    assert QApplication.focusWidget() is w.queue.table
    qtbot.keyClick(w.queue.table, Qt.Key.Key_PageDown)
    assert w.current == "case0/0004" and w.slice_bar.slider.value() == 4
    qtbot.keyClick(w.queue.table, Qt.Key.Key_PageUp)
    qtbot.keyClick(w.queue.table, Qt.Key.Key_PageUp)
    assert w.current == "case0/0002"
    w.canvas.sliceWheel.emit(1)  # what Shift+wheel over the image emits
    assert w.current == "case0/0003"
    w.slice_bar.slider.setValue(0)
    assert w.current == "case0/0000" and "slice 1/6" in w.slice_bar.text()
    qtbot.keyClick(w.queue.table, Qt.Key.Key_PageUp)
    assert w.current == "case0/0000"  # stays at the first slice
    qtbot.keyClick(w.queue.table, Qt.Key.Key_N)  # N: the next volume, at the slice seen there last (or its middle)
    assert w.current.startswith("case1/")
    qtbot.keyClick(w.queue.table, Qt.Key.Key_P)
    assert w.current == "case0/0000"


def test_accept_goes_to_the_worst_unreviewed_slice_and_a_volume_decision_is_one_undo_step(window, volume_folders,
                                                                                          qtbot, planned):
    w = window
    w.open_folders(*volume_folders)
    settled(w, qtbot)
    inject(w, "case0", 0, score_of=lambda k: [0.9, 0.3, 0.2, 0.4, 0.95, 0.1][k])
    assert w.queue.model.get("case0").score == 0.4  # the volume's own score, as the job sent it
    assert w.current == "case0/0003" and "score 0.400" in w.slice_bar.text()  # its score shows as it arrives
    w.queue.select("case1")
    w.queue.select("case0")
    assert w.current == "case0/0005"  # the worst slice first
    assert "score 0.100" in w.slice_bar.text()
    w.accept()
    assert w.project.image("case0/0005").status == "accepted"
    assert w.current == "case0/0002"  # then the next worst
    w.keep()
    assert w.project.image("case0/0002").status == "kept" and w.current == "case0/0001"
    assert w.queue.model.get("case0").status == "unreviewed"
    assert w.queue.model.data(w.queue.model.index(0, 4)) == "2/6 done"
    n = w.decide_volume("accepted")
    assert n == 4  # the unreviewed ones; the two decided keep their decision
    planned(w)
    statuses = {k: w.project.image(f"case0/{k:04d}").status for k in range(6)}
    assert statuses == {0: "accepted", 1: "accepted", 2: "kept", 3: "accepted", 4: "accepted", 5: "accepted"}
    assert w.queue.model.get("case0").status == "edited"  # a mix of decisions
    w.undo()
    assert {k: w.project.image(f"case0/{k:04d}").status for k in range(6)} == {
        0: "unreviewed", 1: "unreviewed", 2: "kept", 3: "unreviewed", 4: "unreviewed", 5: "accepted"}
    assert w.current.startswith("case0/")  # undo shows the volume it changed


def test_an_object_accept_takes_the_whole_3d_object_and_undo_stores_slices_not_volumes(window, volume_folders,
                                                                                      qtbot, planned):
    w = window
    w.open_folders(*volume_folders)
    settled(w, qtbot)
    inject(w, "case1", 1)
    entry = w.scan.volume("case1")
    w.show_slice("case1/0002")
    decisions_before = w.project._q("SELECT count(*) FROM decisions")[0][0]
    r, c = np.argwhere(w.proposals.get("case1/0002") != 0)[0]
    w.accept_object(int(r), int(c))
    assert w.project.image("case1/0002").status == "unreviewed"  # read and found in a worker, recorded after
    planned(w)
    # the dent is filled on slices 1-3 (all of the 3-D object), the speck on slice 5 is a separate object and stays
    for k in range(6):
        after = from_display(w.current_mask(f"case1/{k:04d}"), entry.orientation)
        expected = given_label(1)[:, :, k].astype(np.int64)
        if k in (1, 2, 3):
            expected = np.where(proposal_of(1)[:, :, k] != 0, 1, expected)
        np.testing.assert_array_equal(after, expected, err_msg=f"slice {k}")
    assert [w.project.image(f"case1/{k:04d}").status for k in range(6)] == [
        "unreviewed", "edited", "edited", "edited", "unreviewed", "unreviewed"]
    # undo keeps references to stored slice masks: three decisions, each with a mask of one slice
    rows = w.project._q("SELECT m.height, m.width FROM decisions d JOIN masks m ON m.id = d.mask_id "
                        "WHERE d.id > ?", (decisions_before,))
    assert rows == [(24, 28)] * 3
    command = w.undo_stack.command(w.undo_stack.index() - 1)
    assert command.names == [f"case1/{k:04d}" for k in (1, 2, 3)] and command.plans == []
    w.undo()
    assert [w.project.image(f"case1/{k:04d}").status for k in range(6)] == ["unreviewed"] * 6
    # a brush stroke changes one slice and stores that slice alone
    w.show_slice("case1/0004")
    footprint = np.zeros((24, 28), bool)
    footprint[5:8, 5:8] = True
    w.apply_stroke(footprint, 1)
    assert w.project.image("case1/0004").status == "edited"
    assert w.project._q("SELECT height, width FROM masks ORDER BY id DESC LIMIT 1")[0] == (24, 28)


def test_the_window_stays_free_while_an_object_is_taken_and_a_slice_edited_meanwhile_is_not_overwritten(
        window, volume_folders, qtbot, planned, monkeypatch):
    import threading

    from ielstudio.core import volume_review

    w = window
    w.open_folders(*volume_folders)
    settled(w, qtbot)
    inject(w, "case1", 1)
    planning, go_on = threading.Event(), threading.Event()
    plan = volume_review.plan_object_take

    def held_plan(*args, **kwargs):  # the worker plans, then waits while the test works in the window
        take = plan(*args, **kwargs)
        planning.set()
        go_on.wait(10)
        return take

    monkeypatch.setattr(volume_review, "plan_object_take", held_plan)
    w.show_slice("case1/0002")
    r, c = np.argwhere(w.proposals.get("case1/0002") != 0)[0]
    assert w.accept_object_3d("case1/0002", int(r), int(c)) is not None
    assert planning.wait(10)
    assert w.statusBar().currentMessage() == "Taking the object on case1…"
    assert w.accept_object_3d("case1/0002", int(r), int(c)) is None  # one at a time, said
    assert w.statusBar().currentMessage().startswith("Still taking the object on case1")
    footprint = np.zeros((24, 28), bool)
    footprint[0:2, 0:2] = True
    w.apply_stroke(footprint, 1)  # the window is free meanwhile: the reviewer brushes slice 2
    brushed = w.current_mask("case1/0002")
    go_on.set()
    planned(w)
    # the take was planned against slice 2 before the stroke: it records nothing, and says why
    assert [w.project.image(f"case1/{k:04d}").status for k in range(6)] == [
        "unreviewed", "unreviewed", "edited", "unreviewed", "unreviewed", "unreviewed"]
    np.testing.assert_array_equal(w.current_mask("case1/0002"), brushed)
    assert "case1/0002 was changed meanwhile; nothing was recorded" in w.last_error
    assert w.undo_stack.undoText() == "Brush on case1/0002"


def test_the_other_two_planes_show_the_labels_as_decided_and_a_click_in_one_moves_the_review(
        window, volume_folders, qtbot, planned):
    from PySide6.QtCore import QPointF

    from ielstudio.core.ortho_planes import display_point, voxel_at

    w = window
    w.open_folders(*volume_folders)
    settled(w, qtbot)
    inject(w, "case1", 1)
    assert w.side_tabs.currentWidget() is w.ortho_views and w.side_tabs.tabBar().isVisibleTo(w)
    entry = w.scan.volume("case1")

    def shown_planes(action):
        with qtbot.waitSignal(w.ortho_views.updated, timeout=10000):
            action()
        return w.ortho_views.planes

    def assert_labels(planes, expected):
        for p in planes:
            take = (slice(None),) * p.axis + (p.index,)
            np.testing.assert_array_equal(from_display(p.labels, p.orientation), expected[take],
                                          err_msg=f"plane across axis {p.axis}")

    planes = shown_planes(lambda: w.show_slice("case1/0002"))
    # through the centre of slice 2 (voxel 14, 12, 2): sagittal and coronal, 3 mm slices by 0.8 mm pixels
    assert [(p.axis, p.index, p.view) for p in planes] == [(0, 14, "sagittal"), (1, 12, "coronal")]
    assert all(p.spacing == pytest.approx((3.0, 0.8)) and p.reviewed_line == ("row", p.point[0]) for p in planes)
    assert_labels(planes, given_label(1))
    # the object taken on slices 1-3 shows in the coronal plane, which crosses the dent
    r, c = np.argwhere(w.proposals.get("case1/0002") != 0)[0]
    w.accept_object(int(r), int(c))
    planes = shown_planes(lambda: planned(w))
    decided = given_label(1).astype(np.int64)
    for k in (1, 2, 3):
        decided[:, :, k] = np.where(proposal_of(1)[:, :, k] != 0, 1, decided[:, :, k])
    assert not np.array_equal(decided[:, 12], given_label(1)[:, 12])
    assert_labels(planes, decided)
    # a click in the coronal plane on slice 4 reviews slice 4, the cross on the voxel clicked
    coronal = planes[1]
    row, col = display_point(entry.shape, 1, coronal.orientation, (20, 12, 4))
    dy, dx = coronal.spacing
    planes = shown_planes(lambda: w.ortho_views._clicked(1, QPointF((col + 0.5) * dx, (row + 0.5) * dy)))
    assert w.current == "case1/0004"
    assert [p.index for p in planes] == [20, 12]
    # a pan-tool click on the slice moves the cross there
    r, c = display_point(entry.shape, 2, entry.orientation, (8, 5, 4))
    planes = shown_planes(lambda: w.canvas.pointClicked.emit(r, c))
    assert voxel_at(entry.shape, 2, 4, entry.orientation, r, c) == (8, 5, 4)
    assert [p.index for p in planes] == [8, 5] and w.current == "case1/0004"
    x, y = w.canvas.cross_item.getData()
    assert (float(y[0]), float(x[0])) == (r + 0.5, c + 0.5)  # the cross is marked on the slice too


def test_export_writes_label_volumes_with_their_headers_and_only_decided_slices_change(window, volume_folders, qtbot,
                                                                                       tmp_path, planned):
    images, masks = volume_folders
    originals = {p.name: p.read_bytes() for p in masks.iterdir()}
    w = window
    w.open_folders(images, masks)
    settled(w, qtbot)
    inject(w, "case1", 1)
    inject(w, "case2", 1, cls=2)
    w.queue.select("case1")
    w.decide_volume("accepted")
    planned(w)
    w.queue.select("case2")
    w.decide_volume("accepted")
    planned(w)
    out = tmp_path / "out"
    with qtbot.waitSignal(w.exportFinished, timeout=20000) as blocker:
        assert w.export(out)
    assert blocker.args[0].written == 3 and blocker.args[0].errors == 0
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == originals  # originals untouched
    kept = nib.load(str(out / "case0_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(kept.dataobj), given_label(0))  # unreviewed: as given
    accepted = nib.load(str(out / "case1_seg.nii.gz"))
    source = nib.load(str(masks / "case1_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(accepted.dataobj), proposal_of(1))  # back in the file's own frame
    np.testing.assert_array_equal(accepted.affine, source.affine)
    assert accepted.get_data_dtype() == source.get_data_dtype()
    data, header = nrrd.read(str(out / "case2.nrrd"))
    np.testing.assert_array_equal(data, proposal_of(1) * 3)  # class 2 is label value 3 again
    assert data.dtype == np.int16 and header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], LPS["space directions"])
    np.testing.assert_array_equal(header["space origin"], LPS["space origin"])
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["volumes"]}
    assert rows["case1"]["slice_statuses"] == {"accepted": 6} and rows["case1"]["changed_slices"] == [1, 2, 3, 5]
    assert rows["case0"]["status"] == "unreviewed" and rows["case0"]["changed_voxels"] == 0
    assert report["label_values"] == [0, 1, 3] and not report["all_reviewed"]
    path = w.project.path
    w.close_project()
    assert w.open_project(path)  # reopened: volume rows, their scores and every slice's decision are back
    assert w.queue.visible_names()[-1] == "case0"  # the unscored volume comes last
    assert w.queue.model.get("case1").status == "accepted" and w.queue.model.get("case1").score == 0.4
    assert w.queue.model.get("case1/0002").status == "accepted"


def test_ct_window_level_presets_are_offered_for_volumes_in_hounsfield_units(window, volume_folders):
    w = window
    controls = w.canvas.view_controls
    assert controls.mode.findData("ct-lung") < 0  # 2-D images are normalised: no CT presets
    w.open_folders(*volume_folders)
    w.queue.select("case0")
    controls.set_mode("ct-lung")
    assert controls.levels() == (-1350.0, 150.0)
    assert w.canvas.image_item.levels is not None and tuple(np.ravel(w.canvas.image_item.levels)) == (-1350.0, 150.0)
    controls.set_mode("ct-soft")
    assert (controls.window.value(), controls.level.value()) == (400.0, 40.0)
    controls.set_mode("full")
    shown = w.sample(w.current).image[0]
    assert controls.levels() == (float(shown.min()), float(shown.max()))
    controls.set_mode("ct-bone")
    w.close_project()  # back to normalised images: no presets, and no window in CT units
    assert controls.mode.findData("ct-lung") < 0 and controls.mode.currentData() == "auto"
    # the project remembers the contrast it was reviewed in: a preset, or a window and level
    w.open_folders(*volume_folders)
    assert controls.mode.currentData() == "ct-bone"
    controls.window.setValue(321.0)
    controls.level.setValue(-12.0)
    controls.window.editingFinished.emit()
    w.close_project()
    w.open_folders(*volume_folders)
    assert controls.mode.currentData() == "manual" and (controls.window.value(), controls.level.value()) == (321.0, -12.0)


def test_training_in_the_window_scores_each_volume_as_the_cli_does(window, volume_folders, qtbot):
    w = window
    w.open_folders(*volume_folders)
    reviews = []
    w.reviewsApplied.connect(reviews.append)
    with qtbot.waitSignal(w.trainingFinished, timeout=120000):
        assert w.start_training(steps=4, snapshot_every=2)
    qtbot.waitUntil(lambda: not w.is_training(), timeout=60000)
    final = [r for r in reviews if r.step is None]
    assert sum(len(r.items) for r in final) == 18 and final[-1].done == final[-1].total == 18
    assert "on 1 held-out volume(s): few" in w.training_panel.status.text()  # a volume's slices count as one
    assert {n for r in final for n in r.volume_scores} == {"case0", "case1", "case2"}
    assert all(w.queue.model.get(v).score is not None for v in ("case0", "case1", "case2"))
    scores = w.project.get_setting(jobs.VOLUME_SCORES)
    assert set(scores) == {"case0", "case1", "case2"}
    assert w.project.get_setting(jobs.LAST_REVIEW)["complete"]
    # proposals come in the window's frame: the same shape as the slices shown
    assert all(w.proposals.get(n).shape == w.sample(n).mask.shape for n in ("case0/0000", "case2/0003"))


def test_mixed_2d_and_3d_are_refused_and_a_mismatched_grid_is_listed_as_skipped(window, volume_folders, tmp_path):
    import cv2

    images, masks = volume_folders
    nib.save(nib.Nifti1Image(np.zeros((28, 24, 5), np.int16), AFFINE), images / "case3.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((28, 24, 6), np.uint8), AFFINE), masks / "case3.nii.gz")  # 6 slices, not 5
    w = window
    assert w.open_folders(images, masks)
    assert [r.name for r in w.queue.model.rows][:3] == ["case0", "case1", "case2"]
    skipped = w.queue.model.get("case3.nii.gz")
    assert skipped.status == "skipped" and "does not match the image's 28 x 24 x 5" in skipped.reason
    cv2.imwrite(str(images / "flat.png"), np.zeros((8, 8), np.uint8))
    assert not w.open_folders(images, masks)
    assert "mixes 3-D volumes" in w.last_error and "flat.png" in w.last_error


def test_the_next_volume_is_opened_in_the_background_before_n_reaches_it(window, volume_folders, qtbot):
    w = window
    w.open_folders(*volume_folders)
    w.queue.select("case0")
    following = w.queue.visible_names()[1]
    qtbot.waitUntil(lambda: following in w.volumes._open and following not in w._prefetching, timeout=10000)
    image, label = w.volumes._open[following]
    assert image._array is not None and label._array is not None  # compressed: read whole, ahead of time


def test_the_slice_context_of_the_form_trains_and_scores_with_neighbouring_slices(window, volume_folders, qtbot):
    """Training form: Slice context 1 gives the network each slice with one neighbour on
    each side (3 input channels), as `--slice-context 1`; its scoring pass loads the same."""
    import torch

    from ielstudio.core.training import load_checkpoint

    w = window
    w.open_folders(*volume_folders)
    w.training_panel.slice_context.setValue(1)
    reviews = []
    w.reviewsApplied.connect(reviews.append)
    with qtbot.waitSignal(w.trainingFinished, timeout=120000):
        assert w.start_training(steps=2, snapshot_every=1000)
    qtbot.waitUntil(lambda: not w.is_training(), timeout=60000)
    assert sum(len(r.items) for r in reviews if r.step is None) == 18
    model, config, _ = load_checkpoint(w.project.checkpoint.path)
    assert config.slice_context == 1
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 3
    # reopened, the saved model predicts the slice shown with its neighbours, for the prediction maps
    path = w.project.path
    w.close()
    w2 = MainWindow(settings=w.settings, data_dir=w.data_dir)
    qtbot.addWidget(w2)
    w2.train_base, w2.train_in_process = w.train_base, False
    w2.training_panel.slice_context.setValue(1)  # the settings its proposals were made with
    assert w2.open_project(path) and not w2.is_training()
    w2.queue.select("case1/0002")
    qtbot.waitUntil(lambda: w2.iel_panel.pred_maps is not None and not w2.iel_panel.busy(), timeout=20000)
    assert w2.iel_panel.titles[1].text.startswith("Prediction (max ")
    w2.close()


def test_a_reopened_volume_projects_prediction_maps_are_the_models_own_in_the_window_frame(volume_folders, tmp_path):
    """`SavedModelPredictions.request_slice`: the saved model (slice context 1) predicts a
    slice from its neighbours, and its probabilities come in the frame the window shows."""
    from ielstudio.core.models import build_model
    from ielstudio.core.training import TrainConfig, load_checkpoint, predict, save_checkpoint
    from ielstudio.core.volume_data import load_volume_dataset
    from ielstudio.core.volume_review import VolumeSlices, scan_volume_dataset
    from ielstudio.gui.saved_predictions import SavedModelPredictions

    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("unet", 3, 2, width=4, depth=2), TrainConfig(width=4, depth=2, slice_context=1))
    model = load_checkpoint(path)[0]
    slices = VolumeSlices(scan_volume_dataset(*volume_folders))
    saved = SavedModelPredictions(path)
    for s in load_volume_dataset(*volume_folders, context=1).samples[::5]:
        got = saved.request_slice(s.name, slices)()
        expected = to_display(predict(model, s.image), slices.orientation(s.name))
        assert got.shape == (2, *slices.sample(s.name, None).mask.shape)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_large_compressed_volume_is_read_in_the_background_before_its_slice_shows(window, volume_folders, qtbot,
                                                                                 monkeypatch):
    """A volume whose file has no random access and more than READ_AT_ONCE_VOXELS voxels
    (here: every one, the limit set to 0) is opened in the prefetch thread: the window
    shows nothing and says so meanwhile, then the slice; a file that cannot be read is
    reported and skipped, not retried for ever."""
    import threading

    from ielstudio.core import volume_review

    monkeypatch.setattr(volume_review, "READ_AT_ONCE_VOXELS", 0)
    readers = []
    opened = volume_review.VolumeSlices.open

    def open_and_record(self, volume):
        readers.append((volume, threading.current_thread() is threading.main_thread()))
        return opened(self, volume)

    monkeypatch.setattr(volume_review.VolumeSlices, "open", open_and_record)
    w = window
    assert w.open_folders(*volume_folders)
    assert w.current is None and w._waiting_for == "case0/0003"  # the first volume: being read
    assert "Reading case0 (case0.nii.gz)" in w.statusBar().currentMessage()
    settled(w, qtbot)
    qtbot.waitUntil(lambda: w.current == "case0/0003", timeout=10000)
    assert w.canvas._shown is not None and w.volumes.ready("case0")
    qtbot.waitUntil(lambda: w.volumes.ready("case1"), timeout=10000)  # the next one, opened ahead
    # case2 is damaged on disk after the scan: its background opens fail, the window says why once
    (volume_folders[0] / "case2.nrrd").write_bytes(b"NRRD0004\ntype: short\n")
    w.queue.select("case1")
    assert w.current == "case1/0003"  # at once
    assert [v for v, _ in readers][:2] == ["case0", "case1"] and not any(in_gui for _, in_gui in readers)
    w.queue.select("case2")
    assert w.current is None and w._waiting_for == "case2/0003"
    qtbot.waitUntil(lambda: w._waiting_for is None and any(n.startswith("case2/") for n in w._unreadable),
                    timeout=10000)
    assert w.current is None and "case2.nrrd" in w.last_error
