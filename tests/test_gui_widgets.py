"""The window's parts on their own: canvas overlays and tools, queue model, IEL panel,
training form (checked against the config dataclasses), help dialogs, a 5,000-pair queue."""

import dataclasses
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from ielstudio.gui.canvas import Canvas  # noqa: E402
from ielstudio.gui.overlays import (ADDED_COLOR, RELABELLED_COLOR, REMOVED_COLOR, class_lut,  # noqa: E402
                                    difference_lut, difference_map)
from ielstudio.gui.queue_model import QueueRow  # noqa: E402
from ielstudio.gui.review_queue import ReviewQueue  # noqa: E402


# ----------------------------------------------------------------------------- canvas

def test_difference_map_marks_added_and_removed_pixels():
    given = np.zeros((4, 5), np.int64)
    given[0, :3] = 1
    prop = np.zeros((4, 5), np.int64)
    prop[0, 1:4] = 1
    prop[3, 0] = 2
    d = difference_map(given, prop)
    assert d.tolist() == [[2, 0, 0, 1, 0], [0] * 5, [0] * 5, [1, 0, 0, 0, 0]]
    assert tuple(difference_lut()[1, :3]) == ADDED_COLOR and tuple(difference_lut()[2, :3]) == REMOVED_COLOR
    three = np.array([[1, 2, 0, 2]])  # a class change is shown as such, not as added + removed
    assert difference_map(three, np.array([[2, 2, 1, 0]])).tolist() == [[3, 0, 1, 2]]
    assert tuple(difference_lut()[3, :3]) == RELABELLED_COLOR
    lut = class_lut()
    assert lut[0, 3] == 0 and lut[1, 3] == 255  # background transparent, classes opaque


def test_outline_keeps_the_border_pixels_of_each_region():
    from ielstudio.gui.canvas import outline

    m = np.zeros((6, 6), np.int64)
    m[1:5, 1:5] = 1
    m[2:4, 3:5] = 2
    o = outline(m)
    assert o[1, 1:5].tolist() == [1, 1, 1, 1] and o[2, 2] == 1 and o[2, 1] == 1
    assert o[2, 3] == 2 and o[3, 4] == 2 and o[0].max() == 0
    assert int((o == 1).sum()) == 12 and int((o == 2).sum()) == 4  # the 2x2 block is all border
    full = np.ones((3, 3), np.int64)
    assert outline(full).tolist() == [[1, 1, 1], [1, 0, 1], [1, 1, 1]]  # the image edge bounds it


def test_canvas_layers_toggles_and_opacity(qtbot):
    c = Canvas()
    qtbot.addWidget(c)
    img = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(1, 30, 40)
    c.set_image(img)
    assert c.image_item.image.shape == (30, 40)
    assert tuple(c.image_item.levels) == (0.0, 1.0)  # fixed levels: panning never recomputes them
    given = np.zeros((30, 40), np.int64)
    given[5:10, 5:10] = 1
    prop = np.zeros((30, 40), np.int64)
    prop[5:10, 7:12] = 1
    c.set_mask(given)
    c.set_proposal(prop, given)
    d = c.layer_data("difference")
    assert int((d == 1).sum()) == 10 and int((d == 2).sum()) == 10
    c.set_overlay_visible("difference", False)
    assert not c.items["difference"].isVisible() and not c.checks["difference"].isChecked()
    c.checks["proposal"].setChecked(True)
    assert c.overlay_visible("proposal")
    c.sliders["mask"].setValue(20)
    assert c.overlay_opacity("mask") == pytest.approx(0.2)
    c.set_overlay_opacity("proposal", 0.7)
    assert c.sliders["proposal"].value() == 70
    # a new image clears the overlays of the previous one
    c.set_image(img)
    assert c.layer_data("mask") is None


