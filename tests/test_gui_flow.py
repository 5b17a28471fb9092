"""The whole review flow in the main window, offscreen: open, train, decide, undo, export, reopen.

Decisions are tested with proposals injected through the same path training uses
(`MainWindow.apply_reviews`), so the expected pixels are known exactly; one test
trains for real and checks that proposals and scores arrive in the queue.
"""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from ielstudio.gui import jobs  # noqa: E402
from ielstudio.gui.main_window import MainWindow  # noqa: E402
from ielstudio.gui.window_training import TrainingState, kept_model  # noqa: E402

SIZE = 40
N_IMAGES = 6


def clean_mask(i: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(m, (12 + i, 14), 6, 1, -1)
    cv2.circle(m, (28, 28 - i), 5, 1, -1)
    return m


def noisy_mask(i: int) -> np.ndarray:
    m = clean_mask(i).copy()
    m[2:6, 2 + i:8 + i] = 1  # a spurious block; the "proposal" removes it
    return m


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(N_IMAGES):
        img = clean_mask(i) * 0.6 + 0.2 + rng.normal(0, 0.03, (SIZE, SIZE))
        cv2.imwrite(str(images / f"cell{i}.png"), np.clip(img * 255, 0, 255).astype(np.uint8))
        cv2.imwrite(str(masks / f"cell{i}.png"), noisy_mask(i) * 255)
    return images, masks


@pytest.fixture
def make_window(qtbot, tmp_path):
    made = []

    def make():
        settings = QSettings(str(tmp_path / f"settings{len(made)}.ini"), QSettings.Format.IniFormat)
        w = MainWindow(settings=settings, data_dir=tmp_path / "data")
        from ielstudio.core.training import TrainConfig

        w.train_base = TrainConfig(width=8, depth=2, batch_size=2, crop=32, eval_every=4, min_steps=1)
        w.confirm_close_during_training = lambda: True
        w.confirm_accept_preview = lambda name: True  # the injected proposals are snapshots (previews)
        w.train_in_process = False  # threads by default here (monkeypatchable, fast); two tests use the process
        qtbot.addWidget(w)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def deliver(window, reviews):
    """Reviews as a job delivers them: written into the project by the job's writer (the one
    writer of scores), then shown by the window."""
    writer = jobs.ScoreWriter(window.project.path)
    try:
        window.apply_reviews(writer(reviews))
    finally:
        writer.close()


def inject_proposals(window, scores):
    """Proposals = the clean masks, with given scores, as a training snapshot would deliver."""
    from ielstudio.core.iel import one_hot

    items = {}
    for i, score in enumerate(scores):
        prop = clean_mask(i).astype(np.int64)
        given = noisy_mask(i).astype(np.int64)
        items[f"cell{i}"] = jobs.ImageReview(one_hot(prop, 2), prop, score, float(np.mean(prop != given)))
    deliver(window, jobs.Reviews(5, items, len(items), len(items)))


def shown_with_proposals(make_window, dataset, qtbot):
    """A shown window on the data set with the injected proposals, on cell1."""
    w = make_window()
    w.show()
    qtbot.waitExposed(w)
    w.open_folders(*dataset)
    inject_proposals(w, SCORES)
    w.queue.select("cell1")
    return w


def layer(window, name):
    return np.asarray(window.canvas.layer_data(name))


SCORES = [0.9, 0.2, 0.6, 0.4, 0.8, 0.1]


def test_open_lists_pairs_lazily_and_sorts_worst_first(make_window, dataset):
    w = make_window()
    assert w.open_folders(*dataset)
    assert w.project.path.parent == w.data_dir / "projects"
    assert len(w.queue.model.rows) == N_IMAGES
    assert w.current in w._samples and len(w._samples) <= 4  # the shown image (+ prefetch of neighbours)
    # 2-D images: the defect maps beside the image, no "Other planes" tab (volumes only)
    assert w.side_tabs.currentWidget() is w.iel_scroll and not w.side_tabs.isTabVisible(1)
    inject_proposals(w, SCORES)
    order = w.queue.visible_names()
    assert order == ["cell5", "cell1", "cell3", "cell2", "cell4", "cell0"]  # score ascending
    assert {r.name: r.score for r in w.project.images()} == {f"cell{i}": s for i, s in enumerate(SCORES)}
    # filter by name and by status
    w.queue.filter_edit.setText("cell3")
    assert w.queue.visible_names() == ["cell3"]
    w.queue.filter_edit.setText("")
    w.queue.status_combo.setCurrentIndex(w.queue.status_combo.findData("accepted"))
    assert w.queue.visible_names() == []
    w.queue.status_combo.setCurrentIndex(0)


def whole_pass(scores) -> "jobs.Reviews":
    """A finished scoring pass (not a training snapshot) with the clean masks as proposals."""
    from ielstudio.core.iel import one_hot

    items = {f"cell{i}": jobs.ImageReview(one_hot(clean_mask(i).astype(np.int64), 2), clean_mask(i).astype(np.int64),
                                          score, 0.1) for i, score in enumerate(scores)}
    return jobs.Reviews(None, items, len(items), len(items))


def test_the_first_whole_scoring_pass_starts_the_review_at_the_most_doubtful_image(make_window, dataset):
    w = make_window()
    w.open_folders(*dataset)
    assert w.current == "cell0"  # picked by the window: nothing scored yet, name order
    inject_proposals(w, SCORES)  # a training snapshot: the view stays
    assert w.current == "cell0"
    deliver(w, whole_pass(SCORES))
    assert w.current == "cell5" and w.queue.visible_names()[0] == "cell5"  # score 0.1, top of the queue
    assert "top of the queue" in w.statusBar().currentMessage()
    w.queue.select("cell2")
    deliver(w, whole_pass(SCORES))  # later passes never move the user
    assert w.current == "cell2"


def test_a_scoring_pass_leaves_a_user_who_moved_where_they_are(make_window, dataset):
    w = make_window()
    w.open_folders(*dataset)
    w.queue.select("cell3")
    w.queue.select("cell0")  # back to the first image, but by hand
    deliver(w, whole_pass(SCORES))
    assert w.current == "cell0"


def test_a_scoring_pass_leaves_a_user_who_edited_the_first_image_on_it(make_window, dataset):
    w = make_window()
    w.open_folders(*dataset)
    assert w.current == "cell0"
    w.canvas.brush_class = 1
    w.canvas.paint_stroke([(30, 5)], tool="brush")  # an edit that stays on the image
    assert w.current == "cell0" and w.undo_stack.count() == 1
    deliver(w, whole_pass(SCORES))
    assert w.current == "cell0"  # it decided something here: left where it is


def test_accept_keep_brush_undo_redo_change_mask_and_project(make_window, dataset, qtbot):
    w = make_window()
    w.open_folders(*dataset)
    inject_proposals(w, SCORES)
    w.queue.select("cell1")
    assert w.current == "cell1"
    given1 = noisy_mask(1).astype(np.int64)
    np.testing.assert_array_equal(layer(w, "mask"), given1)
    from ielstudio.gui.canvas import outline

    np.testing.assert_array_equal(layer(w, "proposal"), outline(clean_mask(1)))  # outlines, not a second fill
    assert "unreviewed" in w.canvas.badge.text()
    diff = layer(w, "difference")
    assert int((diff == 2).sum()) == int(((given1 == 1) & (clean_mask(1) == 0)).sum()) == 24  # block removed
    assert int((diff == 1).sum()) == 0

    # accept (A) -> stored mask = proposal, queue status, advance to the next row
    w.actions["accept"].trigger()
    assert w.project.decision("cell1").status == "accepted"
    np.testing.assert_array_equal(w.project.final_mask("cell1"), clean_mask(1))
    assert w.queue.model.get("cell1").status == "accepted"
    assert w.current == "cell3"  # next in worst-first order
    w.queue.select("cell1")  # the canvas shows the decision: the accepted mask, nothing left to change
    np.testing.assert_array_equal(layer(w, "mask"), clean_mask(1))
    assert not layer(w, "difference").any() and "accepted" in w.canvas.badge.text()
    w.queue.select("cell3")
    # keep (R)
    w.actions["keep"].trigger()
    assert w.project.decision("cell3").status == "kept"
    assert w.project.final_mask("cell3") is None

    # brush on cell2: a disk of radius 2 (13 px) painted at (30, 5), where the mask is background
    w.queue.select("cell2")
    before = w.current_mask("cell2")
    w.canvas.set_brush_radius(2)
    w.canvas.brush_class = 1
    w.canvas.paint_stroke([(30, 5)], tool="brush")
    after = w.project.final_mask("cell2")
    assert w.project.decision("cell2").status == "edited"
    assert int((after != before).sum()) == 13 and after[30, 5] == 1
    np.testing.assert_array_equal(layer(w, "mask"), after)
    # eraser over the same spot removes exactly those pixels again
    w.canvas.paint_stroke([(30, 5)], tool="eraser")
    np.testing.assert_array_equal(w.project.final_mask("cell2"), before)

    # undo x2 -> back to the given mask, unreviewed; redo -> the brush again
    w.actions["undo"].trigger()
    np.testing.assert_array_equal(w.project.final_mask("cell2"), after)
    w.actions["undo"].trigger()
    assert w.project.decision("cell2").status == "unreviewed"
    np.testing.assert_array_equal(layer(w, "mask"), before)
    w.actions["redo"].trigger()
    np.testing.assert_array_equal(w.project.final_mask("cell2"), after)
    assert w.windowTitle().endswith("(3 edits this session)")  # accept, keep, brush
    # undo across images: the keep on cell3 and the accept on cell1
    w.undo_stack.undo()  # brush
    w.undo_stack.undo()  # keep cell3
    assert w.project.decision("cell3").status == "unreviewed"
    assert w.windowTitle().endswith("(1 edit this session)")
    w.undo_stack.undo()  # accept cell1
    assert w.project.decision("cell1").status == "unreviewed"
    assert "edit" not in w.windowTitle()  # nothing in force any more (redo is still there)
    assert w.project.final_mask("cell1") is None
    assert w.queue.model.get("cell1").status == "unreviewed"
    # every change was logged in the project
    assert [d.status for d in w.project.history("cell1")] == ["accepted", "unreviewed"]


def test_accept_object_changes_only_the_clicked_object(make_window, dataset):
    w = make_window()
    w.open_folders(*dataset)
    prop = clean_mask(0).astype(np.int64)
    given = noisy_mask(0).astype(np.int64)
    prop_extra = prop.copy()
    prop_extra[35:39, 35:39] = 1  # the proposal also adds a new object elsewhere
    from ielstudio.core.iel import one_hot

    deliver(w, jobs.Reviews(1, {"cell0": jobs.ImageReview(one_hot(prop_extra, 2), prop_extra, 0.3, 0.1)}))
    w.queue.select("cell0")
    w.canvas.objectClicked.emit(3, 4)  # on the spurious block (only in the given mask)
    after = w.project.final_mask("cell0")
    assert w.project.decision("cell0").status == "edited"
    assert after[2:6, 2:8].sum() == 0  # block removed
    assert after[35:39, 35:39].sum() == 0  # the other object was NOT taken
    assert int((after != given).sum()) == 24
    # clicking background where neither mask has anything changes nothing
    w.canvas.objectClicked.emit(20, 2)
    assert len(w.project.history("cell0")) == 1


def test_accept_all_worse_than_is_one_undo_step(make_window, dataset, planned):
    w = make_window()
    w.open_folders(*dataset)
    inject_proposals(w, SCORES)
    w.keep("cell5", advance=False)  # already reviewed: not touched by the bulk accept
    n_before = w.undo_stack.count()
    assert w.accept_worse_than(0.65) == 3  # cell1 0.2, cell3 0.4, cell2 0.6
    planned(w)  # read and encoded in a worker, recorded in one transaction after
    assert w.undo_stack.count() == n_before + 1
    statuses = {r.name: r.status for r in w.project.images()}
    assert statuses == {"cell0": "unreviewed", "cell1": "accepted", "cell2": "accepted", "cell3": "accepted",
                        "cell4": "unreviewed", "cell5": "kept"}
    np.testing.assert_array_equal(w.project.final_mask("cell2"), clean_mask(2))
    w.undo_stack.undo()
    statuses = {r.name: r.status for r in w.project.images()}
    assert statuses["cell1"] == statuses["cell2"] == statuses["cell3"] == "unreviewed"
    assert statuses["cell5"] == "kept"


def test_export_writes_decided_pixels_and_report_then_reopen_restores(make_window, dataset, qtbot, tmp_path):
    images, masks = dataset
    w = make_window()
    w.open_folders(images, masks)
    inject_proposals(w, SCORES)
    w.accept("cell1", advance=False)
    w.keep("cell3", advance=False)
    w.queue.select("cell2")
    w.canvas.set_brush_radius(2)
    w.canvas.paint_stroke([(30, 5)], tool="brush")
    edited = w.project.final_mask("cell2")
    originals = {p.name: p.read_bytes() for p in masks.iterdir()}

    assert not w.export(masks)  # never into the masks folder
    assert "original masks folder" in w.last_error

    out = tmp_path / "export"
    with qtbot.waitSignal(w.exportFinished, timeout=20000) as blocker:
        assert w.export(out)
    report = blocker.args[0]
    assert report.written == N_IMAGES and report.errors == 0
    got1 = cv2.imread(str(out / "cell1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got1, clean_mask(1) * 255)  # accepted proposal, same 0/255 coding
    got2 = cv2.imread(str(out / "cell2.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got2, edited * 255)
    got3 = cv2.imread(str(out / "cell3.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got3, noisy_mask(3) * 255)  # kept original
    rows = {r["name"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert rows["cell1"]["status"] == "accepted" and rows["cell1"]["changed_pixels"] == "24"
    assert rows["cell2"]["status"] == "edited" and rows["cell2"]["changed_pixels"] == "13"
    assert rows["cell3"]["status"] == "kept" and rows["cell3"]["changed_pixels"] == "0"
    assert rows["cell0"]["status"] == "unreviewed"
    summary = json.loads((out / "report.json").read_text())
    assert summary["statuses"] == {"accepted": 1, "edited": 1, "kept": 1, "unreviewed": 3}
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == originals  # originals untouched

    # reopen the project in a fresh window: decisions, edited pixels and scores come back
    path = w.project.path
    w.close()
    w2 = make_window()
    assert w2.open_project(path)
    assert {r.name: r.status for r in w2.queue.model.rows} == {
        "cell0": "unreviewed", "cell1": "accepted", "cell2": "edited", "cell3": "kept",
        "cell4": "unreviewed", "cell5": "unreviewed"}
    assert w2.queue.model.get("cell5").score == pytest.approx(0.1)
    assert w2.queue.visible_names()[0] == "cell5"
    w2.queue.select("cell2")
    np.testing.assert_array_equal(layer(w2, "mask"), edited)
    assert str(path) in w2.recent_projects()


def test_training_fills_scores_proposals_and_curves(make_window, dataset, qtbot):
    w = make_window()
    w.train_in_process = True  # as in the app: training in a child process
    w.open_folders(*dataset)
    reviews = []
    w.reviewsApplied.connect(reviews.append)
    with qtbot.waitSignal(w.trainingFinished, timeout=60000) as blocker:
        assert w.start_training(steps=6, snapshot_every=3)
    assert blocker.args[0].steps == 6 and blocker.args[0].checkpoint  # TrainingFinished
    # one of six images held out: the panel says the verdict on the model rests on it
    assert "on 1 held-out image(s): few" in w.training_panel.status.text()
    assert sorted({r.step for r in reviews if r.step is not None}) == [3, 6]  # two snapshots
    assert sum(len(r.items) for r in reviews if r.step == 6) == N_IMAGES
    assert set(w.proposals) == {f"cell{i}" for i in range(N_IMAGES)}
    rows = w.queue.model.rows
    assert all(r.score is not None and 0.0 <= r.score <= 1.0 for r in rows)
    scores = [w.queue.model.get(n).score for n in w.queue.visible_names()]
    assert scores == sorted(scores)
    assert {r.name: r.score for r in w.project.images()} == {r.name: r.score for r in rows}
    # nobody moved while it trained: the review starts at the top of the (now ranked) queue
    assert w.current == w.queue.visible_names()[0]
    cur = w.current
    from ielstudio.gui.canvas import outline

    np.testing.assert_array_equal(layer(w, "proposal"), outline(w.proposals[cur]))
    assert w.training_panel.progress.value() == w.training_panel.progress.maximum()  # a full bar when done
    assert len(w.training_panel._loss) >= 1 and w.training_panel._agree  # live curves got data
    assert w.project.checkpoint is not None and w.project.checkpoint.path.is_file()
    assert w.dataset_info is not None and w.dataset_info.n_classes == 2


def _count_steps(monkeypatch):
    """Wrap core training so the test knows how many steps the worker has pulled."""
    import ielstudio.core.training as training

    pulled = {"steps": 0}
    real = training.train

    def counting(*a, **k):
        for ev in real(*a, **k):
            if isinstance(ev, training.StepEvent):
                pulled["steps"] = ev.step
            yield ev

    monkeypatch.setattr(training, "train", counting)
    return pulled


def test_stop_takes_effect_within_one_step(make_window, dataset, qtbot, monkeypatch):
    pulled = _count_steps(monkeypatch)
    w = make_window()
    w.open_folders(*dataset)
    done = []
    with qtbot.waitSignal(w.trainingFinished, timeout=60000):
        w.start_training(steps=5000, snapshot_every=1000)
        qtbot.waitUntil(lambda: pulled["steps"] >= 2, timeout=30000)
        at_stop = pulled["steps"]
        w.train_worker.yielded.connect(lambda ev: done.append(ev) if hasattr(ev, "reason") else None)
        w.stop_training()
    assert done and done[-1].reason == "cancelled", w.last_error
    assert at_stop <= done[-1].steps <= at_stop + 1
    assert w.checkpoint is not None and w.checkpoint.is_file()  # the model so far is kept after a stop
    # no snapshot came before the stop: the kept model scores every image in the background
    assert w._job_kind == "score" and w.is_training() and not w.proposals
    # said as it is: stopped, not "done", and the bar names the pass that now runs and its model
    steps = done[-1].steps  # stopped before the first evaluation: the last weights are the kept ones
    assert done[-1].history["best_agreement"] is None
    assert w.training_panel.status.text().startswith(
        f"Stopped after {steps} steps; the proposals come from the model of step {steps}")
    assert w._job_text == f"scoring every image with the model of step {steps}…"
    assert w.training_panel.progress.format() == w._job_text or w.training_panel.progress.format().startswith(
        ("loading images", "scoring "))
    with qtbot.waitSignal(w.trainingFinished, timeout=60000):
        pass
    assert set(w.proposals) == {f"cell{i}" for i in range(N_IMAGES)}
    assert not w.training_panel.stop_button.isEnabled() and w.training_panel.start_button.isEnabled()


@pytest.mark.parametrize("history, steps, said", [
    ({"best_step": 125, "best_agreement": 0.708}, 175, "the model of step 125, its best evaluation"),
    ({"best_step": 175, "best_agreement": 0.708}, 175, "the model of step 175"),
    ({"best_step": 0, "best_agreement": None}, 3, "the model of step 3"),  # stopped before any evaluation
    ({"best_step": 40}, 40, "the model of step 40"),  # a fixed number of steps: the last weights
    ({"folds": [{}, {}], "best_step": [50, 25]}, 75, "the 2 fold model(s) trained so far"),
])
def test_a_stop_names_the_weights_it_kept(history, steps, said):
    assert kept_model(jobs.TrainingFinished(steps, "cancelled", history, None, "model.pt")) == said


def test_stop_while_scoring_after_training_starts_no_second_pass(make_window, dataset, qtbot, monkeypatch):
    import threading
    import time

    scoring = threading.Event()

    def slow_scoring(model, samples, clean_config, cancel, **kw):  # runs until stopped
        scoring.set()
        while not cancel():
            time.sleep(0.01)
        yield from ()

    monkeypatch.setattr(jobs, "scoring_job", slow_scoring)
    w = make_window()
    w.open_folders(*dataset)
    with qtbot.waitSignal(w.trainingFinished, timeout=60000) as blocker:
        w.start_training(steps=3, snapshot_every=1000)
        qtbot.waitUntil(scoring.is_set, timeout=30000)
        w.stop_training()
    assert blocker.args[0].steps == 3 and blocker.args[0].reason != "cancelled"
    assert not w.is_training() and w._job_kind == "train"  # the user stopped the scoring: none restarts
    assert w.training_panel.start_button.isEnabled()


def test_pause_and_resume(make_window, dataset, qtbot, monkeypatch):
    pulled = _count_steps(monkeypatch)
    w = make_window()
    w.open_folders(*dataset)
    w.start_training(steps=5000, snapshot_every=1000)
    qtbot.waitUntil(lambda: w.training_panel.progress.value() >= 1, timeout=30000)
    with qtbot.waitSignal(w.train_worker.paused, timeout=5000):
        w.pause_training()
    assert w.training_panel.pause_button.text() == "Resume"
    # the worker finishes at most the step in flight, then blocks on its condition
    at_pause = pulled["steps"]
    qtbot.waitUntil(lambda: w.train_worker.waiting, timeout=30000)
    frozen = pulled["steps"]
    assert frozen <= at_pause + 1
    qtbot.waitUntil(lambda: w.train_worker.waiting and pulled["steps"] == frozen, timeout=1000)
    with qtbot.waitSignal(w.train_worker.resumed, timeout=5000):
        w.resume_training()
    qtbot.waitUntil(lambda: pulled["steps"] >= frozen + 2, timeout=30000)
    with qtbot.waitSignal(w.trainingFinished, timeout=30000):
        w.stop_training()


def test_close_during_training_asks_then_stops_cleanly(make_window, dataset, qtbot):
    w = make_window()
    w.train_in_process = True
    w.open_folders(*dataset)
    w.start_training(steps=5000, snapshot_every=1000)
    qtbot.waitUntil(lambda: w.training_panel.progress.value() >= 1 and w.training_state is TrainingState.TRAINING,
                    timeout=60000)
    worker, child = w.train_worker, w.train_worker.process
    asked = []
    w.confirm_close_during_training = lambda: asked.append("no") or False
    w.close()
    assert asked == ["no"] and worker.is_running() and w.project is not None  # "No": keeps training
    w.confirm_close_during_training = lambda: asked.append("yes") or True
    w.close()
    assert asked == ["no", "yes"]
    assert not worker.is_running()  # thread ended before close returned
    assert not child.is_alive() and child.exitcode == 0  # the training process ended by itself
    assert w.project is None


def test_failed_training_is_reported_and_session_kept(make_window, dataset, qtbot, monkeypatch):
    import ielstudio.core.training as training

    def diverging(*a, **k):
        raise training.TrainingError("training diverged at step 1: the loss is nan")
        yield  # pragma: no cover

    monkeypatch.setattr(training, "train", diverging)
    w = make_window()
    w.open_folders(*dataset)
    w.keep("cell0", advance=False)
    with qtbot.waitSignal(w.errorShown, timeout=30000) as blocker:
        w.start_training(steps=5)
    assert "loss is nan" in blocker.args[0]
    assert "loss is nan" in w.statusBar().currentMessage()
    assert w.training_panel.start_button.isEnabled()
    assert w.project.decision("cell0").status == "kept"  # session intact


def test_bad_files_are_listed_with_reason(make_window, dataset, qtbot):
    images, masks = dataset
    (images / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(masks / "broken.png"), np.zeros((SIZE, SIZE), np.uint8))
    (images / "lonely.png").write_bytes((images / "cell0.png").read_bytes())  # no mask
    w = make_window()
    w.open_folders(images, masks)
    rows = {r.name: r for r in w.queue.model.rows}
    assert rows["lonely.png"].status == "skipped" and rows["lonely.png"].reason
    w.queue.select("broken")
    assert w.canvas.image_item.image is None  # nothing shown for an unreadable image
    assert "broken.png" in w.last_error
    # training loads everything: the broken pair is marked skipped in the project, with why
    with qtbot.waitSignal(w.trainingFinished, timeout=60000):
        w.start_training(steps=2, snapshot_every=2)
    assert w.project.image("broken").status == "skipped"
    assert w.queue.model.get("broken").reason


@pytest.mark.slow
def test_demo_screenshot_mode_saves_window_and_exits_zero(tmp_path):
    """`ielstudio demo --train-steps N --screenshot PATH`, the smoke check of the issue."""
    import os
    import subprocess
    import sys

    shot = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_DATA_HOME=str(tmp_path / "xdg"),
               XDG_CONFIG_HOME=str(tmp_path / "xdgc"), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "ielstudio", "demo", "--train-steps", "2", "--screenshot", str(shot)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 400 and img.shape[1] > 800
    assert img.std() > 10  # not a blank picture
    # the demo project lives in the user data folder
    assert list((tmp_path / "xdg" / "ielstudio" / "projects").glob("demo-nuclei*.ielproj"))


def test_single_key_shortcuts_work_while_a_plot_or_the_canvas_has_focus(make_window, dataset, qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    w = shown_with_proposals(make_window, dataset, qtbot)
    for widget, key, status in ((w.canvas.view_widget, Qt.Key.Key_A, "accepted"),
                                (w.training_panel.loss_plot, Qt.Key.Key_R, "kept"),
                                (w.iel_panel.plots, Qt.Key.Key_A, "accepted")):
        widget.setFocus()
        QApplication.processEvents()
        name = w.current
        QTest.keyClick(QApplication.focusWidget(), key)
        assert w.project.decision(name).status == status, (widget, key)
    w.canvas.view_widget.setFocus()
    QTest.keyClick(w.canvas.view_widget, Qt.Key.Key_B)
    assert w.canvas.tool == "brush"
    r = w.canvas.brush_radius
    QTest.keyClick(w.canvas.view_widget, Qt.Key.Key_BracketRight)
    assert w.canvas.brush_radius == r + 1


def test_reopened_project_shows_its_stored_proposals_and_curves_without_running_the_model(make_window, dataset,
                                                                                          qtbot, monkeypatch):
    w = make_window()
    w.open_folders(*dataset)
    with qtbot.waitSignal(w.trainingFinished, timeout=60000) as blocker:
        w.start_training(steps=3, snapshot_every=3)
    ckpt = blocker.args[0].checkpoint
    assert w.project.checkpoint.path == Path(ckpt).resolve()
    before = {n: w.proposals[n].copy() for n in w.proposals}
    assert len(before) == N_IMAGES
    # as a pass that kept labels as given records it (a model of 3 steps here kept none: no held-out verdict)
    last = w.project.get_setting(jobs.LAST_REVIEW)
    assert last["complete"] and last["warnings"] == [] and w.review_notice.isHidden()
    kept = "class 1: the model is not reliable for this class; its labels are kept as given"
    w.project.set_setting(jobs.LAST_REVIEW, {**last, "warnings": [kept]})
    path = w.project.path
    w.close()
    w2 = make_window()
    assert w2.open_project(path)
    assert not w2.is_training()  # nothing to recompute: no model run
    assert w2.review_notice.warnings() == [kept] and not w2.review_notice.isHidden()  # what it kept, and why
    assert w2.review_notice.title() == "Labels kept where the model is not reliable"
    assert set(w2.proposals) == set(before) and w2.checkpoint == Path(ckpt).resolve()
    for name, prop in before.items():
        np.testing.assert_array_equal(w2.proposals[name], prop)
    steps, _ = w2.training_panel.loss_curve.getData()
    assert list(steps) == [1, 2, 3]  # the training's curves, from the project
    assert "Score again with the saved model" in w2.iel_panel.no_prediction_hint  # where the maps come from
    assert w2.actions["score_saved"].text() == "Score again with the saved model"
    w2.queue.select("cell2")
    np.testing.assert_array_equal(np.asarray(w2.canvas.layer_data("proposal")) > 0,
                                  __import__("ielstudio.gui.canvas", fromlist=["outline"]).outline(before["cell2"]) > 0)
    # the defect maps of the prediction: the saved model predicts the shown image, in the panel's worker
    qtbot.waitUntil(lambda: w2.iel_panel.pred_maps is not None and not w2.iel_panel.busy(), timeout=20000)
    assert w2.iel_panel.titles[1].text.startswith("Prediction (max ") and not w2.is_training()
    w2.close()
    # proposals made by older review rules (IEL Studio upgraded since): recomputed with the model
    from ielstudio.core import session

    with monkeypatch.context() as m:
        m.setattr(session, "PROPOSAL_RULES", session.PROPOSAL_RULES + ", and newer rules")
        w2b = make_window()
        with qtbot.waitSignal(w2b.trainingFinished, timeout=60000):
            assert w2b.open_project(path) and w2b.is_training() and w2b._job_kind == "score"
        w2b.close()
    # other clean settings than those the proposals were made with: they are recomputed with the
    # model; and training right after opening replaces that scoring pass
    w3 = make_window()
    w3.training_panel.convex_hull.setChecked(True)
    assert w3.open_project(path) and w3.is_training() and w3._job_kind == "score"
    with qtbot.waitSignal(w3.trainingFinished, timeout=60000) as blocker:
        assert w3.start_training(steps=2, snapshot_every=2)
    assert blocker.args[0].steps == 2
    w3.close()
    # a model file that changed since the project used it is refused, not silently used
    import torch

    ckpt = blocker.args[0].checkpoint
    payload = torch.load(ckpt, weights_only=True)
    payload["meta"]["note"] = "replaced"
    torch.save(payload, ckpt)
    w4 = make_window()
    w4.training_panel.convex_hull.setChecked(True)  # as w3 trained: its stored proposals fit
    assert w4.open_project(path) and not w4.is_training()  # w3's proposals are stored
    with qtbot.waitSignal(w4.trainingFinished, timeout=60000) as blocker:
        assert w4.score_with_saved_model()
    assert blocker.args == [None]
    assert "has changed since the project used it" in w4.last_error
    w4.close()
    # a model file that is gone: the stored proposals still show, and the window says why
    # there are no prediction maps and what to do, instead of pointing to a scoring pass that cannot run
    Path(ckpt).rename(Path(ckpt).with_suffix(".moved"))
    w5 = make_window()
    w5.training_panel.convex_hull.setChecked(True)
    assert w5.open_project(path) and not w5.is_training() and set(w5.proposals) == set(before)
    w5.queue.select("cell2")
    qtbot.waitUntil(lambda: w5.iel_panel.given_maps is not None and not w5.iel_panel.busy(), timeout=20000)
    assert w5.iel_panel.titles[1].text == "Prediction: model file missing"
    assert "missing" in w5.iel_panel.no_prediction_hint and "Score again" not in w5.iel_panel.no_prediction_hint
    assert "missing" in w5.training_panel.status.text()
    assert not w5.score_with_saved_model() and "is missing" in w5.statusBar().currentMessage()


def test_failed_export_is_reported_and_session_kept(make_window, dataset, qtbot, tmp_path):
    w = make_window()
    w.open_folders(*dataset)
    w.keep("cell0", advance=False)
    blocker_path = tmp_path / "not-a-folder"
    blocker_path.write_text("a file where the export folder should be")
    with qtbot.waitSignal(w.exportFinished, timeout=20000) as blocker:
        assert w.export(blocker_path)
    assert blocker.args == [None]
    assert "Export failed" in w.statusBar().currentMessage()
    assert w.project.decision("cell0").status == "kept"


def test_window_icon_is_set(make_window):
    from ielstudio.gui.main_window import icon_path

    p = icon_path()
    assert p is not None and p.is_file()
    w = make_window()
    assert not w.windowIcon().pixmap(64, 64).isNull()


def test_next_images_are_prefetched_in_the_background(make_window, dataset, qtbot):
    w = make_window()
    w.open_folders(*dataset)
    order = w.queue.visible_names()
    w.queue.select(order[0])
    qtbot.waitUntil(lambda: set(order[1:3]) <= set(w._samples), timeout=10000)
    s = w._samples[order[1]]
    np.testing.assert_array_equal(s.mask, noisy_mask(int(order[1][-1])))
    w.actions["next"].trigger()
    assert w.current == order[1]


def test_a_class_the_model_did_not_learn_is_shown_to_the_user(make_window, dataset):
    from ielstudio.core.iel import one_hot

    w = make_window()
    assert w.open_folders(*dataset)
    prop = clean_mask(0).astype(np.int64)
    warning = "class 1: the given masks mark 300 pixels, the cleaned masks only 0 (0%); the model did not learn this class"
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(prop, 2), prop, 0.5, 0.1)}, 1, 1,
                                 warnings=[warning]))
    assert warning in w.statusBar().currentMessage()
    notice = w.review_notice
    assert not notice.isHidden() and notice.title() == "Labels kept where the model is not reliable"
    assert notice.text() == "C" + warning[1:] + "." and w._error_box is None  # a notice, not an error dialog
    notice.hide_button.click()
    assert notice.isHidden()
    w.actions["review_notice"].trigger()  # Training > Show what the last scoring pass kept: back
    assert not notice.isHidden() and notice.title() == "Labels kept where the model is not reliable"
    notice.hide_button.click()
    # the next whole pass with nothing kept as given: no notice; one that keeps some again shows it
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(prop, 2), prop, 0.5, 0.1)}, 1, 1))
    assert notice.isHidden() and notice.warnings() == []
    w.actions["review_notice"].trigger()
    assert notice.isHidden() and "kept nothing as given" in w.statusBar().currentMessage()
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(prop, 2), prop, 0.5, 0.1)}, 2, 2,
                                 warnings=[warning, "class 2: kept as given"]))
    assert not notice.isHidden() and notice.text().endswith("(and 1 more: Details)")
    notice.details_button.click()
    assert "Class 2: kept as given." in notice._details.text()
    w.close_project()
    assert notice.isHidden()


