"""Where the canvas's input goes: mouse drags and clicks to the active tool, keys to
the window's shortcuts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt

if TYPE_CHECKING:
    from .canvas import Canvas


class ShortcutsPassThrough(QObject):
    """Event filter: a graphics view never claims a key that is a window shortcut.

    (QGraphicsView accepts ShortcutOverride for plain keys, so A, R, B, E, N, P ...
    would not reach the actions while the view has the focus.)"""

    def eventFilter(self, obj, ev) -> bool:
        if ev.type() == QEvent.Type.ShortcutOverride:
            ev.ignore()
            return True
        return False


class CanvasViewBox(pg.ViewBox):
    """A ViewBox that hands left-button drags/clicks to the canvas when a tool is active."""

    def __init__(self, canvas: "Canvas"):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._canvas = canvas

    def mouseDragEvent(self, ev, axis=None):
        if self._canvas.tool in ("brush", "eraser") and ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            pos = self.mapSceneToView(ev.scenePos())
            if ev.isStart():
                self._canvas._stroke_begin(pos)
            self._canvas._stroke_to(pos)
            if ev.isFinish():
                self._canvas._stroke_end()
            return
        super().mouseDragEvent(ev, axis)

    def wheelEvent(self, ev, axis=None):
        if self._canvas.slice_wheel and ev.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            ev.accept()
            self._canvas.sliceWheel.emit(-1 if ev.delta() > 0 else 1)
            return
        super().wheelEvent(ev, axis)

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            pos = self.mapSceneToView(ev.scenePos())
            tool = self._canvas.tool
            object_click = tool == "object" or bool(ev.modifiers() & Qt.KeyboardModifier.ControlModifier)
            if object_click:
                ev.accept()
                self._canvas._object_click(pos)
                return
            if tool in ("brush", "eraser"):
                ev.accept()
                self._canvas._stroke_begin(pos)
                self._canvas._stroke_to(pos)
                self._canvas._stroke_end()
                return
            if tool == "pan" and self._canvas._point_click(pos):
                ev.accept()
                return
        super().mouseClickEvent(ev)