def test_a_legend_of_many_long_class_names_wraps_between_entries_and_shows_names_as_written(qtbot):
    """Seven named brain classes must not widen the canvas's column (the walk: the review
    queue was squeezed to '...'); a name from a user's dataset.json is text, not HTML."""
    c = Canvas()
    qtbot.addWidget(c)
    short = c.legend.minimumSizeHint().width()
    names = ["background"] + [f"{k} {t} ({side})" for side in ("right", "left")
                              for k, t in ((1, "cerebrospinal fluid"), (2, "grey matter"), (3, "white matter"))]
    names.append("7 <b>tumour</b> & core")
    c.set_class_names(names)
    assert c.legend.minimumSizeHint().width() < max(short, 300)  # wraps: no wider than its longest entry or so
    text = c.legend.plain_text()
    assert "1 cerebrospinal fluid (right)" in text and "7 <b>tumour</b> & core" in text
    c.legend.resize(300, 200)
    assert c.legend.heightForWidth(300) > c.legend.heightForWidth(3000)  # more lines when narrow


def test_brush_stroke_footprint_is_a_thick_line(qtbot):
    c = Canvas()
    qtbot.addWidget(c)
    c.set_image(np.zeros((1, 50, 50), np.float32))
    got = []
    c.strokeFinished.connect(lambda fp, v: got.append((fp, v)))
    c.set_brush_radius(3)
    c.brush_class = 2
    c.paint_stroke([(10, 10), (10, 30)], tool="brush")
    fp, value = got[-1]
    assert value == 2 and fp.dtype == bool
    expected = np.zeros((50, 50), np.uint8)
    cv2.line(expected, (10, 10), (30, 10), 1, 7)
    cv2.circle(expected, (10, 10), 3, 1, -1)
    cv2.circle(expected, (30, 10), 3, 1, -1)
    np.testing.assert_array_equal(fp, expected.astype(bool))
    c.paint_stroke([(40, 40)], tool="eraser")
    assert got[-1][1] == 0 and int(got[-1][0].sum()) == 29  # disk of radius 3
    assert c.stroke_item.image is None  # the preview is cleared after the stroke


def test_object_click_reports_pixel(qtbot):
    c = Canvas()
    qtbot.addWidget(c)
    c.set_image(np.zeros((1, 20, 20), np.float32))
    got = []
    c.objectClicked.connect(lambda r, col: got.append((r, col)))
    from PySide6.QtCore import QPointF

    c._object_click(QPointF(7.6, 3.2))
    c._object_click(QPointF(25, 3))  # outside the image: ignored
    assert got == [(3, 7)]


# ----------------------------------------------------------------------------- queue

def test_queue_sorts_unscored_last_and_keeps_skipped_reason(qtbot):
    q = ReviewQueue()
    qtbot.addWidget(q)
    q.model.set_rows([QueueRow("a", score=0.5), QueueRow("b"), QueueRow("c", score=0.1),
                      QueueRow("bad.png", status="skipped", reason="mask is 10x10 px but image is 20x20 px")])
    assert q.visible_names()[:2] == ["c", "a"]
    q.model.update("b", score=0.05)
    assert q.visible_names()[0] == "b"  # re-sorted live when scores change
    i = q.model.row_of("bad.png")
    tip = q.model.data(q.model.index(i, 1), Qt.ItemDataRole.ToolTipRole)
    assert "10x10" in tip
    assert "1 skipped" in q.summary.text()
    q.select("a")
    assert q.current_name() == "a"
    assert q.step(1) == q.visible_names()[q.visible_names().index("a") + 1]


def test_queue_scores_too_small_for_three_decimals_read_as_below_a_thousandth(qtbot):
    from ielstudio.gui.queue_model import COL_SCORE

    q = ReviewQueue()
    qtbot.addWidget(q)
    q.model.set_rows([QueueRow("tiny", score=0.0002), QueueRow("tinier", score=0.00001),
                      QueueRow("zero", score=0.0), QueueRow("half", score=0.0005)])
    shown = {name: q.model.data(q.model.index(q.model.row_of(name), COL_SCORE)) for name in q.visible_names()}
    assert shown == {"tiny": "<0.001", "tinier": "<0.001", "zero": "0.000", "half": "0.001"}
    assert q.visible_names() == ["zero", "tinier", "tiny", "half"]  # still ordered by the full value