def test_a_class_trusted_by_its_objects_is_explained_not_called_unreliable(make_window, dataset):
    from ielstudio.core.iel import one_hot
    from ielstudio.core.review import assess_reliability

    from drawn import disk, probs_of

    centres = [(15 + 32 * (k % 3), 15 + 45 * (k // 3)) for k in range(6)]  # six nuclei ...
    found = probs_of(sum(disk((96, 96), c, 6) for c in centres).astype(np.float32))  # ... the model finds all
    given = sum(disk((96, 96), c, 8) for c in centres).astype(np.int64)  # drawn 2 px too wide
    warnings = assess_reliability([(found, given)] * 2, 2, None, out_of_sample=True).messages
    assert len(warnings) == 1 and "finds 12 of their 12 objects" in warnings[0]
    w = make_window()
    assert w.open_folders(*dataset)
    prop = clean_mask(0).astype(np.int64)
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(prop, 2), prop, 0.5, 0.1)}, 1, 1,
                                 warnings=warnings))
    assert w.review_notice.title() == "A class trusted by its objects, below the agreement bar"


def test_an_unreliable_model_is_named_in_the_window(make_window, dataset):
    from ielstudio.core.iel import one_hot

    w = make_window()
    assert w.open_folders(*dataset)
    given = noisy_mask(0).astype(np.int64)
    warning = ("the model is not reliable for any class: every mask is kept as given. The scores still rank "
               "the images by how much the model doubts them, but treat the ranking with care")
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(given, 2), given, 0.5, 0.0)}, 1, 1,
                                 warnings=[warning]))
    assert w.review_notice.title() == "The model is not reliable: masks kept as given"
    assert "every mask is kept as given" in w.statusBar().currentMessage()
    # ... and when rule 3 removed objects the dialog says so, title and text
    from ielstudio.core.review import with_object_changes

    warning = with_object_changes([warning], 2, caveat="The scores still rank the images")[0]
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(given, 2), given, 0.5, 0.0)}, 1, 1,
                                 warnings=[warning], objects_removed=2))
    assert w.review_notice.title() == "Masks kept, except where model and image agree"
    assert "except 2 object(s)" in w.statusBar().currentMessage()


