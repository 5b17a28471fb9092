"""Help dialogs (shortcuts, about) and the shortcut table they and the menus share."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ielstudio import __version__

# (action key, key sequences, what it does): the menus are built from this table
SHORTCUTS: list[tuple[str, tuple[str, ...], str]] = [
    ("open_images", ("Ctrl+O",), "Open image folder"),
    ("open_masks", ("Ctrl+M",), "Open mask folder"),
    ("open_project", ("Ctrl+Shift+O",), "Open project"),
    ("save_as", ("Ctrl+Shift+S",), "Save the project as a new file (and go on in it)"),
    ("close_project", ("Ctrl+W",), "Close the project"),
    ("export", ("Ctrl+E",), "Export corrected masks and report"),
    ("quit", ("Ctrl+Q",), "Quit"),
    ("undo", ("Ctrl+Z",), "Undo the last decision or edit"),
    ("redo", ("Ctrl+Shift+Z", "Ctrl+Y"), "Redo"),
    ("accept", ("A",), "Accept the proposal for this image"),
    ("keep", ("R",), "Keep the original mask"),
    ("accept_worse", ("Ctrl+Shift+A",), "Accept every proposal with a score worse than X"),
    ("accept_volume", ("Shift+A",), "Volumes: accept the proposals of every unreviewed slice of this volume"),
    ("keep_volume", ("Shift+R",), "Volumes: keep the original labels of every unreviewed slice of this volume"),
    ("next", ("N", "Down", "Right"), "Next image"),
    ("previous", ("P", "Up", "Left"), "Previous image"),
    ("next_slice", ("PgDown",), "Volumes: next slice (also Shift+wheel over the image)"),
    ("previous_slice", ("PgUp",), "Volumes: previous slice (also Shift+wheel over the image)"),
    ("tool_pan", ("H",), "Pan / zoom tool"),
    ("brush", ("B",), "Brush (paints the class chosen beside the tools, or picked with L)"),
    ("eraser", ("E",), "Eraser"),
    ("tool_object", ("O",), "Accept the proposal for the object under the cursor (also Ctrl+click)"),
    ("pick_class", ("L",), "Pick the class under the cursor for the brush"),
    ("smaller", ("[",), "Smaller brush"),
    ("larger", ("]",), "Larger brush"),
    ("fit_view", ("F",), "Fit the image to the view"),
    ("actual_size", ("Ctrl+1",), "Zoom to 100 % (one image pixel per screen pixel)"),
    ("auto_contrast", ("W",), "Contrast: 1st-99th percentile of each image"),
    ("full_contrast", ("Shift+W",), "Contrast: the full range"),
    ("toggle_mask", ("1",), "Show/hide the mask overlay"),
    ("toggle_proposal", ("2",), "Show/hide the proposal overlay"),
    ("toggle_difference", ("3",), "Show/hide the difference overlay"),
    ("train", ("Ctrl+T",), "Start training"),
    ("pause", ("Ctrl+Shift+P",), "Pause / resume training"),
    ("stop", ("Ctrl+.",), "Stop training"),
    ("shortcuts", ("F1",), "Show this list"),
]

CITATIONS = [
    ("Liu, Qiao, Li, Schönlieb",
     "Inverse Evolution Layers: Physics-informed Regularizers for Image Segmentation",
     "SIAM Journal on Mathematics of Data Science 7(1), 2025; arXiv:2307.07344"),
    ("Ruthotto, Haber", "Deep Neural Networks Motivated by Partial Differential Equations",
     "Journal of Mathematical Imaging and Vision 2020; arXiv:1804.04272"),
    ("Smets, Portegies, Bekkers, Duits", "PDE-based Group Equivariant Convolutional Neural Networks",
     "Journal of Mathematical Imaging and Vision 65, 2023"),
]


class ShortcutsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.table = QTableWidget(len(SHORTCUTS), 2)
        self.table.setHorizontalHeaderLabels(["Keys", "Action"])
        self.table.verticalHeader().setVisible(False)
        for i, (_, keys, text) in enumerate(SHORTCUTS):
            self.table.setItem(i, 0, QTableWidgetItem("  or  ".join(keys)))
            self.table.setItem(i, 1, QTableWidgetItem(text))
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(520, 640)


def about_html() -> str:
    refs = "".join(f"<li>{who}, “{title}”, <i>{where}</i>.</li>" for who, title, where in CITATIONS)
    return (
        f"<h2>IEL Studio {__version__}</h2>"
        "<p>Cleans noisy segmentation masks by training a segmentation network regularised by "
        "inverse evolution layers (IELs), then lets you review its proposals worst-first.</p>"
        "<p>Released under the MIT licence.</p>"
        f"<p>Methods from:</p><ul>{refs}</ul>"
    )


class AboutDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("About IEL Studio")
        self.label = QLabel(about_html())
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(buttons)
        self.resize(560, 360)