def test_queue_of_5000_pairs_opens_fast(qtbot, tmp_path):
    from ielstudio.gui.main_window import MainWindow

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    ok, png = cv2.imencode(".png", np.full((16, 16), 128, np.uint8))
    ok, mpng = cv2.imencode(".png", np.zeros((16, 16), np.uint8))
    for i in range(5000):
        (images / f"im{i:05d}.png").write_bytes(png.tobytes())
        (masks / f"im{i:05d}.png").write_bytes(mpng.tobytes())
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), data_dir=tmp_path / "d")
    qtbot.addWidget(w)
    t0 = time.perf_counter()
    assert w.open_folders(images, masks)
    elapsed = time.perf_counter() - t0
    assert len(w.queue.model.rows) == 5000 and w.project.count() == 5000
    assert len(w._samples) <= 4  # only the shown image (and neighbours, in the background) is read
    assert elapsed < 10.0, elapsed  # names only: typically well under a second
    w.close()


# ----------------------------------------------------------------------------- IEL panel

def test_display_scale_is_log_from_a_hundredth_of_the_maximum():
    from ielstudio.gui.iel_panel import display_scale

    v = display_scale(np.array([0.0, 0.02, 0.2, 2.0, 5.0], np.float32), 2.0)
    np.testing.assert_allclose(v, [0.0, np.log(2) / np.log(101), np.log(11) / np.log(101), 1.0, 1.0], rtol=1e-6)
    assert display_scale(np.zeros(3, np.float32), 0.0).tolist() == [0.0, 0.0, 0.0]  # an all-zero map


def test_iel_panel_shows_defect_maps_and_steps(qtbot):
    from ielstudio.core.iel import IELConfig, defect_maps, one_hot
    from ielstudio.gui.iel_panel import IELPanel, display_scale

    p = IELPanel()
    qtbot.addWidget(p)
    mask = np.zeros((24, 24), np.int64)
    mask[6:18, 6:18] = 1
    mask[3, 3] = 1  # a speck: strongly amplified
    cfg = IELConfig(heat_steps=6)
    probs = np.stack([1.0 - 0.8 * mask, 0.8 * mask]).astype(np.float32)
    with qtbot.waitSignal(p.updated, timeout=20000):
        p.request(mask, probs, 2, cfg)
    ref = defect_maps(one_hot(mask, 2), cfg)
    top = float(ref.steps.max())
    assert p.slider.maximum() == ref.steps.shape[0] - 1 and p.slider.value() == p.slider.maximum()
    np.testing.assert_allclose(p.heat_items[0].image, display_scale(ref.steps[-1], top), rtol=1e-6)
    assert p.heat_items[1].image is not None
    assert p.titles[0].text == f"Given mask (max {top:.3g})"
    p.slider.setValue(0)
    assert float(np.abs(p.heat_items[0].image).max()) == 0.0  # k = 0: nothing amplified yet
    assert p.step_label.text() == "k = 0"
    p.slider.setValue(1)  # the first step is far below the maximum, and still visible
    assert float(ref.steps[1].max()) / top < 0.5 and float(p.heat_items[0].image.max()) > 0.5
    p.slider.setValue(3)
    np.testing.assert_allclose(p.heat_items[0].image, display_scale(ref.steps[3], top), rtol=1e-6)
    ticks = p.colour_bar.getAxis("bottom")._tickLevels[0]
    assert [label for _, label in ticks] == ["0", "0.01", "0.1", "1"]
    # with a convex class the curve-motion region is drawn over the maps
    convex = IELConfig(heat_steps=2, convex_classes=(1,), convex_steps=3)
    blob = np.zeros((32, 32), np.int64)
    blob[8:24, 8:24] = 1
    blob[8:16, 14:18] = 0  # a notch: a concavity
    with qtbot.waitSignal(p.updated, timeout=20000):
        p.request(blob, None, 2, convex)
    ref = defect_maps(one_hot(blob, 2), convex)
    assert ref.convex_region.any()
    np.testing.assert_array_equal(p.region_items[0].image, ref.convex_region.astype(np.uint8))
    assert p.heat_items[1].image is None  # no prediction yet


