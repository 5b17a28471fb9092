"""The review queue's rows: ``QueueModel`` holds one row per image (the project's
``ImageRow`` fields) plus the files the scan skipped, with their reason. For a volume
data set it is grouped: one row per volume (its score, the mean changed fraction and
one status over its slices, `core.volume_review.volume_status`), while every slice
keeps its own row behind it (`get`, `update` and `leaf_rows` take slice names).
Thumbnails are requested lazily (``thumbnailNeeded``) only for rows that are painted."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap

from ielstudio.core.review import describe_score, format_score

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
    score_parts: dict | None = None  # what the score is made of (`core.review.score_parts`)


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
        self._leaves: dict[str, QueueRow] = {}  # grouped: slice name -> its row
        self._group_of: dict[str, str] = {}
        self._members: dict[str, list[str]] = {}

    # --- content -------------------------------------------------------------------
    def set_rows(self, rows: list[QueueRow], groups: dict[str, str] | None = None) -> None:
        """One row per item; with ``groups`` (item name -> group name) one row per group
        instead, in first-seen order, and the items behind it (names not in ``groups``,
        such as skipped files, stay rows of their own)."""
        self.beginResetModel()
        self._leaves, self._group_of, self._members = {}, dict(groups or {}), {}
        shown: list[QueueRow] = []
        for r in rows:
            group = self._group_of.get(r.name)
            if group is None:
                shown.append(r)
                continue
            self._leaves[r.name] = r
            if group not in self._members:
                self._members[group] = []
                shown.append(QueueRow(group))
            self._members[group].append(r.name)
        self.rows = shown
        self._index = {r.name: i for i, r in enumerate(self.rows)}
        for group in self._members:
            self._aggregate(group)
        self._thumbs.clear()
        self._requested.clear()
        self.endResetModel()

    @property
    def grouped(self) -> bool:
        return bool(self._members)

    def members(self, group: str) -> list[str]:
        """The item names of a group row, in order (empty for an ungrouped row)."""
        return list(self._members.get(group, ()))

    def group_of(self, name: str) -> str | None:
        return self._group_of.get(name)

    def leaf_rows(self) -> list[QueueRow]:
        """Every item's row: the slices behind each group, and the ungrouped rows."""
        out = []
        for r in self.rows:
            out += [self._leaves[n] for n in self._members[r.name]] if r.name in self._members else [r]
        return out

    def set_group_scores(self, scores: dict[str, float]) -> None:
        self.update_many({g: {"score": float(s)} for g, s in scores.items() if g in self._members})

    def _aggregate(self, group: str) -> None:
        from ielstudio.core.volume_review import volume_status

        row, leaves = self.rows[self._index[group]], [self._leaves[n] for n in self._members[group]]
        row.status = volume_status(r.status for r in leaves)
        changed = [r.changed for r in leaves if r.changed is not None]
        row.changed = float(np.mean(changed)) if changed else None

    def progress_of(self, group: str) -> tuple[int, int]:
        """(slices decided, slices) of a group row."""
        leaves = [self._leaves[n] for n in self._members.get(group, ())]
        return sum(r.status in ("accepted", "kept", "edited") for r in leaves), len(leaves)

    def row_of(self, name: str) -> int | None:
        """The row showing ``name`` (a grouped item's: its group's)."""
        return self._index.get(self._group_of.get(name, name))

    def get(self, name: str) -> QueueRow | None:
        if name in self._leaves:
            return self._leaves[name]
        i = self._index.get(name)
        return None if i is None else self.rows[i]

    def _set(self, name: str, fields: dict) -> int | None:
        """Set fields of one item; returns the index of the row that shows it."""
        row = self.get(name)
        if row is None:
            return None
        for k, v in fields.items():
            setattr(row, k, v)
        group = self._group_of.get(name)
        if group is not None and name in self._leaves:
            self._aggregate(group)
        return self.row_of(name)

    def update(self, name: str, **fields) -> None:
        """Change some fields of one row or slice (status, score, changed, reason)."""
        i = self._set(name, fields)
        if i is not None:
            self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def update_many(self, updates: dict[str, dict]) -> None:
        lo, hi = None, None
        for name, fields in updates.items():
            i = self._set(name, fields)
            if i is None:
                continue
            lo = i if lo is None else min(lo, i)
            hi = i if hi is None else max(hi, i)
        if lo is not None:
            self.dataChanged.emit(self.index(lo, 0), self.index(hi, len(COLUMNS) - 1))

    def clear_thumbnails(self) -> None:
        """Ask for every thumbnail again (a volume's worst slice is known after scoring)."""
        self._thumbs.clear()
        self._requested.clear()
        if self.rows:
            self.dataChanged.emit(self.index(0, COL_THUMB), self.index(len(self.rows) - 1, COL_THUMB))

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
                return f"{row.name} ({len(self._members[row.name])} slices)" if row.name in self._members else row.name
            if col == COL_SCORE:
                return "" if row.score is None else format_score(row.score)
            if col == COL_CHANGED:
                return "" if row.changed is None else f"{100 * row.changed:.1f}%"
            if col == COL_STATUS:
                title = STATUS_TITLES.get(row.status, row.status)
                if row.name in self._members and row.status == "unreviewed":
                    done, n = self.progress_of(row.name)
                    return f"{done}/{n} done" if done else title  # short: the name column keeps its width
                return title
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
            if row.name in self._members:
                done, n = self.progress_of(row.name)
                return (f"{row.name}: a volume of {n} slices, {done} decided; its score is the mean over the slices "
                        "with foreground (PageUp/PageDown or Shift+wheel move through its slices)")
            if col == COL_SCORE and row.score is not None:
                return f"{row.name}: {describe_score(row.score, row.score_parts)}"
            return row.name
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_SCORE, COL_CHANGED):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
