"""The review queue (left): every pair with thumbnail, name, score, changed fraction, status.

``QueueModel`` holds one row per image (the project's ``ImageRow`` fields) plus the
files the scan skipped, with their reason. ``QueueProxy`` sorts worst-first by
default (score ascending, unscored last) and filters by name and status.
Thumbnails are requested lazily (``thumbnailNeeded``) only for rows that are
painted, so 5,000 pairs show at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("", "Name", "Score", "Changed", "Status")
COL_THUMB, COL_NAME, COL_SCORE, COL_CHANGED, COL_STATUS = range(5)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
NAME_ROLE = Qt.ItemDataRole.UserRole + 2
STATUS_COLORS = {
    "unreviewed": None,
    "accepted": QColor(60, 170, 80),
    "kept": QColor(90, 140, 220),
    "edited": QColor(200, 150, 40),
    "skipped": QColor(200, 70, 70),
}
STATUS_TITLES = {"unreviewed": "unreviewed", "accepted": "accepted", "kept": "kept original",
                 "edited": "edited", "skipped": "skipped"}
THUMB_SIZE = 40


@dataclass
class QueueRow:
    name: str
    status: str = "unreviewed"
    score: float | None = None
    changed: float | None = None
    reason: str | None = None  # why it was skipped


def thumbnail_pixmap(rgb: np.ndarray) -> QPixmap:
    """(h,w) or (h,w,3) uint8 -> QPixmap (GUI thread only)."""
    a = np.ascontiguousarray(rgb, np.uint8)
    if a.ndim == 2:
        img = QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_Grayscale8)
    else:
        img = QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(img.copy())


class QueueModel(QAbstractTableModel):
    thumbnailNeeded = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[QueueRow] = []
        self._index: dict[str, int] = {}
        self._thumbs: dict[str, QPixmap] = {}
        self._requested: set[str] = set()

    # --- content -------------------------------------------------------------------
    def set_rows(self, rows: list[QueueRow]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self._index = {r.name: i for i, r in enumerate(self.rows)}
        self._thumbs.clear()
        self._requested.clear()
        self.endResetModel()

    def row_of(self, name: str) -> int | None:
        return self._index.get(name)

    def get(self, name: str) -> QueueRow | None:
        i = self._index.get(name)
        return None if i is None else self.rows[i]

    def update(self, name: str, **fields) -> None:
        """Change some fields of one row (status, score, changed, reason)."""
        i = self._index.get(name)
        if i is None:
            return
        row = self.rows[i]
        for k, v in fields.items():
            setattr(row, k, v)
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def update_many(self, updates: dict[str, dict]) -> None:
        lo, hi = None, None
        for name, fields in updates.items():
            i = self._index.get(name)
            if i is None:
                continue
            for k, v in fields.items():
                setattr(self.rows[i], k, v)
            lo = i if lo is None else min(lo, i)
            hi = i if hi is None else max(hi, i)
        if lo is not None:
            self.dataChanged.emit(self.index(lo, 0), self.index(hi, len(COLUMNS) - 1))

    def set_thumbnail(self, name: str, pixmap: QPixmap) -> None:
        self._thumbs[name] = pixmap
        i = self._index.get(name)
        if i is not None:
            self.dataChanged.emit(self.index(i, COL_THUMB), self.index(i, COL_THUMB))

    # --- Qt model ------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return ("Thumbnail", "Image name", "Label quality (1 = label agrees with the model; "
                    "low = doubtful, review first)", "Fraction of pixels the proposal changes",
                    "Review status")[section]
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        col = index.column()
        if role == NAME_ROLE:
            return row.name
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_NAME:
                return row.name
            if col == COL_SCORE:
                return "" if row.score is None else f"{row.score:.3f}"
            if col == COL_CHANGED:
                return "" if row.changed is None else f"{100 * row.changed:.1f}%"
            if col == COL_STATUS:
                return STATUS_TITLES.get(row.status, row.status)
            return None
        if role == SORT_ROLE:
            if col == COL_SCORE:
                return math.inf if row.score is None else float(row.score)
            if col == COL_CHANGED:
                return -math.inf if row.changed is None else float(row.changed)
            if col == COL_STATUS:
                return row.status
            return row.name
        if role == Qt.ItemDataRole.DecorationRole and col == COL_THUMB:
            pm = self._thumbs.get(row.name)
            if pm is None and row.status != "skipped" and row.name not in self._requested:
                self._requested.add(row.name)
                self.thumbnailNeeded.emit(row.name)
            return pm
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_STATUS:
            c = STATUS_COLORS.get(row.status)
            return None if c is None else QBrush(c)
        if role == Qt.ItemDataRole.ToolTipRole:
            if row.status == "skipped":
                return f"{row.name}: skipped: {row.reason or 'unknown reason'}"
            return row.name
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_SCORE, COL_CHANGED):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class QueueProxy(QSortFilterProxyModel):
    """Sort by SORT_ROLE; filter by name substring (case-insensitive) and status."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(COL_NAME)
        self.status_filter: str | None = None
        self.setDynamicSortFilter(True)

    def set_status_filter(self, status: str | None) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self.status_filter = status or None
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.status_filter = status or None
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        if self.status_filter is not None:
            row = self.sourceModel().rows[source_row]
            if row.status != self.status_filter:
                return False
        return super().filterAcceptsRow(source_row, source_parent)