# ----------------------------------------------------------------------------- training form

def test_training_form_fields_match_config_dataclasses(qtbot):
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.training import TrainConfig
    from ielstudio.gui.training_panel import IEL_FIELDS, TRAIN_FIELDS, TrainingPanel, parse_classes

    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    iel_names = {f.name for f in dataclasses.fields(IELConfig)}
    assert set(TRAIN_FIELDS) <= train_names and set(IEL_FIELDS) <= iel_names
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    # the form starts from the dataclass defaults
    default = TrainConfig()
    assert panel.config() == default
    panel.heat_dt.setValue(0.05)
    panel.heat_steps.setValue(7)
    panel.convex_classes.setText("1, 2")
    panel.max_steps.setValue(40)
    panel.epochs.setValue(3)
    assert panel.folds.text() == "1 (hold-out)"
    panel.folds.setValue(3)
    panel.slice_context.setValue(1)
    cfg = panel.config(TrainConfig(width=8))
    assert cfg.width == 8 and cfg.max_steps == 40 and cfg.epochs == 3 and cfg.folds == 3 and cfg.slice_context == 1
    assert cfg.iel.heat_dt == pytest.approx(0.05) and cfg.iel.heat_steps == 7 and cfg.iel.convex_classes == (1, 2)
    # round trip: a config shown in the form reads back the same
    panel2 = TrainingPanel()
    qtbot.addWidget(panel2)
    panel2.set_from_config(cfg)
    assert panel2.config(TrainConfig(width=8)) == cfg
    with pytest.raises(ValueError):
        parse_classes("0")
    # fine-tuning: the checkpoint path goes to TrainConfig.init_checkpoint, only when chosen
    panel.checkpoint_edit.setText("/models/previous.pt")
    assert panel.config().init_checkpoint is None
    panel.finetune_radio.setChecked(True)
    assert panel.config().init_checkpoint == "/models/previous.pt"
    panel.set_running(True)
    assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled() and not panel.arch.isEnabled()
    assert "params" in panel.params_label.text()


def test_step_event_updates_progress_eta_and_curve(qtbot):
    from ielstudio.core.training import EvalEvent, StepEvent
    from ielstudio.gui.training_panel import TrainingPanel, format_eta

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.on_step(StepEvent(step=30, total_steps=120, epoch=2, loss=0.5, lr=1e-3, eta_s=75.0))
    panel.on_step(StepEvent(step=40, total_steps=120, epoch=257, loss=0.4, lr=1e-3, eta_s=65.0))
    panel.on_eval(EvalEvent(step=40, agreement=0.8))
    assert panel.progress.maximum() == 120 and panel.progress.value() == 40
    assert "ETA 1 min 05 s" in panel.progress.format() and "scoring" in panel.progress.toolTip()
    assert "257" not in panel.status.text() and "epoch" not in panel.status.text()
    panel.set_running(True, paused=True)
    assert panel.progress.format() == "paused at step 40/120" and panel.pause_button.text() == "Resume"
    panel.set_message("Paused (the current step finishes first)")
    # the step in flight when Pause was pressed reports after it: the bar still says paused
    panel.on_step(StepEvent(step=41, total_steps=120, epoch=2, loss=0.3, lr=1e-3, eta_s=60.0))
    assert panel.progress.format() == "paused at step 41/120" and panel.progress.value() == 41
    assert panel.status.text() == "Paused after step 41; Resume goes on from there"
    panel.set_running(True, paused=False)
    assert panel.progress.format() == "step 41/120 · ETA 1 min 00 s"
    panel.on_step(StepEvent(step=3, total_steps=9, epoch=1, loss=0.4, lr=1e-3, eta_s=5.0, fold=1, n_folds=3))
    assert panel.progress.format().startswith("fold 2/3 · step 3/9")
    panel.on_step(StepEvent(step=40, total_steps=120, epoch=2, loss=0.4, lr=1e-3, eta_s=65.0))
    x, y = panel.loss_curve.getData()
    assert list(x[:3]) == [30, 40, 41] and list(y[:3]) == pytest.approx([0.5, 0.4, 0.3])
    panel.finish_progress("done")  # stopped early at step 40 of 120: finished, a full bar
    assert panel.progress.value() == panel.progress.maximum() == 120 and panel.progress.format() == "done"
    assert list(panel.agree_curve.getData()[1]) == pytest.approx([0.8])
    panel.on_scoring(12, 40, 30.0)  # the scoring pass: a bar of its own
    assert (panel.progress.value(), panel.progress.maximum()) == (12, 40)
    assert panel.progress.format() == "scoring 12/40 · ETA 30 s"
    assert format_eta(3725) == "1 h 02 min" and format_eta(None) == "–"


