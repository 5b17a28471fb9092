"""Decisions on many images at once in the main window (accept every proposal worse
than a score; a volume's slices and its 3-D objects, `window_volumes`), kept off the GUI
thread: a planner reads the images and encodes their new masks in a worker
(`session.plan_decisions`, `volume_review.plan_object_take`), and the GUI thread records
the plans as one undo step in one transaction (`PlannedDecisionsCommand`)."""

from __future__ import annotations

from PySide6.QtWidgets import QInputDialog

from ielstudio.core.session import plan_decisions

from .edit_commands import PlannedDecisionsCommand
from .workers import GeneratorWorker, run_once


class BulkDecisionsMixin:
    """Planning in a worker, recording as one undo step (`self.planning_worker`: the one running)."""

    def accept_worse_than(self, threshold: float | None = None) -> int:
        """Accept every unreviewed proposal whose score is below ``threshold``, as ONE undo
        step, recorded once `plan_in_background` has read and encoded them; their count."""
        if self.project is None:
            return 0
        if threshold is None:
            threshold, ok = QInputDialog.getDouble(
                self, "Accept proposals", "Accept every unreviewed proposal with a label-quality score below:",
                float(self.settings.value("accept_worse/threshold", 0.8)), 0.0, 1.0, 3)
            if not ok:
                return 0
            self.settings.setValue("accept_worse/threshold", threshold)
        proposed = self.proposals.names()
        names = [r.name for r in self.queue.model.leaf_rows()
                 if r.status == "unreviewed" and r.score is not None and r.score < threshold and r.name in proposed]
        if not names:
            self.statusBar().showMessage(f"No unreviewed proposal with a score below {threshold:g}.", 5000)
            return 0

        def record(planned) -> None:
            plans = planned[0]
            command = self.record_plans(plans, f"Accept {len(plans)} proposals with score < {threshold:g}")
            if command is not None:
                self.statusBar().showMessage(f"Accepted {len(plans)} proposals (one undo step).", 6000)

        started = self.plan_in_background(f"accepting {len(names)} proposals", plan_decisions, self.project, names,
                                          "accepted", self.proposals.reader(), then=record)
        return len(names) if started is not None else 0

    def plan_in_background(self, what: str, plan, *args, then) -> GeneratorWorker | None:
        """Run ``plan(*args)`` in a worker (decisions for many images made ready: their
        masks read and encoded), then ``then(result)`` in the GUI thread, where recording
        them is one quick transaction (`record_plans`). ``what`` shows in the status bar
        meanwhile. One at a time: None while another runs. Nothing more is done when the
        project was closed or replaced meanwhile."""
        busy = self.planning_worker
        if busy is not None and not busy.done:
            self.statusBar().showMessage(f"Still {busy.objectName()}; try again when it is done.", 4000)
            return None
        project = self.project
        worker = run_once(plan, *args, parent=self)
        worker.setObjectName(what)

        def done(result) -> None:
            self.statusBar().clearMessage()
            if project is self.project:
                then(result)

        worker.yielded.connect(done)
        worker.errored.connect(lambda message: self.statusBar().showMessage(f"Stopped {what}: {message}", 8000))
        self.planning_worker = worker
        self.statusBar().showMessage(f"{what[0].upper()}{what[1:]}…", 0)
        worker.start()
        return worker

    def record_plans(self, plans: list, text: str) -> PlannedDecisionsCommand | None:
        """Record decisions a planner made ready as one undo step: the command, or None when
        there was nothing to record or the project refused it (said in a dialog)."""
        if not plans:
            return None
        command = PlannedDecisionsCommand(self, plans, text)
        self.undo_stack.push(command)
        return None if command.failed else command