class FilterEdit(QLineEdit):
    """The name filter: takes keys only once clicked (single-key shortcuts such as N and A
    must reach the window after a data set opens); Esc hands the keys back to the queue."""

    left = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.left.emit()
            return
        super().keyPressEvent(event)


class ReviewQueue(QWidget):
    """Filter box + status filter + table. ``currentChanged(name)`` when the selection moves."""

    currentChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = QueueModel(self)
        self.proxy = QueueProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_SIZE + 4)
        self.table.setIconSize(self.table.iconSize().__class__(THUMB_SIZE, THUMB_SIZE))
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(COL_THUMB, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(COL_THUMB, THUMB_SIZE + 8)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        for c in (COL_SCORE, COL_CHANGED, COL_STATUS):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(30)
        self.table.sortByColumn(COL_SCORE, Qt.SortOrder.AscendingOrder)
        self.table.selectionModel().currentRowChanged.connect(self._on_current)

        self.filter_edit = FilterEdit()
        self.filter_edit.left.connect(self.focus_table)
        self.filter_edit.setPlaceholderText("Filter names… (click; Esc leaves)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.status_combo = QComboBox()
        self.status_combo.addItem("All", None)
        for s, title in STATUS_TITLES.items():
            self.status_combo.addItem(title.capitalize(), s)
        self.status_combo.currentIndexChanged.connect(
            lambda _: self.proxy.set_status_filter(self.status_combo.currentData()))
        self.summary = QLabel("No dataset open")
        self.summary.setStyleSheet("color: gray")

        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.status_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)
        self.model.modelReset.connect(self.update_summary)
        self.model.dataChanged.connect(lambda *_: self.update_summary())

    def update_summary(self) -> None:
        rows = self.model.rows
        if not rows:
            self.summary.setText("No dataset open")
            return
        n = len(rows)
        done = sum(r.status in ("accepted", "kept", "edited") for r in rows)
        skipped = sum(r.status == "skipped" for r in rows)
        text = f"{n} images · {done} reviewed"
        if skipped:
            text += f" · {skipped} skipped"
        self.summary.setText(text)

    # --- navigation ----------------------------------------------------------------
    def _on_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.currentChanged.emit(current.data(NAME_ROLE))

    def freeze_order(self, frozen: bool) -> None:
        """While training, rows keep their place as preview scores arrive (the reviewer's
        next image must not jump away); unfreezing re-ranks them once."""
        self.proxy.setDynamicSortFilter(not frozen)
        if not frozen:
            self.proxy.invalidate()
            self.proxy.sort(self.proxy.sortColumn(), self.proxy.sortOrder())

    def focus_table(self) -> None:
        """Give the keyboard to the table (its arrows, and the window's single-key shortcuts)."""
        self.table.setFocus(Qt.FocusReason.OtherFocusReason)

    def current_name(self) -> str | None:
        idx = self.table.currentIndex()
        return idx.data(NAME_ROLE) if idx.isValid() else None

    def visible_names(self) -> list[str]:
        """Names in the order shown (sorted and filtered)."""
        return [self.proxy.index(r, 0).data(NAME_ROLE) for r in range(self.proxy.rowCount())]

    def select(self, name: str) -> bool:
        i = self.model.row_of(name)
        if i is None:
            return False
        idx = self.proxy.mapFromSource(self.model.index(i, COL_NAME))
        if not idx.isValid():
            return False
        self.table.selectionModel().setCurrentIndex(
            idx, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(idx)
        return True

    def step(self, delta: int) -> str | None:
        """Move the selection by ``delta`` rows in the shown order; returns the new name."""
        n = self.proxy.rowCount()
        if n == 0:
            return None
        idx = self.table.currentIndex()
        r = 0 if not idx.isValid() else min(n - 1, max(0, idx.row() + delta))
        if idx.isValid() and r == idx.row():
            return self.current_name()
        target = self.proxy.index(r, COL_NAME)
        self.table.selectionModel().setCurrentIndex(
            target, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(target)
        return target.data(NAME_ROLE)