def test_the_legend_names_every_class_of_the_shown_masks_before_training(make_window):
    from ielstudio.core.paths import sample_dir

    w = make_window()
    root = sample_dir("lesions")  # masks with a body (1) and a core (2)
    assert w.open_folders(root / "images", root / "masks")
    assert w.dataset_info is None and w.n_classes() == 3
    # named by the sample's dataset.json (colour masks: by class index)
    assert w.canvas.n_classes == 3 and "2 lesion core" in w.canvas.legend.plain_text()
    combo = w.canvas.class_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["1 lesion body", "2 lesion core"]


def test_classes_are_numbered_without_a_description_and_a_broken_one_is_said(make_window, dataset, tmp_path, qtbot):
    import shutil

    images, masks = dataset
    w = make_window()
    assert w.open_folders(images, masks)
    assert "class 1" in w.canvas.legend.plain_text() and w.described_classes == {}
    root = tmp_path / "described"
    shutil.copytree(images, root / "images")
    shutil.copytree(masks, root / "masks")
    (root / "dataset.json").write_text('{"labels": {"background": 0, "cell": true}}')
    assert w.open_folders(root / "images", root / "masks")
    assert "class 1" in w.canvas.legend.plain_text()
    message = w.statusBar().currentMessage()
    assert str(root / "dataset.json") in message and "the classes are numbered" in message
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "cell"}}')
    w.close_project()
    assert w.open_folders(root / "images", root / "masks")
    assert "1 cell" in w.canvas.legend.plain_text()  # named at once, before the masks' mapping is settled
    qtbot.waitUntil(lambda: w.project.mask_encoding() is not None, timeout=10000)
    assert w.project.mask_encoding().values == (0, 255)
    assert "1 cell" in w.canvas.legend.plain_text()  # binary 0/255 masks take the description's 0/1
    # the notice names the class too
    from ielstudio.core.iel import one_hot

    prop = clean_mask(0).astype(np.int64)
    deliver(w, jobs.Reviews(None, {"cell0": jobs.ImageReview(one_hot(prop, 2), prop, 0.5, 0.1)}, 1, 1,
                                 warnings=["class 1: not reliable for this class, so its labels are kept as given"]))
    assert w.review_notice.text() == "Class 1, cell: not reliable for this class, so its labels are kept as given."


