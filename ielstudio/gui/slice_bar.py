"""The slice bar under the canvas (volume data sets only): which slice of which volume is
shown, its score and status, and a slider to move through the volume's slices."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

from ielstudio.core.review import format_score


class SliceBar(QWidget):
    """``sliceChanged(index)`` when the user moves the slider or presses a step button."""

    sliceChanged = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.previous_button = QToolButton(text="◀")
        self.previous_button.setToolTip("Previous slice (PageUp, or Shift+wheel over the image)")
        self.next_button = QToolButton(text="▶")
        self.next_button.setToolTip("Next slice (PageDown, or Shift+wheel over the image)")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # N, A ... stay the window's keys
        self.slider.setToolTip("Slice of this volume")
        self.label = QLabel("")
        self.label.setMinimumWidth(300)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 0)
        for w in (self.previous_button, self.slider, self.next_button, self.label):
            layout.addWidget(w, 1 if w is self.slider else 0)
        self.slider.valueChanged.connect(self.sliceChanged.emit)
        self.previous_button.clicked.connect(lambda: self.sliceChanged.emit(max(0, self.slider.value() - 1)))
        self.next_button.clicked.connect(
            lambda: self.sliceChanged.emit(min(self.slider.maximum(), self.slider.value() + 1)))
        self.setVisible(False)

    def show_slice(self, index: int, count: int, view: str, score: float | None, status: str) -> None:
        """Show slice ``index`` of ``count`` (the slider moves without emitting)."""
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, count - 1))
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        shown = "–" if score is None else format_score(score)
        self.label.setText(f"{view + ' ' if view else ''}slice {index + 1}/{count} · score {shown} · {status}")

    def text(self) -> str:
        return self.label.text()
