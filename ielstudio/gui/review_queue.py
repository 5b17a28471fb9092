"""The review queue (left): every pair with thumbnail, name, score, changed fraction, status.

The rows live in ``queue_model.QueueModel`` (one per image, or one per volume with its
slices behind it). ``QueueProxy`` sorts worst-first by default (score ascending,
unscored last) and filters by name and status. Thumbnails are requested lazily
(``thumbnailNeeded``) only for rows that are painted, so 5,000 pairs show at once.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QItemSelectionModel, QModelIndex, QObject, QSortFilterProxyModel, Qt, QTimer, Signal
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

from .queue_model import (
    COL_CHANGED,
    COL_NAME,
    COL_SCORE,
    COL_STATUS,
    COL_THUMB,
    NAME_ROLE,
    SORT_ROLE,
    STATUS_TITLES,
    THUMB_SIZE,
    QueueModel,
)

#: The name column's narrowest width (px) when the pane is narrow.
NAME_MIN_WIDTH = 48


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


class PageKeysToWindow(QObject):
    """Event filter: PageUp/PageDown are the window's (a volume's slices), not the table's
    page scrolling; with no volume open the (disabled) actions let the table have them."""

    def eventFilter(self, obj, ev) -> bool:
        if ev.type() == QEvent.Type.ShortcutOverride and ev.key() in (Qt.Key.Key_PageUp, Qt.Key.Key_PageDown):
            ev.ignore()
            return True
        return False


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
        # the name column takes the width the others leave (`_fit_name_column`): as a
        # Stretch section it kept the width of a wider layout once the pane shrank,
        # pushing the scores out of sight
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Interactive)
        for c in (COL_SCORE, COL_CHANGED, COL_STATUS):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(30)
        header.sectionResized.connect(self._on_section_resized)
        self.table.viewport().installEventFilter(self)
        self.table.sortByColumn(COL_SCORE, Qt.SortOrder.AscendingOrder)
        self.table.selectionModel().currentRowChanged.connect(self._on_current)
        self._page_keys = PageKeysToWindow(self)
        self.table.installEventFilter(self._page_keys)

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
        rows = self.model.leaf_rows()
        if not rows:
            self.summary.setText("No dataset open")
            return
        n = len(rows)
        done = sum(r.status in ("accepted", "kept", "edited") for r in rows)
        skipped = sum(r.status == "skipped" for r in rows)
        text = f"{n} images · {done} reviewed"
        if self.model.grouped:
            text = f"{len(self.model.rows)} volumes · {n} slices · {done} reviewed"
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

    def order_frozen(self) -> bool:
        return not self.proxy.dynamicSortFilter()

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Resize and obj is self.table.viewport():
            self._fit_name_column()
        return False

    def _on_section_resized(self, index: int, _old: int, _new: int) -> None:
        if index != COL_NAME:  # a score, change or status column grew or shrank with its contents
            # after the header's own pass: fitted inside it, a column that shrinks back (a
            # status from "kept original" to "unreviewed" on undo) left the names elided
            QTimer.singleShot(0, self, self._fit_name_column)

    def _fit_name_column(self) -> None:
        """Give the name column what the viewport has left after the other columns
        (at least NAME_MIN_WIDTH px: below that the table scrolls sideways)."""
        header = self.table.horizontalHeader()
        others = sum(header.sectionSize(c) for c in range(header.count()) if c != COL_NAME)
        header.resizeSection(COL_NAME, max(NAME_MIN_WIDTH, self.table.viewport().width() - others))

    def focus_table(self) -> None:
        """Give the keyboard to the table (its arrows, and the window's single-key shortcuts)."""
        self.table.setFocus(Qt.FocusReason.OtherFocusReason)

    def current_name(self) -> str | None:
        idx = self.table.currentIndex()
        return idx.data(NAME_ROLE) if idx.isValid() else None

    def visible_names(self) -> list[str]:
        """Names in the order shown (sorted and filtered)."""
        return [self.proxy.index(r, 0).data(NAME_ROLE) for r in range(self.proxy.rowCount())]

    def visible_leaf_names(self) -> list[str]:
        """The items of the rows shown, in order (a volume's slices in place of its row)."""
        out = []
        for name in self.visible_names():
            out += self.model.members(name) or [name]
        return out

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
