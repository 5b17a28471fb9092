"""Undoable review decisions: small QUndoCommands that record into the session project.

A command remembers only the image name and two `session.Decision`s (before and
after, which reference masks stored in the project), so undo/redo across many
images costs a row each, not a copy of an array. Each redo/undo is one project
transaction (`Project.record_decision` the first time, `Project.restore` after).
`PlannedDecisionsCommand` does the same for many images at once, from decisions made
ready in a worker thread (`session.plan_decision`), in one transaction each way.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from PySide6.QtGui import QUndoCommand


class DecisionTarget(Protocol):
    """What a command needs from the main window."""

    project: object

    def provenance(self): ...

    def decision_changed(self, name: str) -> None: ...

    def decisions_changed(self, names: list[str]) -> None: ...

    def report_error(self, title: str, message: str) -> None: ...


class DecisionCommand(QUndoCommand):
    """Set one image's decision (status + optional mask); undo restores the previous one."""

    def __init__(self, target: DecisionTarget, name: str, status: str, mask: np.ndarray | None,
                 text: str, parent: QUndoCommand | None = None):
        super().__init__(text, parent)
        self.target = target
        self.name = name
        self.status = status
        self._mask = None if mask is None else np.asarray(mask, np.int64)
        self.before = None
        self.after = None
        self.failed = False

    def redo(self) -> None:
        project = self.target.project
        try:
            if self.after is None:
                self.before = project.decision(self.name)
                self.after = project.record_decision(self.name, self.status, self._mask,
                                                     provenance=self.target.provenance())
                self._mask = None  # stored in the project now
            else:
                project.restore(self.name, self.after)
        except Exception as e:  # the project stays as it was (one transaction)
            self.failed = True
            self.setObsolete(True)
            self.target.report_error("Could not record the decision", f"{self.name}: {e}")
            return
        self.target.decision_changed(self.name)

    def undo(self) -> None:
        if self.before is None:
            return
        try:
            self.target.project.restore(self.name, self.before)
        except Exception as e:
            self.target.report_error("Could not undo", f"{self.name}: {e}")
            return
        self.target.decision_changed(self.name)


class PlannedDecisionsCommand(QUndoCommand):
    """Several images' decisions as one undo step, prepared in a worker
    (`session.PlannedDecision`: masks encoded already), so that recording them is one
    quick transaction in the GUI thread (`Project.record_planned`); undo and redo restore
    every image in one transaction too (`Project.restore_all`). Nothing is recorded
    (``failed``, said in a dialog) when an image was decided otherwise after the plan
    was made, or the project refuses the write."""

    def __init__(self, target: DecisionTarget, plans: list, text: str, parent: QUndoCommand | None = None):
        super().__init__(text, parent)
        self.target = target
        self.plans = list(plans)
        self.names = [p.name for p in self.plans]
        self.before: list | None = None
        self.after: list | None = None
        self.failed = False

    def redo(self) -> None:
        project = self.target.project
        try:
            if self.after is None:
                done = project.record_planned(self.plans, provenance=self.target.provenance())
                self.before, self.after = [b for b, _ in done], [a for _, a in done]
                self.plans = []  # stored in the project now
            else:
                project.restore_all(self.after)
        except Exception as e:  # the project stays as it was (one transaction)
            self.failed = True
            self.setObsolete(True)
            self.target.report_error("Could not record the decisions", str(e))
            return
        self.target.decisions_changed(self.names)

    def undo(self) -> None:
        if self.before is None:
            return
        try:
            self.target.project.restore_all(self.before)
        except Exception as e:
            self.target.report_error("Could not undo", str(e))
            return
        self.target.decisions_changed(self.names)


def object_under(current: np.ndarray, proposal: np.ndarray, row: int, col: int) -> np.ndarray:
    """Bool (H,W): the connected object (8-connected, foreground in either mask) at (row, col).

    Empty when both masks are background there. Accepting the proposal inside this
    region changes that one object (added, removed or reshaped) and nothing else.
    """
    fg = ((np.asarray(current) != 0) | (np.asarray(proposal) != 0)).astype(np.uint8)
    if not fg[row, col]:
        return np.zeros(fg.shape, bool)
    _, labels = cv2.connectedComponents(fg, connectivity=8)
    return labels == labels[row, col]


def paint(mask: np.ndarray, footprint: np.ndarray, value: int) -> np.ndarray:
    """A copy of ``mask`` with ``value`` where ``footprint`` is set."""
    out = np.array(mask, np.int64, copy=True)
    out[np.asarray(footprint, bool)] = int(value)
    return out
