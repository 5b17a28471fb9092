"""The centre view: the image with toggleable mask / proposal / difference overlays.

Every layer is a pyqtgraph ``ImageItem`` holding a small-integer array drawn
through a fixed lookup table (RGBA, levels fixed), so zoom and pan only change
a transform: nothing is recomposed in Python while the user navigates, which
keeps 2048 px images fluid. Brush and eraser strokes are collected as a
footprint and handed to the main window as one ``strokeFinished`` signal, which
turns it into an undoable command.
"""

from __future__ import annotations

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsEllipseItem,
    QHBoxLayout,
    QLabel,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .overlays import (
    class_lut,
    difference_lut,
    difference_map,
    display_image,
    outline,
)
from .canvas_input import CanvasViewBox, ShortcutsPassThrough
from .legend import Legend
from .view_controls import ViewControls

OVERLAYS = ("mask", "proposal", "difference")
OVERLAY_TITLES = {"mask": "Mask", "proposal": "Proposal (outline)", "difference": "Still to change"}
#: the badge over the canvas: what the mask shown (and exported) is
STATUS_BADGES = {
    "unreviewed": ("unreviewed: the mask shown is the original", "#bbbbbb"),
    "accepted": ("accepted: the mask shown is the proposal", "#5fd35f"),
    "edited": ("edited: the mask shown is your edit", "#ffb347"),
    "kept": ("kept: the mask shown is the original", "#7fb2ff"),
    "skipped": ("skipped", "#ff6b6b"),
}
DEFAULT_OPACITY = {"mask": 0.45, "proposal": 0.45, "difference": 0.8}
DEFAULT_VISIBLE = {"mask": True, "proposal": False, "difference": True}
TOOLS = ("pan", "brush", "eraser", "object")