# ----------------------------------------------------------------------------- dialogs and window

def test_shortcuts_dialog_lists_every_window_shortcut(qtbot, tmp_path):
    from ielstudio.gui.dialogs import SHORTCUTS, ShortcutsDialog, about_html
    from ielstudio.gui.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), data_dir=tmp_path)
    qtbot.addWidget(w)
    d = ShortcutsDialog()
    qtbot.addWidget(d)
    listed = {d.table.item(i, 0).text() for i in range(d.table.rowCount())}
    for key, action in w.actions.items():
        for seq in action.shortcuts():
            text = seq.toString()
            assert any(text in row.split("  or  ") for row in listed), (key, text)
    assert len(SHORTCUTS) == d.table.rowCount()
    html = about_html()
    for needle in ("MIT", "2307.07344", "1804.04272", "Schönlieb", "PDE-based Group Equivariant", "SIAM"):
        assert needle in html


def test_window_remembers_geometry_and_form(qtbot, tmp_path):
    from ielstudio.gui.main_window import MainWindow

    ini = str(tmp_path / "s.ini")
    w = MainWindow(settings=QSettings(ini, QSettings.Format.IniFormat), data_dir=tmp_path)
    qtbot.addWidget(w)
    w.resize(640, 470)  # inside the offscreen screen (800x600)
    w.training_panel.heat_steps.setValue(9)
    w.canvas.set_overlay_opacity("mask", 0.3)
    w.canvas.set_brush_radius(11)
    w.close()
    w2 = MainWindow(settings=QSettings(ini, QSettings.Format.IniFormat), data_dir=tmp_path)
    qtbot.addWidget(w2)
    assert (w2.width(), w2.height()) == (640, 470)
    assert w2.training_panel.heat_steps.value() == 9
    assert w2.canvas.overlay_opacity("mask") == pytest.approx(0.3)
    assert w2.canvas.brush_radius == 11


def test_drop_of_a_folder_with_images_and_masks_opens_it(qtbot, tmp_path):
    from ielstudio.gui.main_window import MainWindow

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.full((12, 12), 90, np.uint8))
    cv2.imwrite(str(root / "masks" / "a.png"), np.zeros((12, 12), np.uint8))
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), data_dir=tmp_path)
    qtbot.addWidget(w)
    assert w.open_dropped([root])
    assert [r.name for r in w.queue.model.rows] == ["a"]
    w.close()


