"""The right panel: what the IEL stack amplifies in the given mask and in the prediction.

Two heat maps (``core.iel.defect_maps(...).steps[k]``) side by side with linked
zoom, the convexity region drawn over them, and a slider over the stack steps
k = 0..K to watch defects grow. The maps are computed in a worker thread (only
the newest request is shown), so a 2048 px mask never blocks the window.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from .canvas_input import ShortcutsPassThrough
from .workers import NewestRequestWorker


def heat_lut() -> np.ndarray:
    return pg.colormap.get("inferno").getLookupTable(0.0, 1.0, 256, alpha=False)


#: The maps are shown on a log scale from this share of a map's maximum up to the maximum,
#: so that the small amplification of the first steps k is visible (linear, k <= 5 looked black);
#: a lower floor lit up the whole diffused map of a noisy mask (seen under Xvfb).
LOG_FLOOR = 1e-2
BAR_TICKS = (0.0, 1e-2, 1e-1, 1.0)


def display_scale(values: np.ndarray, top: float) -> np.ndarray:
    """``values / top`` on a log scale, in [0, 1]: 0 -> 0, ``top`` -> 1, ``LOG_FLOOR * top`` -> 0.15."""
    share = np.clip(np.asarray(values, np.float32) / np.float32(top if top > 0 else 1.0), 0.0, 1.0)
    return (np.log1p(share / LOG_FLOOR) / np.log1p(1.0 / LOG_FLOOR)).astype(np.float32)


def region_lut() -> np.ndarray:
    lut = np.zeros((256, 4), np.uint8)
    lut[1] = (80, 220, 255, 90)
    return lut


def compute_defects(given: np.ndarray, probs: np.ndarray | None, n_classes: int, config, cache: dict | None = None):
    """Defect maps of the given mask (one-hot) and of the prediction (probabilities).

    ``cache``: given-mask maps by (mask content, classes, config); the given mask of an
    image does not change while training refreshes its prediction.
    """
    from ielstudio.core.iel import defect_maps, one_hot

    key = None
    if cache is not None:
        key = (hashlib.sha1(np.ascontiguousarray(given).tobytes()).hexdigest(), given.shape, n_classes, repr(config))
    given_maps = cache.get(key) if cache is not None else None
    if given_maps is None:
        given_maps = defect_maps(one_hot(given, n_classes), config)
        if cache is not None:
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[key] = given_maps
    pred_maps = None if probs is None else defect_maps(np.asarray(probs, np.float32), config)
    return given_maps, pred_maps


def defects_server():
    """A function serving one request of the panel, ``(given, probs, n_classes, config)`` ->
    `compute_defects`, with a cache of the given-mask maps kept between requests. ``probs``
    may be a function that computes them (`saved_predictions`): called here, in the worker."""
    cache: dict = {}
    return lambda given, probs, n_classes, config: compute_defects(
        given, probs() if callable(probs) else probs, n_classes, config, cache)


#: The colour bar's label, short enough for a narrow column, and what it means in full.
BAR_LABEL = "|u_k - u| / map max (log)"
BAR_TOOLTIP = ("Colour: |u_k - u|, how much k IEL steps change the map at that pixel, as a share of the "
               "map's largest change (each map has its own maximum, in its title), on a log scale")
#: The two maps, their titles and the colour bar never get less than this (px): in a
#: short window the column the panel sits in scrolls (`MainWindow.iel_scroll`) instead of
#: the maps shrinking to specks.
MAPS_MIN_HEIGHT = 300


#: (title, hint) of the empty prediction box before any model has scored the image
NO_PREDICTION_YET = ("none yet", "no prediction yet (train a model)")
#: the same for a reopened project: its stored proposals carry no probabilities
NO_PREDICTION_STORED = ("Training > Score again",
                        "prediction maps: Training > Score again with the saved model "
                        "(the project stores proposals, not probabilities)")


#: what to do when a project's model file is gone (the prediction box, Score again)
MODEL_MISSING_ADVICE = "train again, or Training > Review with a saved model to say where it is now"


def no_prediction_model_missing(model: str) -> tuple[str, str]:
    """(title, hint) of the empty prediction box of a reopened project whose model file is gone."""
    return ("model file missing", f"prediction maps need the project's model {model}, which is missing: "
                                  f"{MODEL_MISSING_ADVICE}")


class IELPanel(QWidget):
    """Heat amplification of given mask and prediction, convex region, slider over k."""

    updated = Signal()  # maps for the latest request are shown

    def __init__(self, parent=None):
        super().__init__(parent)
        self.set_no_prediction(*NO_PREDICTION_YET)
        self.given_maps = None
        self.pred_maps = None
        self._maker = NewestRequestWorker(defects_server, parent=self)  # one long-lived thread serves every request
        self._maker.answered.connect(self._on_result)

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground(QColor(30, 30, 30))
        self.plots.setMinimumHeight(MAPS_MIN_HEIGHT)
        self._shortcut_filter = ShortcutsPassThrough(self)
        self.plots.installEventFilter(self._shortcut_filter)
        self.boxes, self.heat_items, self.region_items, self.titles = [], [], [], []
        for i, title in enumerate(("Given mask", "Prediction")):
            label = self.plots.addLabel(title, row=2 * i, col=0, color="#ddd", size="9pt")
            vb = self.plots.addViewBox(row=2 * i + 1, col=0, lockAspect=True, invertY=True, enableMenu=False)
            heat = pg.ImageItem(axisOrder="row-major")
            heat.setLookupTable(heat_lut())
            region = pg.ImageItem(axisOrder="row-major")
            region.setLookupTable(region_lut())
            region.setLevels((0, 255))
            region.setZValue(1)
            vb.addItem(heat)
            vb.addItem(region)
            self.boxes.append(vb)
            self.heat_items.append(heat)
            self.region_items.append(region)
            self.titles.append(label)
        self.boxes[1].setXLink(self.boxes[0])
        self.boxes[1].setYLink(self.boxes[0])
        # the maps fit their boxes, also as the window is laid out or resized, until the user
        # zooms or pans (the linked boxes turn pyqtgraph's own auto-range off on a resize)
        self._fit_maps = True
        for vb in self.boxes:
            vb.sigResized.connect(self._fit)
            vb.sigRangeChangedManually.connect(self._stop_fitting)
        # what the colours mean: one bar, as each map is scaled to its own maximum (in its title)
        self.colour_bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=pg.colormap.get("inferno"), interactive=False,
                                          orientation="horizontal", colorMapMenu=False, width=12,
                                          label=BAR_LABEL)
        self.colour_bar.setToolTip(BAR_TOOLTIP)
        self.colour_bar.getAxis("bottom").setTicks([[(float(display_scale(np.float32(t), 1.0)), f"{t:g}")
                                                     for t in BAR_TICKS]])
        self.plots.addItem(self.colour_bar, row=4, col=0)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setToolTip("IEL step k: amplification after k evolution steps")
        self.slider.valueChanged.connect(self._show_step)
        self.step_label = QLabel("k = 0")
        self.info = QLabel("Amplified defects appear when an image is open.")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("color: gray")

        row = QHBoxLayout()
        row.addWidget(QLabel("Step"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.step_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        title = QLabel("<b>Amplified defects (IEL)</b>")
        layout.addWidget(title)
        layout.addWidget(self.plots, 1)
        layout.addLayout(row)
        layout.addWidget(self.info)

    # --- requests ------------------------------------------------------------------
    def request(self, given: np.ndarray | None, probs, n_classes: int, config) -> None:
        """Compute and show the maps for this mask/prediction (newest request wins); ``probs``:
        an array, None, or a function the worker calls for them."""
        if given is None or config is None:
            self._maker.forget()
            self.clear()
            return
        self._maker.request(given, probs, n_classes, config)

    def busy(self) -> bool:
        return self._maker.busy()

    def stop(self) -> None:
        self._maker.stop()

    def _on_result(self, maps, error) -> None:
        if error is not None:
            self.info.setText(f"IEL maps failed: {error}")
            return
        self.set_maps(*maps)

    # --- display -------------------------------------------------------------------
    def set_no_prediction(self, title: str, hint: str) -> None:
        """What the empty prediction box says (its ``title``, short) and the info line's
        tooltip (``hint``) while the current image has no probabilities."""
        self.no_prediction_title, self.no_prediction_hint = title, hint

    def clear(self) -> None:
        self.given_maps = self.pred_maps = None
        for item in (*self.heat_items, *self.region_items):
            item.clear()
        self.slider.setRange(0, 0)

    def set_maps(self, given_maps, pred_maps) -> None:
        first = self.given_maps is None
        self.given_maps, self.pred_maps = given_maps, pred_maps
        k_max = int(given_maps.steps.shape[0]) - 1
        old = self.slider.value()
        self.slider.blockSignals(True)
        self.slider.setRange(0, k_max)
        self.slider.setValue(k_max if first or old > k_max or old == self.slider.maximum() else old)
        self.slider.blockSignals(False)
        for maps, region in ((given_maps, self.region_items[0]), (pred_maps, self.region_items[1])):
            if maps is None or maps.convex_region is None or not np.any(maps.convex_region):
                region.clear()
            else:
                region.setImage(np.asarray(maps.convex_region, np.uint8), levels=(0, 255), autoLevels=False)
        if first:
            self._fit_maps = True
            self._fit()
        self._show_step(self.slider.value())
        amp = float(np.max(given_maps.amplification))
        text = f"Given mask: max amplification {amp:.3g}"
        if pred_maps is not None:
            text += f" · prediction: {float(np.max(pred_maps.amplification)):.3g}"
            self.info.setToolTip("")
        else:  # one short line; why there is none, and what to do, on hover
            text += " · no prediction maps"
            self.info.setToolTip(self.no_prediction_hint)
        self.info.setText(text)
        self.updated.emit()

    def _fit(self, *_) -> None:
        """Fit the shown maps to their boxes (while the user has not zoomed or panned them)."""
        if self._fit_maps and self.given_maps is not None:
            h, w = self.given_maps.amplification.shape
            self.boxes[0].setRange(QRectF(0, 0, w, h), padding=0.02)

    def _stop_fitting(self, *_) -> None:
        self._fit_maps = False

    def _show_step(self, k: int) -> None:
        index = getattr(self.given_maps, "step_index", None)
        shown = int(index[k]) if index is not None and 0 <= k < len(index) else k
        self.step_label.setText(f"k = {shown}")
        # each map on its own scale (fixed over k, so growth with k is visible): a smooth
        # prediction amplifies far less than a noisy one-hot mask and would look blank
        for maps, item in ((self.given_maps, self.heat_items[0]), (self.pred_maps, self.heat_items[1])):
            if maps is None:
                item.clear()
                continue
            top = float(np.max(maps.steps)) or 1.0
            kk = min(k, maps.steps.shape[0] - 1)
            item.setImage(display_scale(maps.steps[kk], top), levels=(0.0, 1.0), autoLevels=False)
        for i, (name, maps) in enumerate((("Given mask", self.given_maps), ("Prediction", self.pred_maps))):
            top = None if maps is None else float(np.max(maps.steps))
            if top is not None:
                self.titles[i].setText(f"{name} (max {top:.3g})")
            else:  # an empty box says why, in a few words
                self.titles[i].setText(name if i == 0 else f"{name}: {self.no_prediction_title}")
