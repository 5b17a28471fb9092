"""Navigation and contrast of the canvas: fit / 100 %, the zoom in per cent, and the
image's window / level (contrast limits, as napari calls them).

The zoom is kept when the next image has the same size (the canvas resets it only
for a new size or on Fit); the contrast mode is kept across images: the full range
of the normalised image, the 1st-99th percentile of each image, or a window and
level the user set. Volumes are shown in their own units (Hounsfield units for CT):
then the full range is the slice's minimum to maximum, and the CT presets (soft
tissue, lung, bone; the usual window/level of radiology viewers such as 3D Slicer)
join the modes; percentile contrast (Auto) suits MR.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QToolButton, QWidget

CONTRAST_MODES = (("full", "Full range"), ("auto", "Auto (1-99 %)"), ("manual", "Window / level"))
#: CT window/level presets in Hounsfield units: key -> (title, window, level).
CT_PRESETS = {"ct-soft": ("CT soft tissue", 400.0, 40.0), "ct-lung": ("CT lung", 1500.0, -600.0),
              "ct-bone": ("CT bone", 1800.0, 400.0)}
AUTO_PERCENTILES = (1.0, 99.0)
MAX_SAMPLE = 1 << 20  # pixels the auto contrast looks at (a strided sample of larger images)


def auto_levels(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentile of an image (a wider range when they coincide)."""
    a = np.asarray(image, np.float32).reshape(-1)
    if a.size > MAX_SAMPLE:
        a = a[:: a.size // MAX_SAMPLE + 1]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(a, AUTO_PERCENTILES))
    if hi - lo < 1e-6:
        lo, hi = float(a.min()), float(a.max())
    return (lo, hi) if hi - lo >= 1e-6 else (lo - 0.5, lo + 0.5)


class ViewControls(QWidget):
    """A row of controls for a pyqtgraph ViewBox and the ImageItem it shows."""

    levelsChanged = Signal(float, float)

    def __init__(self, viewbox, image_item, parent=None):
        super().__init__(parent)
        self.viewbox, self.image_item = viewbox, image_item
        self._shape: tuple[int, int] | None = None
        self._image: np.ndarray | None = None
        self.raw = False  # images in their own units (volumes), not normalised to [0, 1]
        self.fit_button = QToolButton(text="Fit")
        self.fit_button.setToolTip("Fit the image to the view (F)")
        self.fit_button.clicked.connect(self.fit)
        self.actual_button = QToolButton(text="100 %")
        self.actual_button.setToolTip("One image pixel per screen pixel (Ctrl+1)")
        self.actual_button.clicked.connect(self.actual_size)
        self.zoom_label = QLabel("")
        self.zoom_label.setMinimumWidth(56)
        self.zoom_label.setToolTip("Zoom: screen pixels per image pixel, in per cent")
        self.mode = QComboBox()
        for key, text in CONTRAST_MODES:
            self.mode.addItem(text, key)
        self.mode.setToolTip("Contrast of the image (W: auto, Shift+W: full range)")
        self.window = QDoubleSpinBox(decimals=3, minimum=0.001, maximum=1e6, singleStep=0.05, value=1.0)
        self.level = QDoubleSpinBox(decimals=3, minimum=-1e6, maximum=1e6, singleStep=0.05, value=0.5)
        self.window.setToolTip("Window: the range of values from black to white")
        self.level.setToolTip("Level: the value shown mid-gray")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.fit_button, self.actual_button, self.zoom_label, QLabel("Contrast"), self.mode,
                  QLabel("W"), self.window, QLabel("L"), self.level):
            layout.addWidget(w)
        layout.addStretch(1)
        self.mode.currentIndexChanged.connect(lambda _: self._apply())
        self.window.valueChanged.connect(self._manual)
        self.level.valueChanged.connect(self._manual)
        self.viewbox.sigRangeChanged.connect(lambda *_: self._update_zoom())

    # --- zoom ------------------------------------------------------------------------
    def zoom_percent(self) -> float | None:
        """Screen pixels per image pixel x 100 (None before the view has a size)."""
        try:
            px, _ = self.viewbox.viewPixelSize()
        except Exception:  # no size yet
            return None
        return None if not px or not np.isfinite(px) else 100.0 / px

    def _update_zoom(self) -> None:
        z = self.zoom_percent()
        self.zoom_label.setText("" if z is None else f"{z:.0f} %")

    def fit(self) -> None:
        if self._shape is not None:
            h, w = self._shape
            self.viewbox.setRange(QRectF(0, 0, w, h), padding=0.02)

    def actual_size(self) -> None:
        """100 %: one image pixel on one screen pixel, centred where the view is now."""
        if self._shape is None:
            return
        size = self.viewbox.boundingRect()
        centre = self.viewbox.viewRect().center()
        w, h = max(1.0, size.width()), max(1.0, size.height())
        self.viewbox.setRange(QRectF(centre.x() - w / 2, centre.y() - h / 2, w, h), padding=0)

    def new_image(self, image: np.ndarray | None, reset_view: bool) -> None:
        """The canvas shows ``image`` (the displayed array): refit for a new size (or when
        asked), and apply the contrast mode."""
        self._image = image
        shape = None if image is None else tuple(image.shape[:2])
        if shape is not None and (reset_view or shape != self._shape):
            self._shape = shape
            self.fit()
        self._shape = shape
        if image is not None:
            self._apply()

    # --- contrast ----------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        self.mode.setCurrentIndex(self.mode.findData(mode))

    def set_raw(self, raw: bool) -> None:
        """Images in their own units (True: volumes; the CT presets are offered; contrast
        starts at Auto) or normalised to [0, 1] (a CT preset or a window in CT units
        falls back to Auto)."""
        if raw == self.raw:
            return
        self.raw = raw
        for spin in (self.window, self.level):
            spin.setSingleStep(10.0 if raw else 0.05)
        mode = self.mode.currentData()
        self.mode.blockSignals(True)
        for key in CT_PRESETS:
            i = self.mode.findData(key)
            if i >= 0:
                self.mode.removeItem(i)
        if raw:
            for key, (title, width, level) in CT_PRESETS.items():
                self.mode.addItem(f"{title} (W {width:g}, L {level:g})", key)
        self.mode.blockSignals(False)
        self.set_mode(mode if not raw and self.mode.findData(mode) >= 0 and mode != "manual" else "auto")
        self._apply() if self._image is not None else None

    def levels(self) -> tuple[float, float]:
        mode = self.mode.currentData()
        if mode == "auto" and self._image is not None:
            return auto_levels(self._image)
        if mode == "manual":
            half = self.window.value() / 2
            return self.level.value() - half, self.level.value() + half
        if mode in CT_PRESETS:
            _, width, level = CT_PRESETS[mode]
            return level - width / 2, level + width / 2
        if self.raw and self._image is not None:
            finite = self._image[np.isfinite(self._image)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
        return 0.0, 1.0

    def _manual(self) -> None:
        if self.mode.currentData() != "manual":
            self.mode.blockSignals(True)
            self.set_mode("manual")
            self.mode.blockSignals(False)
        self._apply()

    def _apply(self) -> None:
        lo, hi = self.levels()
        if self.mode.currentData() != "manual":  # the spin boxes show what is applied
            for spin, value in ((self.window, hi - lo), (self.level, (lo + hi) / 2)):
                spin.blockSignals(True)
                spin.setValue(value)
                spin.blockSignals(False)
        self.image_item.setLevels((lo, hi))
        self.levelsChanged.emit(lo, hi)
