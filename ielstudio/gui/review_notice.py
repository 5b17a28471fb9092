"""A notice above the image: what the last review decided not to change, and why.

When the model is not reliable (for the whole data set, or a class) the review keeps
labels as given and says so (`core.review.summary_warnings`). That is not an error
and must not interrupt the person reviewing, but it must stay in view while they
decide: a dialog after every scoring pass is closed and forgotten. So the window shows
it as a bar over the canvas, as napari's notifications and 3D Slicer's module hints
do: a title, the first message, a Details button for all of them, and a button that
hides it (Training > Show what the last scoring pass kept brings it back).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMessageBox, QToolButton, QVBoxLayout


class ReviewNotice(QFrame):
    """Hidden until `show_warnings`; `clear` hides it and forgets the messages."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("reviewNotice")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        # a pale amber, readable in light and dark themes: text colour set with it
        self.setStyleSheet("#reviewNotice { background: #fff4d6; border: 1px solid #d9a300; }"
                           "#reviewNotice QLabel { color: #3d2e00; }")
        self._title = QLabel()
        self._title.setStyleSheet("font-weight: bold;")
        self._text = QLabel()
        self._text.setWordWrap(True)
        self._text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self._title)
        text.addWidget(self._text)
        self.details_button = QToolButton()
        self.details_button.setText("Details…")
        self.details_button.setToolTip("Every message of the last scoring pass")
        self.details_button.clicked.connect(self.show_details)
        self.hide_button = QToolButton()
        self.hide_button.setText("✕")
        self.hide_button.setToolTip("Hide this notice (Training > Show what the last scoring pass kept brings it back)")
        self.hide_button.setAccessibleName("Hide the notice")
        self.hide_button.clicked.connect(self.hide)
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 4, 4)
        row.addLayout(text, 1)
        row.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.hide_button, 0, Qt.AlignmentFlag.AlignTop)
        self._warnings: list[str] = []
        self._details = None
        self.hide()

    def title(self) -> str:
        return self._title.text()

    def text(self) -> str:
        return self._text.text()

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def show_warnings(self, title: str, warnings: list[str]) -> None:
        """Show ``title`` and the first of ``warnings`` (how many more there are too);
        an empty list hides the notice."""
        self._warnings = list(warnings)
        if not warnings:
            self.clear()
            return
        self._title.setText(title)
        more = len(warnings) - 1
        self._text.setText(_sentence(warnings[0]) + (f" (and {more} more: Details)" if more else ""))
        self.details_button.setVisible(bool(more) or len(warnings[0]) > 300)
        self.show()

    def clear(self) -> None:
        self._warnings = []
        self._title.clear()
        self._text.clear()
        self.hide()

    def show_details(self) -> None:
        """Every message in a box that does not block the window."""
        if self._details is not None:
            self._details.close()
        box = QMessageBox(QMessageBox.Icon.Information, self.title(), "\n\n".join(map(_sentence, self._warnings)),
                          QMessageBox.StandardButton.Ok, self.window())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=0: setattr(self, "_details", None))
        self._details = box
        box.open()


def _sentence(message: str) -> str:
    """A core message (lower-case, no full stop: it is also a line of the command's
    output) as a sentence."""
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."