def test_pan_and_zoom_on_a_2048_px_image_never_recompose_the_layers(qtbot, monkeypatch):
    import pyqtgraph as pg

    c = Canvas()
    qtbot.addWidget(c)
    c.resize(800, 700)
    c.show()
    qtbot.waitExposed(c)
    rng = np.random.default_rng(0)
    img = rng.random((1, 2048, 2048), dtype=np.float32)
    given = (rng.random((2048, 2048)) > 0.5).astype(np.int64)
    prop = (rng.random((2048, 2048)) > 0.5).astype(np.int64)
    c.set_image(img)
    c.set_mask(given)
    c.set_proposal(prop, given)
    c.set_overlay_visible("proposal", True)
    c.view_widget.grab()  # first paint: each layer rendered once through its LUT
    renders = []
    real = pg.ImageItem.render
    monkeypatch.setattr(pg.ImageItem, "render", lambda self, *a, **k: (renders.append(self), real(self, *a, **k))[1])
    t0 = time.perf_counter()
    for i in range(20):
        c.viewbox.scaleBy((0.9, 0.9) if i % 2 else (1.1, 1.1))
        c.viewbox.translateBy((37, -21))
        c.view_widget.grab()
    per_frame = (time.perf_counter() - t0) / 20
    assert renders == []  # no layer was recomposed while panning and zooming
    assert per_frame < 0.5, per_frame  # typically a few ms per repaint
    # changing an overlay's opacity re-renders nothing either (a transform on the item)
    c.set_overlay_opacity("difference", 0.3)
    c.view_widget.grab()
    assert renders == []
    c.set_mask(prop)  # new data does go through the LUT again (the probe works)
    c.view_widget.grab()
    assert renders == [c.items["mask"]]


def test_the_window_cleans_with_the_settings_the_command_uses(qtbot, tmp_path):
    """The form's clean settings equal `ielstudio clean`'s for the same choices: convex
    classes shape training only; objects become hulls only when asked (--convex-hull)."""
    from ielstudio.cli import build_parser, configs_from_args
    from ielstudio.gui.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), data_dir=tmp_path)
    qtbot.addWidget(w)

    def command(*flags):
        return configs_from_args(build_parser().parse_args(["clean", "i", "m", "--out", "o", *flags]))

    assert w.clean_config() == command()[1]
    w.training_panel.convex_classes.setText("2")
    assert w.clean_config() == command("--iel", "heat,convex", "--convex-classes", "2")[1]
    assert w.clean_config().convex_hull_classes == ()
    w.training_panel.convex_hull.setChecked(True)
    assert w.clean_config() == command("--convex-hull", "--convex-classes", "2")[1]
    assert w.clean_config().convex_hull_classes == (2,)
    w.close()


def test_every_value_the_training_form_allows_is_a_valid_config(qtbot):
    """The form's ranges are checked against the dataclasses' own validation: the ends of
    every spin box give a TrainConfig (or IELConfig) the engine accepts."""
    from ielstudio.gui.training_panel import TrainingPanel

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    for spin in (panel.heat_dt, panel.heat_steps, panel.convex_dt, panel.convex_steps, panel.max_steps, panel.epochs):
        start = spin.value()
        for value in (spin.minimum(), spin.maximum()):
            spin.setValue(value)
            panel.config()  # raises ValueError for a value the engine refuses
        spin.setValue(start)


