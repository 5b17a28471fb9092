"""The training controller of the main window: one background job at a time (training,
or scoring with the saved model), its state, its events, and the proposals it delivers."""

from __future__ import annotations

import dataclasses
import os
import time
from enum import Enum
from pathlib import Path

from ielstudio.core.class_names import with_class_names
from ielstudio.core.review import FEW_HELD_OUT, NOT_RELIABLE, TRUSTED_BY_OBJECTS, augmentation_note, held_out_units

from . import jobs
from .iel_panel import MODEL_MISSING_ADVICE, NO_PREDICTION_STORED, no_prediction_model_missing
from .process_worker import ProcessWorker
from .saved_predictions import SavedModelPredictions
from .workers import GeneratorWorker


PROBS_CACHE = 64  # probability maps kept (for the IEL panel)
STEP_INTERVAL_S = 0.2  # progress, ETA and loss curve refresh at most 5 times a second
ALL_SNAPSHOT_LIMIT = 256  # datasets up to this size get proposals for every image while training


def kept_model(done: "jobs.TrainingFinished") -> str:
    """Which weights a stopped training kept, in words: the automatic budget keeps its
    best evaluation's (`history["best_step"]`) once it has evaluated, otherwise (and a
    fixed number of steps) the last ones."""
    if "folds" in done.history:
        return f"the {len(done.history['folds'])} fold model(s) trained so far"
    best = done.history.get("best_step") if done.history.get("best_agreement") is not None else None
    if best is None or best == done.steps:
        return f"the model of step {done.steps}"
    return f"the model of step {best}, its best evaluation"


class TrainingState(Enum):
    """What the window's background job is doing (a paused job keeps its state; the worker
    says whether it is paused)."""

    IDLE = "idle"
    LOADING = "loading"  # reading the image/mask pairs
    TRAINING = "training"
    SCORING = "scoring"  # proposals and scores for every image, from the kept or saved model
    STOPPING = "stopping"  # Stop pressed: ends after the current step


def warnings_title(warnings: list[str], objects_changed: bool = False) -> str:
    """The title of the notice that shows a review's warnings (`core.review.summary_warnings`);
    ``objects_changed``: do-no-harm rules 3 and 4 removed or added objects in that pass."""
    if warnings[0].startswith(NOT_RELIABLE):
        if objects_changed:
            return "Masks kept, except where model and image agree"
        return "The model is not reliable: masks kept as given"
    if all(TRUSTED_BY_OBJECTS in w for w in warnings):
        return "A class trusted by its objects, below the agreement bar"
    return "Labels kept where the model is not reliable"


