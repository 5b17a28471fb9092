"""The two other planes of a volume beside the slice under review (3D Slicer's and
ITK-SNAP's orthogonal views): the image and the labels as decided so far, each plane in
its own radiological orientation and true pixel aspect, a cross at the point they pass
through, and a yellow line where the slice under review crosses them. A click in one
moves the review to the slice through the voxel clicked (`pointPicked`).

The planes are read and put together in one long-lived worker
(`workers.NewestRequestWorker`, newest request first), so moving the point never waits
for a file."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .canvas_input import ShortcutsPassThrough
from .overlays import class_lut
from .workers import NewestRequestWorker

LABEL_OPACITY = 0.4
CROSS_COLOR = (255, 255, 255)
REVIEWED_COLOR = (255, 220, 0)


def planes_server():
    """A function serving one request of the views: ``planes_fn`` -> ``planes_fn()`` (the
    planes read and put together in the worker)."""
    return lambda planes_fn: planes_fn()


class _PlaneView(pg.ViewBox):
    """One plane: a click reports the pixel under it."""

    def __init__(self, views: "OrthoViews", i: int):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._views, self._i = views, i

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self._views._clicked(self._i, self.mapSceneToView(ev.scenePos()))
            return
        super().mouseClickEvent(ev)


class OrthoViews(QWidget):
    """Two planes (`core.ortho_planes.OrthoPlane`) stacked; arrays in, a voxel out."""

    pointPicked = Signal(object)  # the voxel (i, j, k) under a click in one of the planes
    updated = Signal()  # the planes of the newest request are shown

    def __init__(self, parent=None):
        super().__init__(parent)
        self.planes: list = []
        self._levels = (0.0, 1.0)
        self._reader = NewestRequestWorker(planes_server, parent=self)
        self._reader.answered.connect(self._on_result)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground(QColor(30, 30, 30))
        self._shortcut_filter = ShortcutsPassThrough(self)
        self.plots.installEventFilter(self._shortcut_filter)
        self.boxes, self.images, self.labels, self.titles, self.crosses, self.reviewed = [], [], [], [], [], []
        for i in range(2):
            title = self.plots.addLabel("", row=2 * i, col=0, color="#cccccc", size="9pt")
            box = _PlaneView(self, i)
            self.plots.addItem(box, row=2 * i + 1, col=0)
            image = pg.ImageItem(axisOrder="row-major")
            labels = pg.ImageItem(axisOrder="row-major")
            labels.setLookupTable(class_lut())
            labels.setLevels((0, 255))
            labels.setOpacity(LABEL_OPACITY)
            labels.setZValue(1)
            cross = pg.InfiniteLine(movable=False, pen=QPen(QColor(*CROSS_COLOR, 140), 0))
            line = pg.InfiniteLine(movable=False, pen=pg.mkPen(QColor(*REVIEWED_COLOR), width=1,
                                                               style=Qt.PenStyle.DashLine))
            for item, z in ((image, 0), (labels, 1), (cross, 2), (line, 3)):
                item.setZValue(z)
                box.addItem(item)
            self.titles.append(title)
            self.boxes.append(box)
            self.images.append(image)
            self.labels.append(labels)
            self.crosses.append(cross)
            self.reviewed.append(line)
        self.info = QLabel("The other two planes of a volume show here.")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("color: gray")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.plots, 1)
        layout.addWidget(self.info)

    # --- requests ------------------------------------------------------------------
    def request(self, planes_fn) -> None:
        """Compute ``planes_fn()`` (a list of `OrthoPlane`) in the worker and show it;
        the newest request wins."""
        self._reader.request(planes_fn)

    def busy(self) -> bool:
        return self._reader.busy()

    def stop(self) -> None:
        self._reader.stop()

    def _on_result(self, planes, error) -> None:
        if error is not None:
            self.clear()
            self.info.setText(f"The other planes cannot be shown: {error}")
            return
        self.show_planes(planes)

    # --- display -------------------------------------------------------------------
    def clear(self) -> None:
        self._reader.forget()  # planes still on their way are not shown
        self.planes = []
        for i in range(2):
            self.images[i].clear()
            self.labels[i].clear()
            self.titles[i].setText("")
            for item in (self.crosses[i], self.reviewed[i]):
                item.setVisible(False)
        self.info.setText("The other two planes of a volume show here.")

    def set_levels(self, lo: float, hi: float) -> None:
        """The contrast of the slice under review (its window and level), for both planes."""
        self._levels = (float(lo), float(hi))
        for image in self.images:
            if image.image is not None:
                image.setLevels(self._levels)

    def show_planes(self, planes: list) -> None:
        shown_before = [QRectF(0, 0, p.image.shape[1] * p.spacing[1], p.image.shape[0] * p.spacing[0])
                        for p in self.planes]
        self.planes = list(planes)
        for i, p in enumerate(self.planes[:2]):
            h, w = p.image.shape
            dy, dx = p.spacing
            rect = QRectF(0, 0, w * dx, h * dy)  # in mm: the true aspect of a reformat across thick slices
            self.images[i].setImage(p.image, levels=self._levels, autoLevels=False)
            self.images[i].setRect(rect)
            self.labels[i].setImage(np.clip(p.labels, 0, 255).astype(np.uint8), levels=(0, 255), autoLevels=False)
            self.labels[i].setRect(rect)
            # the reviewed slice's line, and across it the line of the other plane: they meet at the point
            r, c = p.point
            along_row = p.reviewed_line[0] == "row"
            self.reviewed[i].setAngle(0 if along_row else 90)
            self.reviewed[i].setPos((r + 0.5) * dy if along_row else (c + 0.5) * dx)
            self.crosses[i].setAngle(90 if along_row else 0)
            self.crosses[i].setPos((c + 0.5) * dx if along_row else (r + 0.5) * dy)
            for item in (self.crosses[i], self.reviewed[i]):
                item.setVisible(True)
            view = p.view or f"across axis {p.axis}"
            self.titles[i].setText(f"{view} {p.index + 1} ({w} x {h} px, {dx:.2g} x {dy:.2g} mm)")
            if i >= len(shown_before) or shown_before[i] != rect:  # another volume, or the first: fit it
                self.boxes[i].setRange(rect, padding=0)
        self.info.setText("Yellow: the slice under review. A click here reviews the slice through that "
                          "point; a Pan click on the slice moves the cross.")
        self.updated.emit()

    def _clicked(self, i: int, pos) -> None:
        if i >= len(self.planes):
            return
        p = self.planes[i]
        dy, dx = p.spacing
        h, w = p.image.shape
        row, col = int(pos.y() // dy), int(pos.x() // dx)
        if 0 <= row < h and 0 <= col < w:
            self.pointPicked.emit(p.voxel(row, col))
