"""The main window: review queue | canvas | IEL panel over the training panel.

It owns the open session project and forwards user intent to core: scanning and
loading (core.dataset), training (core.training, in a worker), proposals and
scores (core.review, in the worker), decisions (core.session, one transaction
each, through undoable commands) and export (core.session.iter_export).

This module builds the window, keeps its settings and closes it; each other
responsibility is a mixin in its own module: actions and menus (window_menus),
the project (window_project), the review session (window_review), volume data
sets (window_volumes) and the training controller (window_training).
"""

from __future__ import annotations

import dataclasses
import json
import queue
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QIcon, QUndoStack
from PySide6.QtWidgets import (QFrame, QLabel, QMainWindow, QMessageBox, QScrollArea, QSplitter, QTabWidget, QVBoxLayout,
                               QWidget)

from . import jobs
from .canvas import OVERLAYS, Canvas
from .iel_panel import IELPanel
from .ortho_views import OrthoViews
from .proposals import Proposals
from .review_notice import ReviewNotice
from .review_queue import ReviewQueue
from .slice_bar import SliceBar
from .training_panel import TrainingPanel
from .window_bulk import BulkDecisionsMixin
from .window_menus import MenusMixin
from .window_project import ProjectMixin
from .window_recovery import RecoveryMixin
from .window_review import ReviewMixin
from .window_training import TrainingMixin, TrainingState
from .window_volumes import VolumeMixin
from .workers import GeneratorWorker

MAX_RECENT = 8
#: The review queue's narrowest width (px): thumbnail, name and score columns.
QUEUE_MIN_WIDTH = 240


def freeze_startup_objects() -> None:
    """Move everything built so far (modules, widgets) out of the cyclic garbage collector's
    reach: its full passes over them would otherwise pause the GUI now and then."""
    import gc

    gc.collect()
    gc.freeze()


def default_settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "ielstudio", "IEL Studio")


def user_data_dir() -> Path:
    from platformdirs import user_data_dir as _udd

    return Path(_udd("ielstudio", appauthor=False))


def icon_path() -> Path | None:
    from ielstudio.core.paths import resources_dir

    for name in ("icons/ielstudio.svg", "icons/ielstudio-256.png"):
        p = resources_dir() / name
        if p.is_file():
            return p
    return None