def test_view_controls_fit_zoom_and_window_level(qtbot):
    """Fit shows the whole image, 100 % is one image pixel per screen pixel, the zoom stays
    for the next image of the same size, and window/level set the image's levels."""
    from ielstudio.gui.view_controls import auto_levels

    c = Canvas()
    qtbot.addWidget(c)
    c.resize(700, 600)
    c.show()
    qtbot.waitExposed(c)
    v = c.view_controls
    image = np.linspace(0, 1, 64 * 80, dtype=np.float32).reshape(64, 80)
    c.set_image(image)
    c.viewbox.scaleBy((0.25, 0.25))  # zoom in
    zoomed = v.zoom_percent()
    c.set_image(image[::-1].copy(), reset_view=False)  # the next image, same size: the zoom stays
    assert v.zoom_percent() == pytest.approx(zoomed)
    v.actual_size()
    assert v.zoom_percent() == pytest.approx(100, rel=0.02) and v.zoom_label.text() in ("99 %", "100 %", "101 %")
    c.set_image(np.zeros((20, 30), np.float32), reset_view=False)  # another size: refit
    rect = c.viewbox.viewRect()
    assert rect.width() >= 30 and rect.height() >= 20  # all of it shows ...
    assert rect.width() <= 30 * 1.1 or rect.height() <= 20 * 1.1  # ... fitted tightly in one direction
    # contrast: full range by default, auto from percentiles, window/level by hand
    c.set_image(image)
    assert tuple(c.image_item.levels) == (0.0, 1.0)
    v.set_mode("auto")
    lo, hi = c.image_item.levels
    assert (lo, hi) == pytest.approx(auto_levels(image)) and lo == pytest.approx(0.01, abs=1e-3)
    v.window.setValue(0.2)
    v.level.setValue(0.3)
    assert v.mode.currentData() == "manual" and tuple(c.image_item.levels) == pytest.approx((0.2, 0.4))
    c.set_image(image[::-1].copy(), reset_view=False)  # kept for the next image
    assert tuple(c.image_item.levels) == pytest.approx((0.2, 0.4))
    assert auto_levels(np.full((4, 4), 0.3)) == pytest.approx((-0.2, 0.8))  # a flat image still shows