class Canvas(QWidget):
    """Image + overlays + tools. Arrays in, signals out; no decisions made here."""

    strokeFinished = Signal(object, int)  # footprint (H,W) bool, value painted (0 = erase)
    objectClicked = Signal(int, int)  # row, col
    pointClicked = Signal(int, int)  # row, col of a click with the pan tool (the cross of a volume's other planes)
    toolChanged = Signal(str)
    brushRadiusChanged = Signal(int)
    brushClassChanged = Signal(int)
    sliceWheel = Signal(int)  # Shift+wheel when `slice_wheel`: -1 previous slice, +1 next

    def __init__(self, parent=None):
        super().__init__(parent)
        self.tool = "pan"
        self.slice_wheel = False  # a volume is shown: Shift+wheel moves through its slices
        self.brush_radius = 6
        self.brush_class = 1
        self.n_classes = 2
        self._shape: tuple[int, int] | None = None
        self._stroke: np.ndarray | None = None
        self._stroke_last: tuple[int, int] | None = None
        self._mask: np.ndarray | None = None
        self._shown: np.ndarray | None = None  # the displayed image (H,W) or (H,W,3) in [0, 1]
        #: the image pixel (row, col) under the mouse, None when it is off the image
        self.hover: tuple[int, int] | None = None

        self.view_widget = pg.GraphicsView()
        self.view_widget.setBackground(QColor(30, 30, 30))
        self._shortcut_filter = ShortcutsPassThrough(self)
        self.view_widget.installEventFilter(self._shortcut_filter)
        self.viewbox = CanvasViewBox(self)
        self.view_widget.setCentralItem(self.viewbox)

        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setLevels((0.0, 1.0))
        self.viewbox.addItem(self.image_item)
        self.items: dict[str, pg.ImageItem] = {}
        for z, name in enumerate(OVERLAYS, start=1):
            item = pg.ImageItem(axisOrder="row-major")
            item.setLookupTable(difference_lut() if name == "difference" else class_lut())
            item.setLevels((0, 255))
            item.setZValue(z)
            item.setOpacity(DEFAULT_OPACITY[name])
            item.setVisible(DEFAULT_VISIBLE[name])
            self.viewbox.addItem(item)
            self.items[name] = item
        self.stroke_item = pg.ImageItem(axisOrder="row-major")
        lut = np.zeros((256, 4), np.uint8)
        lut[1] = (255, 255, 255, 150)
        self.stroke_item.setLookupTable(lut)
        self.stroke_item.setLevels((0, 255))
        self.stroke_item.setZValue(10)
        self.viewbox.addItem(self.stroke_item)
        self.cursor_item = QGraphicsEllipseItem()
        self.cursor_item.setPen(QPen(QColor(255, 255, 255), 0))
        self.cursor_item.setZValue(11)
        self.cursor_item.setVisible(False)
        self.viewbox.addItem(self.cursor_item)
        #: where a volume's other planes cross this slice (`set_cross`): a small plus
        self.cross_item = pg.ScatterPlotItem(size=13, symbol="+", pen=pg.mkPen(QColor(255, 220, 0), width=1.5))
        self.cross_item.setZValue(12)
        self.viewbox.addItem(self.cross_item)
        self.view_widget.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.view_controls = ViewControls(self.viewbox, self.image_item)

        # controls: overlay toggles with their own opacity, tools, legend
        self.checks: dict[str, QCheckBox] = {}
        self.sliders: dict[str, QSlider] = {}
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        for name in OVERLAYS:
            cb = QCheckBox(OVERLAY_TITLES[name])
            cb.setChecked(DEFAULT_VISIBLE[name])
            cb.toggled.connect(lambda on, n=name: self.set_overlay_visible(n, on))
            sl = QSlider(Qt.Orientation.Horizontal)
            sl.setRange(0, 100)
            sl.setValue(int(DEFAULT_OPACITY[name] * 100))
            sl.setFixedWidth(70)
            sl.setToolTip(f"{OVERLAY_TITLES[name]} opacity")
            sl.valueChanged.connect(lambda v, n=name: self.set_overlay_opacity(n, v / 100))
            self.checks[name], self.sliders[name] = cb, sl
            controls.addWidget(cb)
            controls.addWidget(sl)
        controls.addStretch(1)
        self.tool_buttons: dict[str, QToolButton] = {}
        for tool, text, tip in (
            ("pan", "Pan", "Pan and zoom (mouse wheel)"),
            ("brush", "Brush", "Paint the current class (B); size with [ and ]"),
            ("eraser", "Eraser", "Erase to background (E)"),
            ("object", "Object", "Accept the proposal for the object under a click (O, or Ctrl+click)"),
        ):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tip)
            b.setCheckable(True)
            b.setAutoExclusive(True)
            b.clicked.connect(lambda _=False, t=tool: self.set_tool(t))
            self.tool_buttons[tool] = b
            controls.addWidget(b)
        self.tool_buttons["pan"].setChecked(True)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class the brush paints (L picks the class under the cursor)")
        self.class_combo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        # a fixed width that long class names do not widen (its list shows them whole)
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_combo.setMinimumContentsLength(8)  # "1 nucleus": the row stays as narrow as it was
        self.class_combo.currentIndexChanged.connect(
            lambda i: self.set_brush_class(self.class_combo.itemData(i)) if i >= 0 else None)
        controls.addWidget(self.class_combo)
        self.legend = Legend()
        self.info = QLabel("No image")
        self.info.setStyleSheet("color: gray")

        self.badge = QLabel()
        self.badge.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.badge)
        layout.addWidget(self.view_widget, 1)
        layout.addWidget(self.view_controls)
        bottom = QHBoxLayout()
        bottom.addWidget(self.legend, 1)  # all the width the readout leaves: wraps only when it must
        bottom.addWidget(self.info)
        layout.addLayout(bottom)
        self.set_class_names(["background", "class 1"])

    # --- content -------------------------------------------------------------------
    def set_class_names(self, names: list[str]) -> None:
        self.n_classes = len(names)
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for c, name in enumerate(names):
            if c:
                self.class_combo.addItem(name, c)
                self.class_combo.setItemData(self.class_combo.count() - 1, f"the brush paints {name}",
                                             Qt.ItemDataRole.ToolTipRole)
        view = self.class_combo.view()
        view.setMinimumWidth(view.sizeHintForColumn(0) + view.verticalScrollBar().sizeHint().width())
        self.class_combo.blockSignals(False)
        self.set_brush_class(min(max(1, self.brush_class), max(1, self.n_classes - 1)))
        self.legend.show_classes(names)

    def set_image(self, image: np.ndarray | None, reset_view: bool = True) -> None:
        """Show a normalised image ((C,H,W) or (H,W)); clears the overlays."""
        if image is None:
            self._shape = None
            self._shown = None
            self.view_controls.new_image(None, True)
            self.hover = None
            self.image_item.clear()
            for item in self.items.values():
                item.clear()
            self.stroke_item.clear()
            self.info.setText("No image")
            self.set_status(None)
            return
        disp = display_image(image)
        self._shown = disp
        new_shape = disp.shape[:2]
        self.image_item.setImage(disp, levels=self.view_controls.levels(), autoLevels=False)
        for item in self.items.values():
            item.clear()
        self.stroke_item.clear()
        self.view_controls.new_image(disp, reset_view)  # the zoom is kept for an image of the same size
        self._shape = new_shape
        self.info.setText(f"{new_shape[1]} x {new_shape[0]} px")

    def set_cross(self, point: tuple[int, int] | None) -> None:
        """Mark pixel (row, col), where a volume's other two planes cross the slice; None: no mark."""
        if point is None:
            self.cross_item.clear()
        else:
            self.cross_item.setData([point[1] + 0.5], [point[0] + 0.5])

    def _set_layer(self, name: str, data: np.ndarray | None) -> None:
        item = self.items[name]
        if data is None:
            item.clear()
            return
        item.setImage(np.ascontiguousarray(data, dtype=np.uint8), levels=(0, 255), autoLevels=False)

    def set_mask(self, mask: np.ndarray | None) -> None:
        """The current mask of the image (what the user has decided so far)."""
        self._mask = None if mask is None else np.asarray(mask)
        self._set_layer("mask", mask)

    def set_proposal(self, proposal: np.ndarray | None, current: np.ndarray | None = None) -> None:
        """The model's proposal (drawn as outlines) and what it would still change in the
        ``current`` mask (the one shown and exported): after an accept nothing is left."""
        self._set_layer("proposal", None if proposal is None else outline(proposal))
        if proposal is None or current is None:
            self._set_layer("difference", None)
        else:
            self._set_layer("difference", difference_map(np.asarray(current), np.asarray(proposal)))

    def set_status(self, status: str | None, preview: bool = False) -> None:
        """The badge that says what the mask shown is (accepted, kept, edited ...), and
        whether the proposal is a preview of a model still in training."""
        if status is None:
            self.badge.setText("")
            return
        text, colour = STATUS_BADGES.get(status, (status, "#bbbbbb"))
        extra = " · <span style='color:#ffb347'>proposal: preview, the model is still training</span>" if preview else ""
        self.badge.setText(f"<span style='color:{colour}'>&#9679; {text}</span>{extra}")

    def layer_data(self, name: str) -> np.ndarray | None:
        return self.items[name].image

    # --- overlays ------------------------------------------------------------------
    def set_overlay_visible(self, name: str, visible: bool) -> None:
        self.items[name].setVisible(bool(visible))
        cb = self.checks[name]
        if cb.isChecked() != bool(visible):
            cb.setChecked(bool(visible))

    def overlay_visible(self, name: str) -> bool:
        return self.items[name].isVisible()

    def set_overlay_opacity(self, name: str, opacity: float) -> None:
        opacity = float(min(1.0, max(0.0, opacity)))
        self.items[name].setOpacity(opacity)
        sl = self.sliders[name]
        if sl.value() != round(opacity * 100):
            sl.setValue(round(opacity * 100))

    def overlay_opacity(self, name: str) -> float:
        return float(self.items[name].opacity())

    # --- tools ---------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self.tool_buttons[tool].setChecked(True)
        self.cursor_item.setVisible(tool in ("brush", "eraser"))
        self.toolChanged.emit(tool)

    def set_brush_radius(self, radius: int) -> None:
        self.brush_radius = int(min(200, max(1, radius)))
        self._update_cursor(None)
        self.brushRadiusChanged.emit(self.brush_radius)

    def _pixel(self, pos: QPointF, inside: bool = False) -> tuple[int, int] | None:
        """The image pixel (row, col) at ``pos``; with ``inside``, None off the image."""
        if self._shape is None:
            return None
        r, c = int(np.floor(pos.y())), int(np.floor(pos.x()))
        return None if inside and not (0 <= r < self._shape[0] and 0 <= c < self._shape[1]) else (r, c)

    def _on_mouse_moved(self, scene_pos) -> None:
        pos = self.viewbox.mapSceneToView(scene_pos)
        if self.tool in ("brush", "eraser"):
            self._update_cursor(pos)
        self.hover = self._pixel(pos, inside=True)
        self.info.setText(self.readout())

    def readout(self) -> str:
        """What is under the mouse: position, displayed image value, label of the current mask."""
        if self._shape is None:
            return "No image"
        size = f"{self._shape[1]} x {self._shape[0]} px"
        if self.hover is None:
            return size
        r, c = self.hover
        value = self._shown[r, c]
        value = f"{float(value):.3f}" if np.ndim(value) == 0 else "(" + ", ".join(f"{float(v):.2f}" for v in value) + ")"
        label = "" if self._mask is None or self._mask.shape != self._shape else f" · label {int(self._mask[r, c])}"
        return f"x {c}, y {r} · value {value}{label} · {size}"

    def set_brush_class(self, c: int) -> None:
        """The class the brush paints (1..n_classes-1)."""
        c = int(min(max(1, c), max(1, self.n_classes - 1)))
        self.brush_class = c
        i = self.class_combo.findData(c)
        if i >= 0 and self.class_combo.currentIndex() != i:
            self.class_combo.setCurrentIndex(i)
        self.brushClassChanged.emit(c)

    def pick_class(self) -> int | None:
        """Eyedropper: paint with the class under the cursor; returns it (None: background or off the image)."""
        if self.hover is None or self._mask is None or self._mask.shape != self._shape:
            return None
        c = int(self._mask[self.hover])
        if c <= 0:
            return None
        self.set_brush_class(c)
        return c

    def accept_object_under_cursor(self) -> bool:
        """Emit ``objectClicked`` for the pixel under the mouse (key O); False when off the image."""
        if self.hover is None:
            return False
        self.objectClicked.emit(*self.hover)
        return True

    def _update_cursor(self, pos: QPointF | None) -> None:
        if pos is None:
            rect = self.cursor_item.rect()
            if rect.isNull():
                return
            pos = rect.center()
        r = self.brush_radius
        self.cursor_item.setRect(QRectF(pos.x() - r, pos.y() - r, 2 * r, 2 * r))

    def _stroke_begin(self, pos: QPointF) -> None:
        if self._shape is None:
            return
        self._stroke = np.zeros(self._shape, np.uint8)
        self._stroke_last = None

    def _stroke_to(self, pos: QPointF) -> None:
        if self._stroke is None:
            return
        p = self._pixel(pos)
        if p is None:
            return
        pt = (p[1], p[0])
        if self._stroke_last is None:
            cv2.circle(self._stroke, pt, self.brush_radius, 1, -1)
        else:
            cv2.line(self._stroke, self._stroke_last, pt, 1, 2 * self.brush_radius + 1)
            cv2.circle(self._stroke, pt, self.brush_radius, 1, -1)
        self._stroke_last = pt
        self.stroke_item.setImage(self._stroke, levels=(0, 255), autoLevels=False)
        self._update_cursor(pos)

    def _stroke_end(self) -> None:
        if self._stroke is None:
            return
        footprint = self._stroke.astype(bool)
        self._stroke = None
        self._stroke_last = None
        self.stroke_item.clear()
        if footprint.any():
            self.strokeFinished.emit(footprint, 0 if self.tool == "eraser" else self.brush_class)

    def paint_stroke(self, points: list[tuple[int, int]], tool: str | None = None) -> None:
        """Paint a stroke through image pixels ``[(row, col), ...]`` (scripting and tests)."""
        if tool is not None:
            self.set_tool(tool)
        self._stroke_begin(QPointF())
        for r, c in points:
            self._stroke_to(QPointF(c + 0.5, r + 0.5))
        self._stroke_end()

    def _object_click(self, pos: QPointF) -> None:
        p = self._pixel(pos, inside=True)
        if p is not None:
            self.objectClicked.emit(*p)

    def _point_click(self, pos: QPointF) -> bool:
        """A pan-tool click: ``pointClicked`` for the pixel under it; False off the image."""
        p = self._pixel(pos, inside=True)
        if p is not None:
            self.pointClicked.emit(*p)
        return p is not None