class MainWindow(MenusMixin, ProjectMixin, RecoveryMixin, ReviewMixin, BulkDecisionsMixin, VolumeMixin, TrainingMixin,
                 QMainWindow):
    """IEL Studio's window. Signals let scripts and tests wait for background work."""

    datasetOpened = Signal()
    datasetSettled = Signal()  # the class mapping read on open is stored
    trainingStarted = Signal()
    trainingFinished = Signal(object)  # DoneEvent, or None if it failed or was cancelled hard
    reviewsApplied = Signal(object)  # jobs.Reviews
    scoringFinished = Signal()
    exportFinished = Signal(object)  # session.ExportReport, or None on failure
    projectSaved = Signal(str)  # the path saved to and now open, or "" when saving failed
    errorShown = Signal(str)

    def __init__(self, settings: QSettings | None = None, data_dir: str | Path | None = None):
        super().__init__()
        self.settings = settings if settings is not None else default_settings()
        self.data_dir = Path(data_dir) if data_dir is not None else user_data_dir()
        self.setWindowTitle("IEL Studio")
        ip = icon_path()
        if ip is not None:
            self.setWindowIcon(QIcon(str(ip)))
        self.setAcceptDrops(True)

        self.project = None
        self.scan = None
        self.volumes = None  # core.volume_review.VolumeSlices of an open volume data set
        self.pairs: dict = {}
        self.dataset_info: jobs.DatasetInfo | None = None  # what the last load found
        self._samples: OrderedDict = OrderedDict()
        self.proposals = Proposals()  # recent ones in memory, the rest read from the project
        self.planning_worker = None  # `plan_in_background`: decisions for many images made ready
        self._probs: OrderedDict = OrderedDict()
        self.checkpoint: Path | None = None  # the model behind the proposals
        self.train_in_process = True  # training in a child process keeps the GUI thread free of the GIL
        self.last_training: jobs.TrainingFinished | None = None
        self._job_kind = "train"  # what train_worker runs: "train" or "score" (saved model)
        self._job_text = ""  # the progress text the running job started with
        self.current: str | None = None
        self.last_error: str | None = None
        self.train_worker: GeneratorWorker | None = None
        self.export_worker: GeneratorWorker | None = None
        self.thumb_worker: GeneratorWorker | None = None
        self.settle_worker: GeneratorWorker | None = None  # reads the masks' class mapping on open
        self.thumb_queue: queue.Queue = queue.Queue()
        self.prefetch_worker: GeneratorWorker | None = None
        self.prefetch_queue: queue.Queue = queue.Queue()
        self._prefetching: set[str] = set()
        #: a volume's slice to show once the volume is open (`_open_before_showing`), and a
        #: volume whose background open failed, to be read once in the GUI thread (to report why)
        self._waiting_for: str | None = None
        self._read_now: str | None = None
        #: images whose proposal comes from a training snapshot (a model still in training)
        self.previews: set[str] = set()
        #: the row the window selected itself when the data set opened, until the user moves:
        #: the first whole scoring pass then starts the review at the most doubtful image
        self._auto_selected: str | None = None
        self._whole_pass_applied = False  # a whole scoring pass has come in since the data set opened
        #: a reopened project's saved model, predicting the shown image for the IEL panel
        self._saved_predictions = None
        #: images whose image or mask file failed to load this session: name -> reason
        self._unreadable: dict[str, str] = {}
        self._prefetch_gen = 0  # bumped whenever the cache is cleared: late results are dropped
        self._train_settings: dict = {}
        self._scoring_started: tuple[float, int] | None = None  # (time, images done) of this scoring pass
        self.train_base = None  # TrainConfig for the fields the form does not show (None = defaults)
        self.training_state = TrainingState.IDLE  # what the background job is doing
        #: the open data set's class names by stored label value (`core.class_names`; {}: numbered)
        self.described_classes: dict[int, str] = {}
        self._error_box: QMessageBox | None = None
        self.undo_stack = QUndoStack(self)
        import torch

        # this process only computes small things (defect maps, thumbnails); training runs in
        # its own process and gets the other cores
        torch.set_num_threads(1)

        # --- widgets
        self.queue = ReviewQueue()
        self.canvas = Canvas()
        self.slice_bar = SliceBar()
        self.iel_panel = IELPanel()
        self.training_panel = TrainingPanel()
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.setSpacing(0)
        # what the last scoring pass kept as given, and why: in view while deciding
        self.review_notice = ReviewNotice()
        centre_layout.addWidget(self.review_notice)
        centre_layout.addWidget(self.canvas, 1)
        centre_layout.addWidget(self.slice_bar)
        self.top_split = QSplitter(Qt.Orientation.Horizontal)
        self.top_split.addWidget(self.queue)
        self.top_split.addWidget(centre)
        # beside the slice: the defect maps and, for a volume, its other two planes (a tab each:
        # either needs the column's height)
        self.ortho_views = OrthoViews()
        self.side_tabs = QTabWidget()
        # in a short window the maps keep their height (`iel_panel.MAPS_MIN_HEIGHT`) and the
        # column scrolls, rather than the maps shrinking to specks or the window growing
        self.iel_scroll = QScrollArea()
        self.iel_scroll.setWidget(self.iel_panel)
        self.iel_scroll.setWidgetResizable(True)
        self.iel_scroll.setFrameShape(QFrame.Shape.NoFrame)
        # only upwards: the column stays as wide as the panel needs, as it did without the scroll area
        self.iel_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.iel_scroll.setMinimumWidth(self.iel_panel.minimumSizeHint().width()
                                        + self.iel_scroll.verticalScrollBar().sizeHint().width())
        self.side_tabs.addTab(self.iel_scroll, "Defect maps (IEL)")
        self.side_tabs.addTab(self.ortho_views, "Other planes")
        self.top_split.addWidget(self.side_tabs)
        self.top_split.setStretchFactor(1, 1)
        # the queue never narrower than its thumbnail, name and score columns (a saved
        # splitter state from a smaller screen squeezed it to names only), never collapsed
        self.queue.setMinimumWidth(QUEUE_MIN_WIDTH)
        self.top_split.setCollapsible(0, False)
        self.top_split.setSizes([400, 780, 380])
        self.main_split = QSplitter(Qt.Orientation.Vertical)
        self.main_split.addWidget(self.top_split)
        self.main_split.addWidget(self.training_panel)
        self.main_split.setStretchFactor(0, 1)
        self.main_split.setSizes([640, 300])
        self.setCentralWidget(self.main_split)
        self.status_label = QLabel("")
        self.statusBar().addPermanentWidget(self.status_label)

        self.queue.currentChanged.connect(self.show_image)
        self.queue.model.thumbnailNeeded.connect(self._request_thumbnail)
        self.canvas.strokeFinished.connect(self.apply_stroke)
        self.canvas.objectClicked.connect(self.accept_object)
        self.canvas.sliceWheel.connect(self.step_slice)
        self.slice_bar.sliceChanged.connect(self._slice_bar_moved)
        self.canvas.pointClicked.connect(self.move_cross)
        self.ortho_views.pointPicked.connect(self.go_to_voxel)
        self.canvas.view_controls.levelsChanged.connect(self.ortho_views.set_levels)
        self.canvas.brushRadiusChanged.connect(lambda r: self.statusBar().showMessage(f"Brush radius {r} px", 2000))
        self.training_panel.startRequested.connect(lambda: self.start_training())
        self.training_panel.pauseRequested.connect(self.pause_training)
        self.training_panel.resumeRequested.connect(self.resume_training)
        self.training_panel.stopRequested.connect(self.stop_training)
        self.undo_stack.indexChanged.connect(lambda _: self._update_title())

        self._build_actions()
        self._build_menus()
        self._open_volumes(None)
        self._restore_settings()
        self.statusBar().showMessage("Open an image folder and a mask folder (File menu or drag and drop).")


    # ------------------------------------------------------------------ settings
    def recent_projects(self) -> list[str]:
        value = self.settings.value("recent_projects", [])
        if isinstance(value, str):
            value = [value]
        return [p for p in (value or []) if Path(p).is_file()]

    def _add_recent(self, path: Path) -> None:
        p = str(Path(path).resolve())
        recent = [r for r in self.recent_projects() if r != p]
        self.settings.setValue("recent_projects", [p, *recent][:MAX_RECENT])

    def _restore_settings(self) -> None:
        geo = self.settings.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1560, 980)
        for key, split in (("window/top_split", self.top_split), ("window/main_split", self.main_split)):
            state = self.settings.value(key)
            if state is not None:
                split.restoreState(state)
        for name in OVERLAYS:
            op = self.settings.value(f"overlay/{name}/opacity")
            if op is not None:
                self.canvas.set_overlay_opacity(name, float(op))
        radius = self.settings.value("brush/radius")
        if radius is not None:
            self.canvas.set_brush_radius(int(radius))
        form = self.settings.value("training/form")
        if form:
            try:
                self._apply_form_json(form)
            except (ValueError, TypeError, KeyError):
                pass  # settings of an older version: keep the defaults

    def _apply_form_json(self, text: str) -> None:
        train, iel, *clean = json.loads(text)  # [train, iel] from versions before the hull option
        iel["convex_classes"] = tuple(iel.get("convex_classes", ()))
        self.training_panel.convex_hull.setChecked(bool(clean and clean[0].get("convex_hull_classes")))
        base = self.training_panel.default_config()
        cfg = dataclasses.replace(base, iel=dataclasses.replace(base.iel, **iel), **train)
        self.training_panel.set_from_config(cfg)

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/top_split", self.top_split.saveState())
        self.settings.setValue("window/main_split", self.main_split.saveState())
        for name in OVERLAYS:
            self.settings.setValue(f"overlay/{name}/opacity", self.canvas.overlay_opacity(name))
        self.settings.setValue("brush/radius", self.canvas.brush_radius)
        try:
            train, iel = self.training_panel.form_values()
            iel = dict(iel, convex_classes=list(iel["convex_classes"]))
            clean = {k: list(v) for k, v in self.training_panel.clean_values().items()}
            self.settings.setValue("training/form", json.dumps([train, iel, clean]))
        except ValueError:
            pass
        self.settings.sync()

    # ------------------------------------------------------------------ errors
    def report_error(self, title: str, message: str) -> None:
        """Show a problem in the status bar and a (non-blocking) dialog; never raises."""
        self.last_error = message
        self.statusBar().showMessage(f"{title}: {message}", 15000)
        if self._error_box is not None:
            self._error_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=0: setattr(self, "_error_box", None))
        self._error_box = box
        box.open()
        self.errorShown.emit(message)


    def _update_title(self) -> None:
        import shiboken6

        if not shiboken6.isValid(self) or not shiboken6.isValid(self.undo_stack):
            return  # the window is being torn down
        title = "IEL Studio"
        if self.project is not None:
            title = f"{self.project.path.stem} – {title}"
            n = self.undo_stack.index()  # the edits in force: an undone one no longer counts
            if n:
                title = f"{title} ({n} edit{'s' if n != 1 else ''} this session)"
        self.setWindowTitle(title)


    # ------------------------------------------------------------------ closing
    def confirm_close_during_training(self) -> bool:
        """Ask before stopping a running training (tests replace this method)."""
        answer = QMessageBox.question(
            self, "Training is running", "Stop training and close? The model trained so far is discarded.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _finish_worker(self, attr: str, timeout_ms: int = 30000) -> None:
        w = getattr(self, attr)
        if w is not None:
            w.stop(timeout_ms)
            setattr(self, attr, None)

    def _stop_workers(self) -> None:
        for attr in ("train_worker", "export_worker", "settle_worker", "planning_worker"):
            self._finish_worker(attr)
        if self.prefetch_worker is not None:
            self.prefetch_queue.put((None, None, None, None))
            self.prefetch_worker.stop(5000)
            self.prefetch_worker = None
            self.prefetch_queue = queue.Queue()
            self._prefetching.clear()
            self._waiting_for = None
        if self.thumb_worker is not None:
            self.thumb_queue.put((None, None))  # wakes the thread, which then ends
            self.thumb_worker.stop(5000)
            self.thumb_worker = None
            self.thumb_queue = queue.Queue()
        self.iel_panel.stop()
        self.ortho_views.stop()
        self.training_state = TrainingState.IDLE
        self.training_panel.set_running(False)

    def closeEvent(self, event) -> None:
        if self.is_training() and not self.confirm_close_during_training():
            event.ignore()
            return
        self.save_settings()
        self.close_project()
        super().closeEvent(event)

