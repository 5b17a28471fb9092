"""The review session in the main window: the images loaded, shown and prefetched, and
the decisions on them (accept, keep, brush, object), undoable; decisions on many images
at once are in `window_bulk`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QMessageBox

from ielstudio.core.review import format_score

from . import jobs
from .edit_commands import DecisionCommand, object_under, paint
from .queue_model import thumbnail_pixmap
from .workers import GeneratorWorker


SAMPLE_CACHE = 24  # images kept loaded when the whole dataset is not


class ReviewMixin:
    """Showing images with their overlays and recording decisions through the undo stack."""

    def _set_classes(self, n_classes: int) -> None:
        """The legend and the brush menu for ``n_classes`` classes, named where the data set
        describes them (`core.class_names`, read when it was opened)."""
        from ielstudio.core.class_names import class_label

        n = max(2, int(n_classes))
        named = self.class_names_by_index(n)
        self.canvas.set_class_names(["background"] + [class_label(c, named[c]) for c in range(1, n)])

    def class_names_by_index(self, n_classes: int | None = None) -> list[str | None]:
        """The name of each class index of the open data set (None: not named)."""
        from ielstudio.core.class_names import names_by_class

        enc = self.project.mask_encoding() if self.project is not None else None
        values = enc.stored_values if enc is not None else ()
        return names_by_class(self.described_classes, values, n_classes or self.canvas.n_classes)

    def n_classes(self) -> int:
        if self.dataset_info is not None:
            return int(self.dataset_info.n_classes)
        enc = self.project.mask_encoding() if self.project is not None else None
        if enc is not None:
            return max(2, enc.n_classes)
        masks = [s.mask for s in self._samples.values()]
        return max([2] + [int(m.max()) + 1 for m in masks])

    def sample(self, name: str):
        """The loaded sample (image + given mask), loading it on first use; None if unreadable."""
        if name in self._samples:
            self._samples.move_to_end(name)
            return self._samples[name]
        pair = self.pairs.get(name)
        if pair is None or name in self._unreadable:
            return None
        from ielstudio.core.dataset import load_sample
        from ielstudio.core.errors import DataError

        encoding = self.project.mask_encoding() if self.project else None
        try:
            s = self.volumes.sample(name, encoding) if self.volumes is not None else load_sample(pair, encoding)
        except (DataError, OSError, ValueError) as e:
            self._mark_unreadable(pair, e)
            return None
        self._samples[name] = s
        while len(self._samples) > SAMPLE_CACHE:
            self._samples.popitem(last=False)
        return s

    def _mark_unreadable(self, pair, error: Exception) -> None:
        """A file of ``pair`` failed to load: mark the image skipped (project and queue) at once,
        so that N and P step over it; a dialog only for the first such file of the session."""
        bad = getattr(error, "path", None) or getattr(error, "filename", None)
        what = "mask" if bad is not None and Path(bad) == Path(pair.mask_path) else "image"
        reason = str(error)
        first = not self._unreadable
        self._unreadable[pair.name] = reason
        self.mark_skipped(pair.name, reason)
        if first:
            self.report_error(f"Cannot load {what}", reason + "\nIt is marked skipped; the review goes on.")
        else:
            self.statusBar().showMessage(f"Cannot load {what}: {reason} (marked skipped)", 10000)

    def mark_skipped(self, name: str, reason: str) -> None:
        """An image that cannot be used (a file unreadable, or a mask that does not fit the
        data set): skipped in the project and the queue, so that N and P step over it. An
        image already decided keeps its decision (the queue row then says why in its tooltip)."""
        try:
            status = self.project.image(name).status if self.project is not None else "unreviewed"
            if status == "unreviewed" and not self.project.read_only:
                self.project.record_decision(name, "skipped", reason=reason)
                status = "skipped"
        except Exception as e:  # the queue still shows it; the status bar says why the project could not
            self.statusBar().showMessage(f"Cannot update the project: {e}", 10000)
            status = "skipped"
        self.queue.model.update(name, status=status, reason=reason)

    def mark_skipped_files(self, skipped) -> None:
        """`dataset.Skipped` files found while settling or loading the data set: their images
        are marked skipped (files the folder scan already listed are in the queue as such)."""
        by_path: dict[Path, list[str]] = {}  # a volume's files hold all its slices
        for p in self.pairs.values():
            by_path.setdefault(Path(p.image_path), []).append(p.name)
            by_path.setdefault(Path(p.mask_path), []).append(p.name)
        listed = {Path(s.path) for s in self.scan.skipped}
        for sk in skipped:
            if Path(sk.path) not in listed:
                for name in by_path.get(Path(sk.path), []):
                    self.mark_skipped(name, sk.problem)
        if skipped:
            self.statusBar().showMessage(f"{len(skipped)} files skipped (hover the queue rows for why)", 8000)

    def use_encoding(self, encoding) -> None:
        """The data set's class mapping is settled: stored in the project, the legend updated,
        and images loaded with their file's own mapping read again."""
        try:
            old = self.project.mask_encoding()
            if not self.project.read_only:
                self.project.set_mask_encoding(encoding)
        except Exception as e:
            self.report_error("Cannot update the project", str(e))
            return
        if old != encoding:
            self._samples.clear()  # re-read with the dataset's class mapping
            self._prefetch_gen += 1
            self._prefetching.clear()
        self._set_classes(encoding.n_classes)
        shown = self.current or self._waiting_for
        if shown and not self._samples:
            self.show_image(shown)

    def current_mask(self, name: str) -> np.ndarray | None:
        """The mask as decided so far: the stored accepted/edited mask, else the given one
        (also when the stored one sits in a damaged part of the project: said in the status bar)."""
        from ielstudio.core.errors import DataError

        try:
            m = self.project.final_mask(name) if self.project is not None else None
        except DataError as e:
            self.statusBar().showMessage(f"{name}: its decided mask cannot be read ({e}); showing the given mask",
                                         15000)
            m = None
        if m is not None:
            return m
        s = self.sample(name)
        return None if s is None else s.mask

    def show_image(self, name: str | None) -> None:
        if not name or self.project is None:
            return
        if name != self._auto_selected:  # the user moved (or a pass already moved for them)
            self._auto_selected = None
        name = self.resolve_slice(name)  # a volume's row: one of its slices
        row = self.queue.model.get(name)
        if row is not None and row.status == "skipped" and name not in self.pairs:
            self.current = None
            self.canvas.set_image(None)
            self.iel_panel.clear()
            self.statusBar().showMessage(f"{name}: skipped: {row.reason}", 10000)
            return
        if self._open_before_showing(name):
            return
        s = self.sample(name)
        if s is None:  # nothing of the previous image stays on screen
            self.current = None
            self.canvas.set_image(None)
            self.iel_panel.clear()
            self._update_status()
            return
        self.current = name
        self.canvas.set_image(s.image, reset_view=False)  # the zoom stays for images of one size
        seen = int(s.mask.max()) + 1  # before training the class count is unknown: grow the legend as masks show
        if self.dataset_info is None and seen > self.canvas.n_classes:
            self._set_classes(seen)
        self._refresh_overlays(name, s)
        self._update_status()
        self._update_slice_bar(name)
        self.show_other_planes(name)
        self._prefetch_around(name)

    def _prefetch_around(self, name: str, ahead: int = 2) -> None:
        """Load the next and previous images of the queue in the background (fast N / P;
        for volumes: open the next and previous volumes)."""
        if self.project is None:
            return
        names = self.queue.visible_names()
        if self.volumes is not None:
            name = self.queue.model.group_of(name) or name
            ahead = 1
        if name not in names:
            return
        i = names.index(name)
        wanted = names[i + 1:i + 1 + ahead] + names[max(0, i - 1):i]
        self._start_prefetching()
        if self.volumes is not None:
            self._open_volumes_ahead(wanted)
            return
        encoding = self.project.mask_encoding()
        for n in wanted:
            if n in self.pairs and n not in self._samples and n not in self._prefetching:
                self._prefetching.add(n)
                self.prefetch_queue.put((n, self.pairs[n], encoding, self._prefetch_gen))

    def _start_prefetching(self) -> None:
        if self.prefetch_worker is None:
            self.prefetch_worker = GeneratorWorker(jobs.prefetch_job, self.prefetch_queue, cancel_kwarg="cancel",
                                                   parent=self)
            self.prefetch_worker.yielded.connect(self._on_prefetched)
            self.prefetch_worker.start()

    def _on_prefetched(self, item: "jobs.Prefetched") -> None:
        self._prefetching.discard(item.name)
        if self._waiting_for and item.generation == self._prefetch_gen and self.volumes is not None:
            self._show_when_open(item.name)
        if (item.generation != self._prefetch_gen or item.sample is None or item.name in self._samples
                or item.name not in self.pairs):
            return  # unreadable ones are reported when opened
        self._samples[item.name] = item.sample
        while len(self._samples) > SAMPLE_CACHE:
            self._samples.popitem(last=False)

    def _refresh_overlays(self, name: str, s=None, iel: bool = True) -> None:
        s = s or self.sample(name)
        if s is None:
            return
        current = self.current_mask(name)
        self.canvas.set_mask(current)
        self.canvas.set_proposal(self.proposals.get(name), current)
        row = self.queue.model.get(name)
        self.canvas.set_status(row.status if row is not None else None, preview=name in self.previews)
        if iel:
            probs = self._probs.get(name)
            if probs is None and self._saved_predictions is not None:  # computed in the panel's worker
                probs = (self._saved_predictions.request(name, s.image) if self.volumes is None
                         else self._saved_predictions.request_slice(name, self.volumes))
            self.iel_panel.request(s.mask, probs, self.n_classes(), self.training_panel.iel_config())

    def _update_status(self) -> None:
        if self.project is None:
            self.status_label.setText("")
            return
        counts = self.project.counts()
        done = counts["accepted"] + counts["kept"] + counts["edited"]
        text = f"{done}/{len(self.pairs)} reviewed"
        if self.current:
            row = self.queue.model.get(self.current)
            if row is not None:
                score = "–" if row.score is None else format_score(row.score)
                text = f"{self.current} · score {score} · {row.status} · " + text
        self.status_label.setText(text)

    def step_image(self, delta: int) -> None:
        self.queue.step(delta)

    def _request_thumbnail(self, name: str) -> None:
        if self.volumes is not None and self.queue.model.members(name):
            self._request_volume_thumbnail(name)
            return
        pair = self.pairs.get(name)
        if pair is not None:
            self.thumb_queue.put((name, pair.image_path))

    def _start_thumbnails(self) -> None:
        if self.thumb_worker is not None:
            return
        self.thumb_worker = GeneratorWorker(jobs.thumbnail_job, self.thumb_queue, cancel_kwarg="cancel", parent=self)
        self.thumb_worker.yielded.connect(
            lambda t: self.queue.model.set_thumbnail(t.name, thumbnail_pixmap(t.rgb)))
        self.thumb_worker.start()

    def provenance(self):
        from ielstudio.core.session import Provenance

        return Provenance(settings=dict(self._train_settings))

    def _pick_class(self) -> None:
        c = self.canvas.pick_class()
        self.statusBar().showMessage("Move the mouse over a labelled pixel to pick its class" if c is None
                                     else f"The brush paints class {c}", 4000)

    def undo(self) -> None:
        """Undo the last decision, show the image it was on and say what was undone."""
        self._step_history(self.undo_stack.index() - 1, "undo", self.undo_stack.canUndo(), self.undo_stack.undo)

    def redo(self) -> None:
        self._step_history(self.undo_stack.index(), "redo", self.undo_stack.canRedo(), self.undo_stack.redo)

    def _step_history(self, index: int, verb: str, possible: bool, step) -> None:
        if not possible:
            self.statusBar().showMessage(f"Nothing to {verb}", 3000)
            return
        command = self.undo_stack.command(index)
        text = command.text()
        names = [command.name] if isinstance(command, DecisionCommand) else list(getattr(command, "names", []))
        step()
        one_volume = self.volumes is not None and len({self.queue.model.group_of(n) for n in names}) == 1
        if names and (len(names) == 1 or one_volume) and names[0] != self.current:
            self.go_to(names[0])  # show the image (slice) whose decision changed
        self.statusBar().showMessage(f"{'Undid' if verb == 'undo' else 'Redid'}: {text}", 8000)

    def decision_changed(self, name: str) -> None:
        """After a command changed ``name`` in the project: update its row and the view."""
        self.decisions_changed([name])

    def decisions_changed(self, names: list[str]) -> None:
        """After a command changed these images in the project: their rows, the view once."""
        for name in names:
            try:
                row = self.project.image(name)
            except KeyError:
                continue
            self.queue.model.update(name, status=row.status)
            if name == self.current:
                self._refresh_overlays(name, iel=False)
                self._update_slice_bar(name)
        if self.current is not None and any(self.same_volume(n, self.current) for n in names):
            self.show_other_planes(self.current)  # their labels changed
        self._update_status()

    def _need_current(self) -> str | None:
        if self.project is None or self.current is None:
            self.statusBar().showMessage("Open a dataset and select an image first.", 5000)
            return None
        return self.current

    def accept(self, name: str | None = None, advance: bool = True) -> bool:
        """Accept the proposal for ``name`` (default: the current image)."""
        name = name or self._need_current()
        if name is None:
            return False
        prop = self.proposals.get(name)
        if prop is None:
            self.statusBar().showMessage(f"No proposal for {name} yet: train a model first (Ctrl+T).", 6000)
            return False
        if name in self.previews and not self.confirm_accept_preview(name):
            return False
        self.undo_stack.push(DecisionCommand(self, name, "accepted", prop, f"Accept proposal for {name}"))
        if advance and name == self.current:
            self._advance(name)
        return True

    def confirm_accept_preview(self, name: str) -> bool:
        """Ask before accepting a proposal of a model still in training (tests replace this)."""
        changed = self.queue.model.get(name).changed if self.queue.model.get(name) else None
        share = "" if changed is None else f" It changes {changed:.1%} of the pixels."
        answer = QMessageBox.question(
            self, "Accept a preview?",
            f"The proposal for {name} comes from a model still in training (a preview).{share} Accept it anyway?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def keep(self, name: str | None = None, advance: bool = True) -> bool:
        """Keep the original mask of ``name`` (default: the current image)."""
        name = name or self._need_current()
        if name is None:
            return False
        self.undo_stack.push(DecisionCommand(self, name, "kept", None, f"Keep original for {name}"))
        if advance and name == self.current:
            self._advance(name)
        return True

    def apply_stroke(self, footprint: np.ndarray, value: int) -> None:
        name = self._need_current()
        if name is None:
            return
        before = self.current_mask(name)
        if before is None or footprint.shape != before.shape:
            return
        after = paint(before, footprint, value)
        if np.array_equal(after, before):
            return
        what = "Erase" if value == 0 else "Brush"
        self.undo_stack.push(DecisionCommand(self, name, "edited", after, f"{what} on {name}"))

    def accept_object(self, row: int, col: int) -> None:
        """Take the proposal for the one object under (row, col), keep the rest as it is."""
        name = self._need_current()
        if name is None:
            return
        prop = self.proposals.get(name)
        if prop is None:
            self.statusBar().showMessage("No proposal yet: train a model first.", 5000)
            return
        if self.volumes is not None:
            self.accept_object_3d(name, row, col)
            return
        before = self.current_mask(name)
        region = object_under(before, prop, row, col)
        after = before.copy()
        after[region] = prop[region]
        if np.array_equal(after, before):
            self.statusBar().showMessage("The proposal does not change anything there.", 4000)
            return
        self.undo_stack.push(DecisionCommand(self, name, "edited", after, f"Accept object on {name}"))