def test_a_project_open_elsewhere_asks_first(make_window, dataset, tmp_path):
    import os
    import socket

    from ielstudio.core.session import lock_path

    w = make_window()
    assert w.open_folders(*dataset)
    path = w.project.path
    assert lock_path(path).exists()
    w.close_project()
    assert not lock_path(path).exists()
    other = {"pid": os.getppid(), "host": socket.gethostname(), "user": "ann", "since": "2026-12-03T09:00:00+00:00"}
    lock_path(path).write_text(json.dumps(other))
    asked = []
    w.confirm_open_in_use = lambda p, who: asked.append((p, who)) or False
    assert not w.open_project(path) and w.project is None
    assert asked == [(path, other)]
    w.confirm_open_in_use = lambda p, who: True
    assert w.open_project(path) and w.project is not None
    assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()  # ours now


def test_a_project_whose_folders_moved_can_be_pointed_at_them(make_window, dataset, tmp_path):
    images, masks = dataset
    w = make_window()
    assert w.open_folders(images, masks)
    w.keep("cell2", advance=False)
    path = w.project.path
    w.close_project()
    moved = tmp_path / "moved"
    moved.mkdir()
    images.rename(moved / "images")
    masks.rename(moved / "masks")
    w.ask_moved_folders = lambda i, m: None  # the user gives up
    assert not w.open_project(path) and "not reachable" in w.last_error
    wrong = tmp_path / "wrong"
    (wrong / "i").mkdir(parents=True)
    (wrong / "m").mkdir()
    cv2.imwrite(str(wrong / "i" / "x.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(wrong / "m" / "x.png"), np.zeros((8, 8), np.uint8))
    w.ask_moved_folders = lambda i, m: (str(wrong / "i"), str(wrong / "m"))
    assert not w.open_project(path) and "holds none of the 6 images" in w.last_error
    w.ask_moved_folders = lambda i, m: (str(moved / "images"), str(moved / "masks"))
    assert w.open_project(path)
    assert w.project.images_dir == (moved / "images").resolve()
    assert w.project.decision("cell2").status == "kept"  # decisions kept
    assert w.project.image("cell0").image_path == (moved / "images" / "cell0.png").resolve()
    assert len(w.queue.model.rows) == N_IMAGES


def test_keys_reach_the_queue_after_opening_and_the_filter_only_when_clicked(make_window, dataset, qtbot):
    """N after opening goes to the next image (it typed "n" into the filter and emptied the queue)."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    w = make_window()
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    assert w.open_folders(*dataset)
    QApplication.processEvents()
    assert QApplication.focusWidget() is w.queue.table
    first = w.current
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_N)
    assert w.current != first and w.queue.filter_edit.text() == ""
    assert len(w.queue.visible_names()) == N_IMAGES
    w.queue.table.setFocus()
    QTest.keyClick(w.queue.table, Qt.Key.Key_Tab)  # tabbing never lands in the filter box
    assert QApplication.focusWidget() is not w.queue.filter_edit
    QTest.mouseClick(w.queue.filter_edit, Qt.MouseButton.LeftButton)
    assert QApplication.focusWidget() is w.queue.filter_edit
    QTest.keyClicks(w.queue.filter_edit, "cell3")
    assert w.queue.visible_names() == ["cell3"]
    QTest.keyClick(w.queue.filter_edit, Qt.Key.Key_Escape)
    assert QApplication.focusWidget() is w.queue.table
    assert w.queue.filter_edit.text() == "cell3"  # Esc leaves the box, the filter stays


def test_undo_says_what_it_undoes_and_shows_that_image(make_window, dataset, planned):
    w = make_window()
    w.open_folders(*dataset)
    inject_proposals(w, SCORES)
    w.accept("cell1", advance=False)
    w.queue.select("cell4")  # the reviewer has moved on
    w.undo()
    assert w.current == "cell1" and w.project.decision("cell1").status == "unreviewed"
    assert w.statusBar().currentMessage() == "Undid: Accept proposal for cell1"
    w.queue.select("cell0")
    w.redo()
    assert w.current == "cell1" and w.project.decision("cell1").status == "accepted"
    assert w.statusBar().currentMessage() == "Redid: Accept proposal for cell1"
    w.redo()
    assert w.statusBar().currentMessage() == "Nothing to redo"
    w.accept_worse_than(0.5)  # one macro over several images: said, the view stays
    planned(w)
    before = w.current
    w.undo()
    assert w.statusBar().currentMessage().startswith("Undid: Accept ") and w.current == before


def test_an_unreadable_file_is_marked_skipped_once_without_a_dialog_on_every_visit(make_window, dataset):
    images, masks = dataset
    (masks / "cell2.png").write_text("not an image at all")
    (images / "cell4.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a truncated PNG
    w = make_window()
    w.open_folders(images, masks)
    shown = []
    w.errorShown.connect(shown.append)
    w.queue.select("cell1")
    assert w.canvas.image_item.image is not None and w.iel_panel.slider is not None
    w.queue.select("cell2")
    assert len(shown) == 1 and w._error_box.windowTitle() == "Cannot load mask"
    assert "cell2.png" in shown[0] and "not an image" in shown[0]
    assert w.queue.model.get("cell2").status == "skipped" and w.project.decision("cell2").status == "skipped"
    assert w.current is None and w.canvas.image_item.image is None  # nothing of cell1 stays on screen
    assert w.iel_panel.given_maps is None
    for name in ("cell3", "cell2", "cell3", "cell2"):  # coming back: no new dialog
        w.queue.select(name)
    assert len(shown) == 1
    w.queue.select("cell4")
    assert len(shown) == 1 and w.statusBar().currentMessage().startswith("Cannot load image: ")
    assert w.queue.model.get("cell4").status == "skipped"


def test_the_demo_trains_only_when_its_project_has_no_saved_model(make_window, dataset, qtbot, tmp_path):
    from ielstudio.gui.app import train_on_start

    project = tmp_path / "demo.ielproj"
    w = make_window()
    w.open_folders(*dataset, project_path=project)
    assert train_on_start(w, demo=True, train_steps=None, screenshot=None)  # first run: trains
    with qtbot.waitSignal(w.trainingFinished, timeout=60000):
        w.start_training(steps=2, snapshot_every=2)
    w.close()
    w2 = make_window()
    w2.open_folders(*dataset, project_path=project)  # the saved model's proposals, as stored
    assert len(w2.proposals) == N_IMAGES and not w2.is_training()
    assert not train_on_start(w2, demo=True, train_steps=None, screenshot=None)  # reopened, not retrained
    assert train_on_start(w2, demo=True, train_steps=3, screenshot=None)  # asked for: trains
    assert not train_on_start(w2, demo=False, train_steps=None, screenshot=None)


def test_default_project_names_say_which_data_they_hold(make_window, tmp_path):
    import hashlib

    w = make_window()
    projects = tmp_path / "data" / "projects"
    nuclei = tmp_path / "nuclei" / "images"
    p = w.default_project_path(nuclei, tmp_path / "nuclei" / "masks")
    assert p.parent == projects and p.name.startswith("nuclei-images-") and len(p.stem) == len("nuclei-images-") + 6
    assert w.default_project_path(nuclei, tmp_path / "other-masks") != p  # another mask folder, another project
    assert w.default_project_path(tmp_path / "CT scans: 2024", tmp_path / "m").name.startswith("CT_scans__2024-")
    # a project made under the old name (images-<10 hex>) is still found
    key = f"{nuclei.resolve()}\n{(tmp_path / 'nuclei' / 'masks').resolve()}"
    legacy = projects / f"images-{hashlib.sha1(key.encode()).hexdigest()[:10]}.ielproj"
    projects.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(b"")
    assert w.default_project_path(nuclei, tmp_path / "nuclei" / "masks") == legacy


def test_save_as_goes_on_in_the_copy_and_close_empties_the_window(make_window, dataset, qtbot, tmp_path):
    w = make_window()
    w.open_folders(*dataset)
    w.keep("cell1", advance=False)
    old = w.project.path
    with qtbot.waitSignal(w.projectSaved, timeout=20000) as blocker:
        assert w.save_project_as(tmp_path / "mine")
    assert blocker.args == [str(tmp_path / "mine.ielproj")]
    assert w.project.path == tmp_path / "mine.ielproj" and w.project.decision("cell1").status == "kept"
    w.keep("cell2", advance=False)  # goes into the copy, not the old file
    from ielstudio.core.session import Project

    with Project.open(old, read_only=True) as p:
        assert p.decision("cell2").status == "unreviewed"
    assert not w.save_project_as(tmp_path / "mine.ielproj") and "already exists" in w.last_error
    w.actions["close_project"].trigger()
    assert w.project is None and w.windowTitle() == "IEL Studio" and w.queue.model.rows == []


def hover(window, row, col):
    """Move the (simulated) mouse over image pixel (row, col) of the canvas."""
    from PySide6.QtCore import QPointF

    c = window.canvas
    c._on_mouse_moved(c.viewbox.mapViewToScene(QPointF(col + 0.5, row + 0.5)))


def test_o_accepts_the_object_under_the_cursor_and_the_brush_paints_any_class(make_window, dataset, qtbot):
    w = shown_with_proposals(make_window, dataset, qtbot)
    hover(w, 3, 5)  # on the spurious block of cell1 (rows 2-5, columns 3-8), absent from the proposal
    assert w.canvas.hover == (3, 5) and "x 5, y 3" in w.canvas.info.text() and "label 1" in w.canvas.info.text()
    w.actions["tool_object"].trigger()
    final = w.project.final_mask("cell1")
    assert w.project.decision("cell1").status == "edited"
    assert final[2:6, 3:9].max() == 0  # that object taken from the proposal
    np.testing.assert_array_equal(final[10:], noisy_mask(1)[10:])  # nothing else changed
    assert w.canvas.tool == "pan"

    w._set_classes(3)  # a three-class data set: the brush can paint class 2
    assert [w.canvas.class_combo.itemData(i) for i in range(w.canvas.class_combo.count())] == [1, 2]
    w.canvas.class_combo.setCurrentIndex(1)
    assert w.canvas.brush_class == 2
    w.canvas.set_brush_radius(1)
    w.canvas.paint_stroke([(35, 35)], tool="brush")
    assert w.project.final_mask("cell1")[35, 35] == 2
    hover(w, 14, 13)  # inside a disc of class 1: L picks it
    w.actions["pick_class"].trigger()
    assert w.canvas.brush_class == 1 and w.canvas.class_combo.currentData() == 1
    hover(w, -5, -5)  # off the image: O picks the object tool instead
    assert w.canvas.hover is None
    w.actions["tool_object"].trigger()
    assert w.canvas.tool == "object"


def test_a_damaged_project_opens_read_only_or_starts_again_from_its_folders(make_window, dataset, tmp_path):
    w = make_window()
    w.open_folders(*dataset)
    rng = np.random.default_rng(0)
    for _ in range(8):  # incompressible masks: the decision log spans many pages
        for i in range(N_IMAGES):
            w.project.record_decision(f"cell{i}", "edited", rng.integers(0, 200, (SIZE, SIZE)))
    path = w.project.path
    w.close_project()
    data = bytearray(path.read_bytes())
    n_pages = len(data) // 4096
    assert n_pages > 20
    for k in range(n_pages - 8, n_pages - 2):  # damage past the first pages
        data[k * 4096:(k + 1) * 4096] = b"\xff" * 4096
    path.write_bytes(bytes(data))

    asked = []
    w.ask_damaged_project = lambda p, msg: asked.append(msg) or None
    assert not w.open_project(path) and "damaged" in asked[0]
    w.ask_damaged_project = lambda p, msg: "read-only"
    assert w.open_project(path) and w.project.read_only and len(w.queue.model.rows) == N_IMAGES
    assert not w.start_training(steps=2) and "read-only" in w.last_error
    before = path.read_bytes()
    w.close_project()
    assert path.read_bytes() == before  # nothing was written into it
    w.ask_damaged_project = lambda p, msg: "start again"
    assert w.open_project(path) and not w.project.read_only
    assert w.project.decision("cell0").status == "unreviewed" and len(w.queue.model.rows) == N_IMAGES
    kept = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".damaged-")
            and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].read_bytes() == before  # the damaged file is kept, renamed


def test_previews_are_marked_need_a_confirmation_and_the_queue_keeps_its_order(make_window, dataset):
    from ielstudio.core.iel import one_hot

    w = make_window()
    w.open_folders(*dataset)
    inject_proposals(w, SCORES)  # a training snapshot (step 5): previews
    assert w.previews == {f"cell{i}" for i in range(N_IMAGES)}
    w.queue.select("cell1")
    assert "preview" in w.canvas.badge.text()
    asked = []
    w.confirm_accept_preview = lambda name: asked.append(name) or False
    assert not w.accept("cell1", advance=False) and asked == ["cell1"]
    assert w.project.decision("cell1").status == "unreviewed"
    w.confirm_accept_preview = lambda name: True
    assert w.accept("cell1", advance=False)

    order = w.queue.visible_names()
    w.queue.freeze_order(True)  # as while a job runs
    flipped = {f"cell{i}": jobs.ImageReview(one_hot(clean_mask(i).astype(np.int64), 2), clean_mask(i).astype(np.int64),
                                            1.0 - s, 0.0) for i, s in enumerate(SCORES)}
    deliver(w, jobs.Reviews(None, flipped, N_IMAGES, N_IMAGES))  # the final scoring pass: no longer previews
    assert w.previews == set() and w.queue.visible_names() == order  # rows did not jump
    w.queue.freeze_order(False)  # the job ended: re-ranked once
    assert w.queue.visible_names() == order[::-1]
    w.queue.select("cell2")
    assert "preview" not in w.canvas.badge.text()


def test_opening_settles_the_class_mapping_and_training_uses_it(make_window, dataset, qtbot, monkeypatch):
    """The class mapping is read from the masks when the data set opens and stored in the
    project; training then loads with it instead of finding it again."""
    import ielstudio.core.dataset as core_dataset

    images, masks = dataset
    cv2.imwrite(str(masks / "cell5.png"), np.full((SIZE, SIZE), 7, np.uint8))  # fits no 0/255 mapping
    w = make_window()
    with qtbot.waitSignal(w.datasetSettled, timeout=20000):
        w.open_folders(*dataset)
    enc = w.project.mask_encoding()
    assert enc is not None and enc.values == (0, 255) and enc.n_classes == 2
    assert w.project.image("cell5").status == "skipped"  # settled: refused at once, not at training
    assert "most masks in this dataset" in w.project.image("cell5").skip_reason
    assert w.queue.model.get("cell5").status == "skipped"
    found = []
    real = core_dataset.unify_encodings
    monkeypatch.setattr(core_dataset, "unify_encodings", lambda items: found.append(1) or real(items))
    with qtbot.waitSignal(w.trainingFinished, timeout=60000) as blocker:
        assert w.start_training(steps=2, snapshot_every=2)
    assert blocker.args[0].steps == 2 and found == []  # training loaded with the settled mapping
    assert w.dataset_info.encoding == enc and "cell5" not in w.dataset_info.names


def test_a_model_trained_elsewhere_reviews_the_data_set_without_training(make_window, dataset, qtbot, tmp_path):
    """A model from `ielstudio train` or a cluster (docs/cluster.md): Training > Review with a
    saved model… scores and proposes with it, and the project keeps it as its model."""
    from ielstudio.core.cleaning import TrainDone, train_dataset
    from ielstudio.core.models import build_model
    from ielstudio.core.training import TrainConfig, save_checkpoint

    model_path = tmp_path / "cluster.pt"
    config = TrainConfig(width=8, depth=2, batch_size=2, crop=32, epochs=1, folds=2, device="cpu")
    assert isinstance(list(train_dataset(*dataset, config, model_path))[-1], TrainDone)
    w = make_window()
    w.open_folders(*dataset)
    assert w.actions["review_model"].text() == "Review with a saved model…"
    with qtbot.waitSignal(w.trainingFinished, timeout=60000):
        assert w.review_with_model(model_path)
    assert set(w.proposals) == {f"cell{i}" for i in range(N_IMAGES)}
    assert w.project.checkpoint.path == model_path.resolve()
    assert "cluster.pt, trained elsewhere" in w.training_panel.status.text()
    path = w.project.path
    w.close()
    w2 = make_window()
    assert w2.open_project(path) and not w2.is_training()  # its proposals are stored
    assert set(w2.proposals) == {f"cell{i}" for i in range(N_IMAGES)}
    # a model for other data is refused with the reason, not run
    other = tmp_path / "three-classes.pt"
    save_checkpoint(other, build_model("unet", 1, 3, width=4, depth=2), TrainConfig())
    with qtbot.waitSignal(w2.trainingFinished, timeout=60000) as blocker:
        assert w2.review_with_model(other)
    assert blocker.args == [None]
    assert "was trained for 3 classes of 1-channel images; this data set has 2 classes" in w2.last_error
    assert w2.project.checkpoint.path == model_path.resolve()  # still the model that made the proposals


def test_the_scoring_bar_estimates_from_the_images_scored_in_this_pass(make_window, monkeypatch):
    """The first chunk starts the clock (no ETA yet); later chunks: seconds per image so far
    times the images left."""
    from ielstudio.gui import window_training
    from ielstudio.gui.job_protocol import Reviews

    w = make_window()
    shown = []
    monkeypatch.setattr(w.training_panel, "on_scoring", lambda done, total, eta: shown.append((done, total, eta)))
    clock = iter([100.0, 104.0, 110.0])
    monkeypatch.setattr(window_training, "time", __import__("types").SimpleNamespace(monotonic=lambda: next(clock)))
    w._scoring_started = None
    chunk = {f"cell{i}": None for i in range(2)}
    w._show_scoring_progress(Reviews(None, dict(chunk), done=2, total=10))
    w._show_scoring_progress(Reviews(None, dict(chunk), done=4, total=10))  # 2 images in 4 s
    w._show_scoring_progress(Reviews(None, dict(chunk), done=6, total=10))  # 4 images in 10 s
    assert shown == [(2, 10, None), (4, 10, 12.0), (6, 10, 10.0)]


def test_training_with_folds_scores_every_image_out_of_sample(make_window, dataset, qtbot):
    """The form's Folds = 2 trains two models, as `clean --folds 2` does: every image is
    scored by the one that never saw its label, and the saved model holds both."""
    from ielstudio.core.training import CrossFitModel, load_checkpoint

    w = make_window()
    w.open_folders(*dataset)
    w.training_panel.folds.setValue(2)
    reviews = []
    w.reviewsApplied.connect(reviews.append)
    with qtbot.waitSignal(w.trainingFinished, timeout=90000):
        assert w.start_training(steps=3, snapshot_every=1000)
    assert w.project.settings()["train_config"]["folds"] == 2
    final = [r for r in reviews if r.step is None]
    assert sum(len(r.items) for r in final) == N_IMAGES
    model, _, meta = load_checkpoint(w.project.checkpoint.path)
    assert isinstance(model, CrossFitModel) and len(model.models) == 2
    assert set(model.fold_of) == {f"cell{i}" for i in range(N_IMAGES)}
    # the queue's score tooltip says what the score is and which model gave it, from the project
    from ielstudio.gui.queue_model import COL_SCORE

    row = w.project.image("cell0")
    assert row.score_parts["out_of_sample"] is True and row.score_parts["model"] >= row.score - 1e-6
    w._reload_queue()  # as a reopened project fills the queue
    tip = w.queue.model.data(w.queue.model.index(w.queue.model.row_of("cell0"), COL_SCORE),
                             Qt.ItemDataRole.ToolTipRole)
    assert f"score {row.score:.3f}" in tip and "a model that never trained on this mask" in tip


def test_a_narrow_saved_layout_still_shows_the_queue_scores(make_window, dataset, qtbot):
    """A splitter state saved on a small screen must not squeeze the queue to names only."""
    from ielstudio.gui.main_window import QUEUE_MIN_WIDTH
    from ielstudio.gui.queue_model import COL_SCORE

    w = make_window()
    w.resize(1200, 800)
    w.show()
    assert w.open_folders(*dataset)
    w.top_split.setSizes([20, 1000, 180])
    qtbot.waitUntil(lambda: w.top_split.sizes()[0] > 0, timeout=2000)
    assert w.top_split.sizes()[0] >= QUEUE_MIN_WIDTH and w.queue.width() >= QUEUE_MIN_WIDTH
    header = w.queue.table.horizontalHeader()
    assert header.sectionPosition(COL_SCORE) + header.sectionSize(COL_SCORE) <= w.queue.table.viewport().width()
    # on a wide screen the name column takes what the other columns leave: no gap, no scrolling
    w.resize(1900, 900)
    w.top_split.setSizes([460, 1000, 380])
    qtbot.waitUntil(lambda: w.queue.table.viewport().width() > 400, timeout=2000)
    qtbot.waitUntil(lambda: header.length() == w.queue.table.viewport().width(), timeout=2000)


def test_a_short_window_scrolls_the_defect_maps_instead_of_squeezing_them(make_window, dataset, qtbot):
    """In a short window (a 768 px laptop screen) the maps keep `MAPS_MIN_HEIGHT` and their
    column scrolls; the window's own minimum height does not grow for them."""
    from ielstudio.gui.iel_panel import MAPS_MIN_HEIGHT

    w = make_window()
    assert w.minimumSizeHint().height() < 600
    w.resize(1290, 600)
    w.show()
    qtbot.waitExposed(w)
    assert w.open_folders(*dataset)
    qtbot.waitUntil(lambda: w.iel_panel.given_maps is not None, timeout=20000)
    w.top_split.setSizes([400, 900, 40])  # a saved layout that squeezes the maps' column
    qtbot.wait(50)
    assert w.height() <= 620 and w.iel_panel.plots.height() >= MAPS_MIN_HEIGHT
    assert w.iel_scroll.verticalScrollBar().maximum() > 0  # the rest of the panel is a scroll away
    assert w.iel_scroll.horizontalScrollBar().maximum() == 0  # but never sideways: the column keeps its width
    assert w.iel_scroll.viewport().width() >= w.iel_panel.minimumSizeHint().width()
    assert all(b.height() > 75 for b in w.iel_panel.boxes), [b.height() for b in w.iel_panel.boxes]


def test_the_training_message_says_when_flips_were_left_out(make_window):
    """The window's message reads the same `review.augmentation_note` as the command."""
    from ielstudio.gui.job_protocol import TrainingFinished

    w = make_window()
    side = "no left-right flips (classes 1, 2 always on one side), no turns"
    w._on_done(TrainingFinished(12, "budget", {"augmentation": side, "flips_ruled_out": True, "holdout": []},
                                None, None))
    assert w.training_panel.status.text() == f"Done: 12 steps (budget); augmentation: {side}"
    w._on_done(TrainingFinished(12, "budget", {"augmentation": "flips and turns", "flips_ruled_out": False,
                                               "holdout": []}, None, None))
    assert w.training_panel.status.text() == "Done: 12 steps (budget)"


def test_the_export_dialog_opens_beside_the_images_never_inside_the_bundled_sample(make_window, dataset,
                                                                                   tmp_path, monkeypatch):
    from ielstudio.core.paths import sample_dir

    w = make_window()
    w.open_folders(*dataset)
    assert w.export_start_dir() == str(tmp_path)  # the folder holding images/ and masks/
    w.settings.setValue("last/export_dir", str(dataset[1]))
    assert w.export_start_dir() == str(dataset[1])  # the last export's folder
    w.settings.setValue("last/export_dir", str(tmp_path / "gone"))
    assert w.export_start_dir() == str(tmp_path)  # ...while it exists
    w.settings.remove("last/export_dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    demo = make_window()
    sample = sample_dir("nuclei")
    demo.open_folders(sample / "images", sample / "masks", project_path=tmp_path / "demo.ielproj")
    start = Path(demo.export_start_dir()).resolve()
    assert not start.is_relative_to(sample.resolve().parent)  # not inside the application's resources


def test_saved_model_predictions_are_the_models_own_cached_and_none_without_a_model(tmp_path):
    from ielstudio.core.models import build_model
    from ielstudio.core.training import TrainConfig, load_checkpoint, predict, save_checkpoint
    from ielstudio.gui.saved_predictions import CACHED_IMAGES, SavedModelPredictions

    config = TrainConfig(width=8, depth=2)
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("unet", 1, 2, width=8, depth=2), config)
    image = np.random.default_rng(0).random((1, 24, 24)).astype(np.float32)
    saved = SavedModelPredictions(path)
    probs = saved.request("a", image)()
    np.testing.assert_allclose(probs, predict(load_checkpoint(path)[0], image), atol=1e-6)
    assert saved.request("a", image)() is probs  # the shown image again: cached
    for i in range(CACHED_IMAGES):
        saved.request(f"b{i}", image)()
    assert saved.request("a", image)() is not probs  # fell out of the cache: computed again
    assert SavedModelPredictions(tmp_path / "gone.pt").request("a", image)() is None
