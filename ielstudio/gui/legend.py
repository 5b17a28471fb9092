"""The legend under the image: a colour swatch and a name for each class, and for what
accepting a proposal would still change (added, removed, another class).

Class names can be many and long (a brain atlas's "grey matter (right)", from the data
set's dataset.json: `core.class_names`), so the legend wraps between entries, never
inside one, and never makes the canvas's column wider than the window gives it.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocumentFragment
from PySide6.QtWidgets import QLabel

from .overlays import ADDED_COLOR, RELABELLED_COLOR, REMOVED_COLOR, class_color

CHANGES = ((ADDED_COLOR, "added"), (REMOVED_COLOR, "removed"), (RELABELLED_COLOR, "other class"))


def entry(colour: tuple[int, int, int], name: str) -> str:
    """A swatch and a name that a wrapping line keeps together (the name HTML-escaped: it
    may come from a user's file)."""
    r, g, b = colour
    return f"<span style='color:rgb({r},{g},{b})'>&#9632;</span>&nbsp;" + html.escape(name).replace(" ", "&nbsp;")


class Legend(QLabel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setWordWrap(True)

    def show_classes(self, names: list[str]) -> None:
        """``names[c]`` for each class c (0, the background, is not shown), then the changes."""
        parts = [entry(class_color(c), name) for c, name in enumerate(names) if c]
        parts += [entry(colour, name) for colour, name in CHANGES]
        self.setText("&nbsp; ".join(parts))  # a line may break between entries only

    def plain_text(self) -> str:
        """The legend as a person reads it (spaces for the non-breaking ones)."""
        return QTextDocumentFragment.fromHtml(self.text()).toPlainText().replace("\u00a0", " ")