def panel_showing_maps(qtbot, size: tuple[int, int], no_prediction: tuple[str, str] | None = None):
    """(an IEL panel shown at ``size`` with the maps of a 40 px mask and no prediction, the mask)."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.gui.iel_panel import IELPanel

    p = IELPanel()
    qtbot.addWidget(p)
    if no_prediction is not None:
        p.set_no_prediction(*no_prediction)
    p.resize(*size)
    p.show()
    qtbot.waitExposed(p)
    mask = np.zeros((40, 40), np.int64)
    mask[10:30, 8:32] = 1
    with qtbot.waitSignal(p.updated, timeout=20000):
        p.request(mask, None, 2, IELConfig(heat_steps=4))
    return p, mask


def test_iel_maps_fill_their_boxes_after_the_panel_grows(qtbot):
    """Maps first shown while the panel is squeezed (a short window) still fill their boxes
    once it grows: under Xvfb the maps of a 1,290 x 690 px window stayed specks after the
    window was enlarged (the two linked boxes turned pyqtgraph's auto-range off). Until
    the user zooms: then the maps stay as the user put them."""
    p, _ = panel_showing_maps(qtbot, (170, 260))
    p.resize(340, 900)
    qtbot.waitUntil(lambda: p.boxes[0].height() > 150, timeout=5000)
    qtbot.wait(50)

    def fitted(box) -> bool:  # the image's 40 px fill the box's tighter side, with a little padding
        (x0, x1), (y0, y1) = box.viewRange()
        return min(x1 - x0, y1 - y0) < 40 * 1.2 and x0 <= 0 and y0 <= 0 and x1 >= 40 and y1 >= 40

    assert all(fitted(b) for b in p.boxes), [b.viewRange() for b in p.boxes]
    p.boxes[0].scaleBy((4, 4))  # as a wheel zoom does, then a manual-range signal
    p.boxes[0].sigRangeChangedManually.emit([True, True])
    p.resize(340, 600)
    qtbot.waitUntil(lambda: p.boxes[0].height() < 300, timeout=5000)
    assert not fitted(p.boxes[0])  # the user's zoom is kept


def test_the_maps_keep_their_height_and_the_info_one_short_line(qtbot):
    """In a short window the maps kept about 30 px each, under an info text of five lines
    (stop 33, Xvfb at 1,290 x 690 px): the maps now keep `MAPS_MIN_HEIGHT` and the hint
    on where prediction maps come from is the info line's tooltip."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.gui.iel_panel import MAPS_MIN_HEIGHT, NO_PREDICTION_STORED

    p, mask = panel_showing_maps(qtbot, (300, 200), NO_PREDICTION_STORED)  # shorter than the maps need
    assert p.plots.height() >= MAPS_MIN_HEIGHT and p.minimumSizeHint().height() > MAPS_MIN_HEIGHT
    assert all(b.height() > 75 for b in p.boxes), [b.height() for b in p.boxes]
    assert p.info.text().endswith("no prediction maps") and "Score again" in p.info.toolTip()
    assert p.titles[1].text == "Prediction: Training > Score again"  # the empty box says where its maps come from
    with qtbot.waitSignal(p.updated, timeout=20000):
        p.request(mask, np.stack([1.0 - mask, mask]).astype(np.float32), 2, IELConfig(heat_steps=4))
    assert "prediction:" in p.info.text() and p.info.toolTip() == ""
    assert p.titles[1].text.startswith("Prediction (max ")


def test_ortho_planes_fill_their_boxes_after_the_views_grow(qtbot):
    """The same for the orthogonal views, which set their range on every new plane size:
    planes first shown before the views are laid out fill their boxes once they are
    (they did before the IEL panel's fix too; kept so that it stays so)."""
    from ielstudio.core.ortho_planes import OrthoPlane
    from ielstudio.core.volume_review import Orientation
    from ielstudio.gui.ortho_views import OrthoViews

    v = OrthoViews()
    qtbot.addWidget(v)
    planes = [OrthoPlane(axis, 5, "", Orientation(), np.random.default_rng(axis).random((30, 40), np.float32),
                         np.zeros((30, 40), np.int64), (1.0, 1.0), (10, 12), ("row", 10), (30, 30, 40))
              for axis in (1, 2)]
    v.show_planes(planes)
    v.resize(300, 900)
    v.show()
    qtbot.waitExposed(v)
    qtbot.waitUntil(lambda: v.boxes[0].height() > 100, timeout=5000)
    qtbot.wait(50)
    for box in v.boxes:
        (x0, x1), (y0, y1) = box.viewRange()
        assert x1 - x0 < 40 * 1.2 or y1 - y0 < 30 * 1.2, box.viewRange()
        assert x0 <= 0.5 and x1 >= 39.5 and y0 <= 0.5 and y1 >= 29.5  # and the whole plane is in view


def test_the_colour_bar_says_what_it_shows_within_a_narrow_column(qtbot):
    """Its label was clipped in a 160 px column (stop 34, Xvfb); the full meaning is its tooltip."""
    from ielstudio.gui.iel_panel import BAR_TOOLTIP

    p, _ = panel_showing_maps(qtbot, (200, 520))
    axis = p.colour_bar.getAxis("bottom")
    qtbot.waitUntil(lambda: p.colour_bar.boundingRect().width() > 0, timeout=2000)
    assert axis.label.boundingRect().width() <= p.colour_bar.boundingRect().width()
    assert p.colour_bar.toolTip() == BAR_TOOLTIP and "log scale" in BAR_TOOLTIP


def test_names_get_their_width_back_when_a_status_shrinks_again(qtbot):
    """'kept original' widens the status column and the names give way; undone, the
    status is 'unreviewed' again and the names had stayed elided (stop 34, Xvfb)."""
    from ielstudio.gui.queue_model import COL_NAME

    q = ReviewQueue()
    qtbot.addWidget(q)
    q.resize(345, 600)
    q.show()
    q.model.set_rows([QueueRow(f"nuclei_{i:02d}", score=0.5 + i / 100, changed=0.1) for i in range(12)])
    header = q.table.horizontalHeader()
    qtbot.waitUntil(lambda: header.length() == q.table.viewport().width(), timeout=2000)
    start = header.sectionSize(COL_NAME)
    q.model.update("nuclei_03", status="kept")
    qtbot.waitUntil(lambda: header.sectionSize(COL_NAME) < start, timeout=2000)
    q.model.update("nuclei_03", status="unreviewed")
    qtbot.waitUntil(lambda: header.sectionSize(COL_NAME) == start, timeout=2000)
    assert header.length() == q.table.viewport().width()