class TrainingMixin:
    """Start / pause / resume / stop, the worker's events, proposals and scores into the view."""

    def is_training(self) -> bool:
        return self.train_worker is not None and not self.train_worker.done

    def clean_config(self):
        from ielstudio.core.cleaning import CleanConfig

        try:
            values = self.training_panel.clean_values()
        except ValueError:  # an unreadable class list: the form reports it when training starts
            values = {}
        return dataclasses.replace(CleanConfig(), **values)

    def snapshot_names(self) -> list[str]:
        names = [n for n in self.queue.visible_leaf_names() if n in self.pairs]
        if len(names) <= ALL_SNAPSHOT_LIMIT:
            return names
        first = names[:32]
        if self.current and self.current not in first:
            first.insert(0, self.current)
        return first

    def checkpoint_path(self) -> Path:
        return self.project.path.with_name(self.project.path.stem + "-model.pt")

    def start_training(self, steps: int | None = None, snapshot_every: int | None = None) -> bool:
        """Train on the open dataset in the background; proposals refresh at each snapshot."""
        if self.project is None or not self.pairs:
            self.report_error("Nothing to train on", "open an image folder and a mask folder first")
            return False
        if self.project.read_only:
            self.report_error("Project opened read-only", "a project opened read-only cannot record a model "
                                                          "or scores; start again from its folders to train")
            return False
        if self.is_training():
            if self._job_kind != "score":
                return False
            self._finish_worker("train_worker")  # training replaces a scoring pass in progress
            self.training_state = TrainingState.IDLE
        try:
            config = self.training_panel.config(self.train_base)
            if steps is not None:
                config = dataclasses.replace(config, max_steps=int(steps), min_steps=min(config.min_steps, int(steps)))
                self.training_panel.max_steps.setValue(int(steps))
        except (ValueError, TypeError) as e:
            self.report_error("Invalid training settings", str(e))
            return False
        if snapshot_every is None:
            snapshot_every = max(5, min(50, config.max_steps // 6))
        clean = self.clean_config()
        self._train_settings = {"train": config.to_dict(), "clean": clean.to_dict()}
        self.project.set_setting("train_config", config.to_dict())
        self.training_panel.reset_curves()
        args = (self.scan, config, clean, self.snapshot_names(), snapshot_every, str(self.checkpoint_path()))
        self._job_kind = "train"
        self._start_job(jobs.review_job, args, "loading images…", project_path=str(self.project.path),
                        encoding=self.project.mask_encoding())
        self.statusBar().showMessage("Training started", 4000)
        self.trainingStarted.emit()
        return True

    def score_with_saved_model(self, progress_text: str = "scoring with the saved model…") -> bool:
        """Proposals and scores for every image from the project's saved model (background)."""
        if self.project is None or self.is_training():
            return False
        ref = self.project.checkpoint
        if ref is None:
            self.statusBar().showMessage("No saved model in this project yet: train one first.", 5000)
            return False
        if not Path(ref.path).is_file():
            self.statusBar().showMessage(f"The project's model {ref.path} is missing: {MODEL_MISSING_ADVICE}.", 8000)
            return False
        self.checkpoint = Path(ref.path)
        self._train_settings = {"checkpoint": str(ref.path), "clean": self.clean_config().to_dict()}
        self._job_kind = "score"
        self._start_job(jobs.checkpoint_scoring_job, (self.scan, str(ref.path), self.clean_config()),
                        progress_text, project_path=str(self.project.path),
                        expected_sha256=ref.sha256, encoding=self.project.mask_encoding())
        return True

    def review_with_model(self, path: str | Path | None = None) -> bool:
        """Proposals and scores for every image from a model trained elsewhere (`ielstudio
        train`, a cluster run), without training; the project keeps it as its model."""
        if self.project is None or self.is_training():
            self.statusBar().showMessage("Open a data set first, and wait until training ends." if self.project is None
                                         else "Training is running: stop it first.", 5000)
            return False
        if path is None:
            from PySide6.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(self, "Review with a saved model", "", "Models (*.pt *.pth)")
            if not path:
                return False
        path = Path(path)
        self.checkpoint = path
        self._train_settings = {"checkpoint": str(path), "clean": self.clean_config().to_dict()}
        self._job_kind = "score"
        self._start_job(jobs.checkpoint_scoring_job, (self.scan, str(path), self.clean_config()),
                        f"scoring with {path.name}…", project_path=str(self.project.path),
                        encoding=self.project.mask_encoding(), record_model=True)
        self.training_panel.set_message(f"Model: {path.name}, trained elsewhere (not trained here)")
        return True

    def _start_job(self, fn, args: tuple, text: str, **kwargs) -> None:
        from ielstudio.core.training import StepEvent

        self.training_panel.set_running(True)
        self.training_panel.set_progress_text(text)
        self._job_text = text  # what the bar says again once loading is done, until the first scores
        self.training_state = TrainingState.LOADING
        self._scoring_started = None
        self.last_training = None
        self.queue.freeze_order(True)  # rows keep their place until the job ends
        self._saved_predictions = None  # the job's own probabilities replace the saved model's
        if self.train_in_process:
            w = ProcessWorker(fn, *args, min_interval_s=STEP_INTERVAL_S, parent=self, **kwargs)
        else:
            import torch

            # leave one core to the GUI thread while training runs in the worker thread
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
            w = GeneratorWorker(fn, *args, cancel_kwarg="cancel", progress_kwarg="report",
                                coalesce=lambda ev: isinstance(ev, StepEvent), min_interval_s=STEP_INTERVAL_S,
                                parent=self,
                                **kwargs)
        w.yielded.connect(self._on_training_event)
        w.progress.connect(self._on_training_progress)
        w.finished.connect(self._on_training_finished)
        w.errored.connect(self._on_training_error)
        w.paused.connect(lambda: self.training_panel.set_running(True, paused=True))
        w.resumed.connect(lambda: self.training_panel.set_running(True, paused=False))
        self.train_worker = w
        try:
            w.start()
        except Exception as e:  # e.g. no process could be started: say so, keep the session
            self.train_worker = None
            self._on_training_error(f"cannot start the background job: {e}")

    def pause_training(self) -> None:
        if self.is_training():
            self.train_worker.pause()
            self.training_panel.set_message("Paused (the current step finishes first)")

    def resume_training(self) -> None:
        if self.is_training():
            self.train_worker.resume()
            self.training_panel.set_message("Resumed")

    def _toggle_pause(self) -> None:
        if self.is_training():
            (self.resume_training if self.train_worker.is_paused() else self.pause_training)()

    def stop_training(self) -> None:
        """Stop after the current step; the model trained so far is kept."""
        if self.is_training():
            self.train_worker.request_stop()
            self.training_state = TrainingState.STOPPING
            self.training_panel.set_message("Stopping after this step…")

    def _on_training_progress(self, done: int, total: int) -> None:
        if self.training_state == TrainingState.LOADING:
            self.training_panel.progress.setRange(0, max(1, total))
            self.training_panel.progress.setValue(done)
            unit = "volumes" if self.volumes is not None else "images"
            self.training_panel.set_progress_text(f"loading {unit} {done}/{total}")

    def _on_training_event(self, ev) -> None:
        from ielstudio.core.training import EvalEvent, StepEvent

        if isinstance(ev, jobs.DatasetInfo):
            self._on_dataset_info(ev)
        elif isinstance(ev, StepEvent):
            if self.training_state == TrainingState.LOADING:
                self.training_state = TrainingState.TRAINING
            self.training_panel.on_step(ev)
        elif isinstance(ev, EvalEvent):
            self.training_panel.on_eval(ev)
        elif isinstance(ev, jobs.Reviews):
            self.apply_reviews(ev)
        elif isinstance(ev, jobs.TrainingFinished):
            self._on_done(ev)

    def _on_dataset_info(self, info: "jobs.DatasetInfo") -> None:
        """Loading found the class mapping and the unusable files: record both."""
        self.dataset_info = info
        if self.training_state == TrainingState.LOADING:
            scoring = self._job_kind == "score"
            self.training_state = TrainingState.SCORING if scoring else TrainingState.TRAINING
            self.training_panel.set_progress_text(self._job_text if scoring else "starting…")
        self.training_panel.set_data_shape(info.in_channels, info.n_classes)
        self.mark_skipped_files(info.skipped)
        self.use_encoding(info.encoding)

    def apply_reviews(self, reviews: "jobs.Reviews") -> None:
        """New proposals and scores: into the queue, the project (one transaction) and the view."""
        if not reviews.items or self.project is None:
            return
        rows = []
        if reviews.step is not None:  # a snapshot of a model still in training
            self.previews.update(reviews.items)
        else:
            self.previews.difference_update(reviews.items)
        if reviews.source is not None and reviews.source != self.proposals.source:
            self.proposals.attach(self.project, reviews.source)  # a new model: its stored proposals
        for name, r in reviews.items.items():
            self.proposals.put(name, r.proposal, stored=reviews.source is not None)
            self._probs[name] = r.probs
            self._probs.move_to_end(name)
            rows.append((name, r.score, r.changed, r.parts))
        while len(self._probs) > PROBS_CACHE:
            self._probs.popitem(last=False)
        self.queue.model.update_many({n: {"score": s, "changed": c, "score_parts": parts}
                                      for n, s, c, parts in rows})
        if reviews.volume_scores and reviews.step is None:
            self.queue.model.set_group_scores(reviews.volume_scores)
        if self.current in reviews.items:
            self._refresh_overlays(self.current)
            self._update_slice_bar(self.current)
        self._update_status()
        if reviews.step is None:
            self._show_scoring_progress(reviews)
        if reviews.step is None and reviews.done == reviews.total:  # a whole pass: its verdict
            self._whole_pass_applied = True
            self._start_at_most_doubtful()
            self.show_review_notice(reviews.warnings, bool(reviews.objects_removed or reviews.regions_added))
        self.reviewsApplied.emit(reviews)

    def _start_at_most_doubtful(self) -> None:
        """The first whole scoring pass after the data set opened, while the user has not
        moved from the image the window picked and decided nothing: show the queue's top
        row (worst first by default), where the review starts. Once the queue is ranked:
        while a job runs its order is frozen, so the job's end calls this again."""
        if (not self._whole_pass_applied or self.queue.order_frozen() or self._auto_selected is None
                or self.queue.current_name() != self._auto_selected or self.undo_stack.count()):
            return
        names = self.queue.visible_names()
        self._auto_selected = None
        if names and names[0] != self.queue.current_name() and self.queue.select(names[0]):
            self.statusBar().showMessage(f"Scores are in: the review starts at the top of the queue, {names[0]}", 8000)

    def show_review_notice(self, warnings: list[str], objects_changed: bool = False) -> None:
        """The bar over the image says what the last scoring pass kept as given and why
        (`review_notice`), and the status bar for a while; no warnings hide it."""
        if not warnings:
            self.review_notice.clear()
            return
        title = warnings_title(warnings, objects_changed)
        warnings = with_class_names(warnings, self.class_names_by_index())
        self.review_notice.show_warnings(title, warnings)
        self.statusBar().showMessage(f"{title}: {warnings[0]}", 15000)

    def show_last_notice(self) -> None:
        """Training > Show what the last scoring pass kept: the notice again after ✕ hid it."""
        if self.review_notice.warnings():
            self.review_notice.show()
        else:
            self.statusBar().showMessage("The last scoring pass kept nothing as given: no notice", 6000)

    def _show_scoring_progress(self, reviews: "jobs.Reviews") -> None:
        """Its own bar, with an ETA from the images scored so far in this pass."""
        now = time.monotonic()
        if self._scoring_started is None or reviews.done <= len(reviews.items):
            self._scoring_started = (now, reviews.done)  # the first chunk: the clock starts here
            eta = None
        else:
            t0, n0 = self._scoring_started
            rate = (now - t0) / max(1, reviews.done - n0)
            eta = rate * (reviews.total - reviews.done)
        self.training_panel.on_scoring(reviews.done, reviews.total, eta)

    def _on_done(self, ev: "jobs.TrainingFinished") -> None:
        self.last_training = ev
        agreement = ev.history.get("best_agreement")
        held, what = held_out_units(ev.history.get("holdout", []))
        few = "folds" not in ev.history and 0 < held < FEW_HELD_OUT
        head = (f"Stopped after {ev.steps} steps; the proposals come from {kept_model(ev)}"
                if ev.reason == "cancelled" and ev.checkpoint and ev.steps else f"Done: {ev.steps} steps ({ev.reason})")
        self.training_panel.set_message(
            head + ("" if agreement is None else f"; agreement {agreement:.3f}")
            + (f" on {held} held-out {what}: few, a rough verdict (Folds 3 checks every image)" if few else "")
            + (f"; {note}" if (note := augmentation_note(ev.history)) else ""))
        if ev.checkpoint:  # the job recorded it in the project
            self.checkpoint = Path(ev.checkpoint)
        if ev.reason != "cancelled" and self.training_state != TrainingState.STOPPING:
            self.training_state = TrainingState.SCORING
            self.training_panel.set_progress_text("scoring every image with the kept model…")

    def _on_training_finished(self, result) -> None:
        stopped = self.training_state == TrainingState.STOPPING
        finished = self.last_training
        self.training_state = TrainingState.IDLE
        self.queue.freeze_order(False)  # re-rank once, now that the scores are final
        self._start_at_most_doubtful()
        if self.volumes is not None:
            self.queue.model.clear_thumbnails()  # a volume's thumbnail: its worst slice, known now
        self.training_panel.set_running(False)
        if stopped:
            self.training_panel.set_progress_text("stopped")
        else:
            self.training_panel.finish_progress("done")
        self.trainingFinished.emit(finished)
        if (stopped and self._job_kind == "train" and finished is not None and finished.reason == "cancelled"
                and finished.checkpoint and finished.steps):
            # stopped while training: the job scores nothing after training, but the saved model is
            # what was kept, so its proposals replace the last preview (Start replaces this pass).
            # Stopped while scoring after training: the user stopped that pass; leave it.
            self.score_with_saved_model(progress_text=f"scoring every image with {kept_model(finished)}…")

    def _on_training_error(self, message: str) -> None:
        self.training_state = TrainingState.IDLE
        self.queue.freeze_order(False)
        self.training_panel.set_running(False)
        self.training_panel.set_progress_text("failed")
        self.training_panel.set_message(message)
        self.report_error("Training failed", message + "\nThe review session is unchanged.")
        self.trainingFinished.emit(None)

    def _load_checkpoint_from_project(self) -> None:
        """Reopening a project with a saved model: the proposals and curves it stored show at
        once; only when they are missing (a scoring pass cut short, other clean settings) are
        they recomputed with the model, in the background."""
        from ielstudio.core.session import proposal_source

        ref = self.project.checkpoint
        if ref is None:
            return
        source = proposal_source(ref.sha256, self.clean_config().to_dict())
        last = self.project.get_setting(jobs.LAST_REVIEW) or {}
        curves = self.project.get_setting(jobs.TRAINING_CURVES)
        if curves:
            self.training_panel.show_curves(curves)
        if last.get("source") == source and last.get("complete"):
            self.checkpoint = Path(ref.path)
            self.proposals.attach(self.project, source)
            warnings = last.get("warnings") or []
            if Path(ref.path).is_file():
                self.iel_panel.set_no_prediction(*NO_PREDICTION_STORED)
                self._saved_predictions = SavedModelPredictions(self.checkpoint)  # maps of the shown image
                self.training_panel.set_message(f"Proposals of the saved model {Path(ref.path).name}, as stored in "
                                                "the project")
            else:  # moved or deleted: the stored proposals stand, nothing can predict or score again
                self.iel_panel.set_no_prediction(*no_prediction_model_missing(Path(ref.path).name))
                self.training_panel.set_message(f"Proposals as stored in the project; its model {ref.path} is "
                                                "missing, so there are no prediction maps and no scoring again")
            self.show_review_notice(warnings, bool(last.get("objects_changed")))  # what they kept, and why
            self.training_panel.finish_progress("proposals loaded")
            if self.current:
                self._refresh_overlays(self.current)
            return
        if self.project.read_only or not Path(ref.path).is_file():
            return  # nothing may be written into a project opened to salvage it
        self.checkpoint = Path(ref.path)
        self.training_panel.set_message(f"Saved model {Path(ref.path).name}: recomputing its proposals")
        self.score_with_saved_model()

