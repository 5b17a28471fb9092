"""The main window: review queue | canvas | IEL panel over the training panel.

It owns the open session project and forwards user intent to core: scanning and
loading (core.dataset), training (core.training, in a worker), proposals and
scores (core.cleaning, in the worker), decisions (core.session, one transaction
each, through undoable commands) and export (core.session.iter_export).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
)

from . import jobs
from .canvas import OVERLAYS, Canvas
from .dialogs import SHORTCUTS, AboutDialog, ShortcutsDialog
from .edit_commands import DecisionCommand, object_under, paint
from .iel_panel import IELPanel
from .proposals import Proposals
from .review_queue import QueueRow, ReviewQueue, thumbnail_pixmap
from .training_panel import TrainingPanel
from .workers import GeneratorWorker, ProcessWorker

MAX_RECENT = 8
SAMPLE_CACHE = 24  # images kept loaded when the whole dataset is not
PROBS_CACHE = 64  # probability maps kept (for the IEL panel)
STEP_INTERVAL_S = 0.2  # progress, ETA and loss curve refresh at most 5 times a second
ALL_SNAPSHOT_LIMIT = 256  # datasets up to this size get proposals for every image while training


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


#: Folder names that say nothing about the data: the project is named after the parent too.
GENERIC_FOLDER_NAMES = {"images", "image", "imgs", "img", "raw", "data", "input", "inputs", "scans", "slices"}


def _safe_file_name(text: str) -> str:
    """``text`` usable as a file name everywhere (letters, digits, ``-_.``), at most 60 characters."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "project"
    return out[:60]


class MainWindow(QMainWindow):
    """IEL Studio's window. Signals let scripts and tests wait for background work."""

    datasetOpened = Signal()
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
        self.pairs: dict = {}
        self.dataset_info: jobs.DatasetInfo | None = None  # what the last load found
        self._samples: OrderedDict = OrderedDict()
        self.proposals = Proposals()  # recent ones in memory, the rest read from the project
        self._probs: OrderedDict = OrderedDict()
        self.checkpoint: Path | None = None  # the model behind the proposals
        self.train_in_process = True  # training in a child process keeps the GUI thread free of the GIL
        self.last_training: jobs.TrainingFinished | None = None
        self._job_kind = "train"  # what train_worker runs: "train" or "score" (saved model)
        self.current: str | None = None
        self.last_error: str | None = None
        self.train_worker: GeneratorWorker | None = None
        self.export_worker: GeneratorWorker | None = None
        self.thumb_worker: GeneratorWorker | None = None
        self.thumb_queue: queue.Queue = queue.Queue()
        self.prefetch_worker: GeneratorWorker | None = None
        self.prefetch_queue: queue.Queue = queue.Queue()
        self._prefetching: set[str] = set()
        #: images whose proposal comes from a training snapshot (a model still in training)
        self.previews: set[str] = set()
        #: images whose image or mask file failed to load this session: name -> reason
        self._unreadable: dict[str, str] = {}
        self._prefetch_gen = 0  # bumped whenever the cache is cleared: late results are dropped
        self._train_settings: dict = {}
        self._scoring_started: tuple[float, int] | None = None  # (time, images done) of this scoring pass
        self.train_base = None  # TrainConfig for the fields the form does not show (None = defaults)
        self._training_state = "idle"  # idle | loading | training | paused | stopping
        self._error_box: QMessageBox | None = None
        self.undo_stack = QUndoStack(self)
        import torch

        # this process only computes small things (defect maps, thumbnails); training runs in
        # its own process and gets the other cores
        torch.set_num_threads(1)

        # --- widgets
        self.queue = ReviewQueue()
        self.canvas = Canvas()
        self.iel_panel = IELPanel()
        self.training_panel = TrainingPanel()
        self.top_split = QSplitter(Qt.Orientation.Horizontal)
        self.top_split.addWidget(self.queue)
        self.top_split.addWidget(self.canvas)
        self.top_split.addWidget(self.iel_panel)
        self.top_split.setStretchFactor(1, 1)
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
        self.canvas.brushRadiusChanged.connect(lambda r: self.statusBar().showMessage(f"Brush radius {r} px", 2000))
        self.training_panel.startRequested.connect(lambda: self.start_training())
        self.training_panel.pauseRequested.connect(self.pause_training)
        self.training_panel.resumeRequested.connect(self.resume_training)
        self.training_panel.stopRequested.connect(self.stop_training)
        self.undo_stack.indexChanged.connect(lambda _: self._update_title())

        self._build_actions()
        self._build_menus()
        self._restore_settings()
        self.statusBar().showMessage("Open an image folder and a mask folder (File menu or drag and drop).")

    # ------------------------------------------------------------------ actions and menus
    def _build_actions(self) -> None:
        handlers = {
            "open_images": self.choose_images_folder,
            "open_masks": self.choose_masks_folder,
            "open_project": self.choose_project,
            "save_as": lambda: self.save_project_as(),
            "close_project": self.close_project_by_user,
            "export": lambda: self.export(),
            "quit": self.close,
            "undo": self.undo,
            "redo": self.redo,
            "accept": lambda: self.accept(),
            "keep": lambda: self.keep(),
            "accept_worse": lambda: self.accept_worse_than(),
            "next": lambda: self.step_image(1),
            "previous": lambda: self.step_image(-1),
            "tool_pan": lambda: self.canvas.set_tool("pan"),
            "brush": lambda: self.canvas.set_tool("brush"),
            "eraser": lambda: self.canvas.set_tool("eraser"),
            # O over the image accepts the object under the cursor; elsewhere it picks the object tool
            "tool_object": lambda: self.canvas.accept_object_under_cursor() or self.canvas.set_tool("object"),
            "pick_class": self._pick_class,
            "smaller": lambda: self.canvas.set_brush_radius(self.canvas.brush_radius - max(1, self.canvas.brush_radius // 5)),
            "larger": lambda: self.canvas.set_brush_radius(self.canvas.brush_radius + max(1, self.canvas.brush_radius // 5)),
            "fit_view": self.canvas.view_controls.fit,
            "actual_size": self.canvas.view_controls.actual_size,
            "auto_contrast": lambda: self.canvas.view_controls.set_mode("auto"),
            "full_contrast": lambda: self.canvas.view_controls.set_mode("full"),
            "toggle_mask": lambda: self._toggle_overlay("mask"),
            "toggle_proposal": lambda: self._toggle_overlay("proposal"),
            "toggle_difference": lambda: self._toggle_overlay("difference"),
            "train": lambda: self.start_training(),
            "pause": self._toggle_pause,
            "stop": self.stop_training,
            "shortcuts": self.show_shortcuts,
        }
        self.actions: dict[str, QAction] = {}
        for key, keys, text in SHORTCUTS:
            a = QAction(text, self)
            a.setShortcuts([QKeySequence(k) for k in keys])
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.triggered.connect(handlers[key])
            self.addAction(a)
            self.actions[key] = a
        self.actions["about"] = QAction("About IEL Studio", self, triggered=self.show_about)
        self.actions["undo"].setEnabled(False)
        self.actions["redo"].setEnabled(False)
        self.undo_stack.canUndoChanged.connect(self.actions["undo"].setEnabled)
        self.undo_stack.canRedoChanged.connect(self.actions["redo"].setEnabled)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        for key in ("open_images", "open_masks", "open_project"):
            file_menu.addAction(self.actions[key])
        self.recent_menu = file_menu.addMenu("Recent projects")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.actions["save_as"])
        file_menu.addAction(self.actions["close_project"])
        file_menu.addSeparator()
        file_menu.addAction(self.actions["export"])
        file_menu.addSeparator()
        file_menu.addAction(self.actions["quit"])
        edit = mb.addMenu("&Edit")
        for key in ("undo", "redo", None, "accept", "keep", "accept_worse", None,
                    "tool_pan", "brush", "eraser", "tool_object", "pick_class", "smaller", "larger"):
            edit.addSeparator() if key is None else edit.addAction(self.actions[key])
        view = mb.addMenu("&View")
        for key in ("next", "previous", None, "fit_view", "actual_size", "auto_contrast", "full_contrast", None,
                    "toggle_mask", "toggle_proposal", "toggle_difference"):
            view.addSeparator() if key is None else view.addAction(self.actions[key])
        train = mb.addMenu("&Training")
        for key in ("train", "pause", "stop"):
            train.addAction(self.actions[key])
        help_menu = mb.addMenu("&Help")
        help_menu.addAction(self.actions["shortcuts"])
        help_menu.addAction(self.actions["about"])

    def _toggle_overlay(self, name: str) -> None:
        self.canvas.set_overlay_visible(name, not self.canvas.overlay_visible(name))

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_projects()
        if not recent:
            a = self.recent_menu.addAction("(none)")
            a.setEnabled(False)
        for p in recent:
            self.recent_menu.addAction(p, lambda p=p: self.open_project(p))

    def show_shortcuts(self) -> None:
        ShortcutsDialog(self).open()

    def show_about(self) -> None:
        AboutDialog(self).open()

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

    # ------------------------------------------------------------------ opening
    def default_project_path(self, images_dir: str | Path, masks_dir: str | Path) -> Path:
        """One project per (images, masks) folder pair, in the user data folder, named after the
        data (``nuclei-images-1a2b3c.ielproj`` for ``.../nuclei/images``: a generic folder name
        takes its parent's). A project made under the old name (``images-<10 hex>``) is kept."""
        images = Path(images_dir).resolve()
        key = f"{images}\n{Path(masks_dir).resolve()}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        folder = self.data_dir / "projects"
        legacy = folder / f"{images.name}-{digest[:10]}.ielproj"
        if legacy.exists():
            return legacy
        label = images.name
        if label.lower() in GENERIC_FOLDER_NAMES and images.parent.name:
            label = f"{images.parent.name}-{label}"
        return folder / f"{_safe_file_name(label)}-{digest[:6]}.ielproj"

    def choose_images_folder(self) -> None:
        start = self.settings.value("last/images_dir", "")
        d = QFileDialog.getExistingDirectory(self, "Open image folder", start)
        if not d:
            return
        self.settings.setValue("last/images_dir", d)
        masks = QFileDialog.getExistingDirectory(self, f"Mask folder for {Path(d).name}",
                                                 self.settings.value("last/masks_dir", str(Path(d).parent)))
        if masks:
            self.settings.setValue("last/masks_dir", masks)
            self.open_folders(d, masks)

    def choose_masks_folder(self) -> None:
        images = str(self.project.images_dir) if self.project else self.settings.value("last/images_dir", "")
        if not images:
            self.choose_images_folder()
            return
        masks = QFileDialog.getExistingDirectory(self, f"Mask folder for {Path(images).name}",
                                                 self.settings.value("last/masks_dir", ""))
        if masks:
            self.settings.setValue("last/masks_dir", masks)
            self.open_folders(images, masks)

    def choose_project(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", str(self.data_dir / "projects"),
                                              "IEL Studio projects (*.ielproj)")
        if path:
            self.open_project(path)

    def open_folders(self, images_dir: str | Path, masks_dir: str | Path,
                     project_path: str | Path | None = None) -> bool:
        """Open a dataset; its project (created if new) keeps every decision. True on success."""
        from ielstudio.core.errors import DataError
        from ielstudio.core.session import Project

        path = Path(project_path) if project_path else self.default_project_path(images_dir, masks_dir)
        try:
            scan = self._scan(images_dir, masks_dir)
            if scan is None:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            project = Project.open(path) if path.exists() else Project.create(path, images_dir, masks_dir)
        except (DataError, OSError) as e:
            self.report_error("Cannot open the dataset", str(e))
            return False
        if not self._claim(project):
            return False
        return self._attach(project, scan)

    def open_project(self, path: str | Path) -> bool:
        from ielstudio.core.errors import DamagedProjectError, DataError
        from ielstudio.core.session import Project

        try:
            project = Project.open(path)
            moved = not (project.images_dir.is_dir() and project.masks_dir.is_dir())
        except DamagedProjectError as e:
            project = self._open_damaged(Path(path), e)
            if project is None:
                return False
            moved = not (project.images_dir.is_dir() and project.masks_dir.is_dir())
        except (DataError, OSError) as e:
            self.report_error("Cannot open the project", str(e))
            return False
        if moved and not self._relocate(project):
            project.close()
            return False
        scan = self._scan(project.images_dir, project.masks_dir)
        if scan is None or not self._claim(project):
            project.close()
            return False
        return self._attach(project, scan)

    def _open_damaged(self, path: Path, error: Exception):
        """A damaged project file: open it read-only to salvage it, or start again from its
        folders (the damaged file is kept beside, renamed). None when neither works."""
        from ielstudio.core.errors import DataError
        from ielstudio.core.session import Project

        choice = self.ask_damaged_project(path, str(error))
        try:
            if choice == "read-only":
                project = Project.open(path, read_only=True)
                images, masks = project.images_dir, project.masks_dir  # readable, or DataError
                self.statusBar().showMessage(f"{path.name} opened read-only: decisions cannot be changed; "
                                             "export still works", 15000)
                return project
            if choice == "start again":
                with Project.open(path, read_only=True) as old:
                    images, masks = old.images_dir, old.masks_dir
                aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                for suffix in ("-wal", "-shm"):
                    side = path.with_name(path.name + suffix)
                    if side.exists():
                        os.replace(side, aside.with_name(aside.name + suffix))
                self.statusBar().showMessage(f"Started again; the damaged file is kept as {aside.name}", 15000)
                return Project.create(path, images, masks)
        except (DataError, OSError) as e:
            self.report_error("Cannot open the project", f"{error}\n\nThen: {e}")
        return None

    def ask_damaged_project(self, path: Path, message: str) -> str | None:
        """"read-only", "start again" or None (tests replace this method)."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Project damaged", message, parent=self)
        read_only = box.addButton("Open read-only", QMessageBox.ButtonRole.AcceptRole)
        again = box.addButton("Start again from its folders", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return {read_only: "read-only", again: "start again"}.get(box.clickedButton())

    def _claim(self, project) -> bool:
        """False (project closed) when another IEL Studio has it open and the user does not go on."""
        other = project.holder()
        if other and not self.confirm_open_in_use(project.path, other):
            project.close()
            return False
        return True

    def confirm_open_in_use(self, path: Path, other: dict) -> bool:
        """Ask before opening a project another IEL Studio holds open (tests replace this method)."""
        answer = QMessageBox.question(
            self, "Project already open",
            f"{path.name} is open in another IEL Studio (user {other['user']} on {other['host']}, "
            f"process {other['pid']}, since {other['since']}).\n\nDecisions made in both windows would "
            "interleave. Open it here anyway?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _relocate(self, project) -> bool:
        """The project's folders are gone: ask where they moved, check, and point the project there."""
        from ielstudio.core.dataset import scan_pairs
        from ielstudio.core.errors import DataError

        folders = self.ask_moved_folders(project.images_dir, project.masks_dir)
        if folders is None:
            self.report_error("Cannot open the project",
                              f"its folders are not reachable: {project.images_dir}, {project.masks_dir}")
            return False
        try:
            scan = scan_pairs(*folders)
            project.relocate(folders[0], folders[1], [p.name for p in scan.pairs])
        except (DataError, OSError) as e:
            self.report_error("Cannot use these folders", str(e))
            return False
        return True

    def ask_moved_folders(self, images_dir: Path, masks_dir: Path) -> tuple[str, str] | None:
        """Where did the image and mask folders go? None when the user gives up (tests replace this)."""
        answer = QMessageBox.question(
            self, "Folders moved",
            f"The folders of this project are not reachable:\n{images_dir}\n{masks_dir}\n\n"
            "Locate them? (The review decisions are kept.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes)
        if answer != QMessageBox.StandardButton.Yes:
            return None
        images = QFileDialog.getExistingDirectory(self, f"Where is the image folder {images_dir.name} now?",
                                                  str(images_dir.parent))
        if not images:
            return None
        masks = QFileDialog.getExistingDirectory(self, f"Where is the mask folder {masks_dir.name} now?",
                                                 str(Path(images).parent))
        return (images, masks) if masks else None

    def _scan(self, images_dir, masks_dir):
        from ielstudio.core.dataset import scan_pairs
        from ielstudio.core.errors import DataError

        try:
            return scan_pairs(images_dir, masks_dir)
        except (DataError, OSError) as e:
            self.report_error("Cannot read the folders", str(e))
            return None

    def save_project_as(self, path: str | Path | None = None) -> bool:
        """Copy the project (every decision so far) to a new file and go on working in the copy."""
        if self.project is None:
            self.report_error("Nothing to save", "open a dataset first")
            return False
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save project as", str(self.project.path.parent),
                                                  "IEL Studio projects (*.ielproj)")
            if not path:
                return False
        path = Path(path)
        if path.suffix != ".ielproj":
            path = path.with_name(path.name + ".ielproj")
        if path.exists():
            self.report_error("Cannot save the project", f"{path}: already exists; choose another name")
            return False
        from .workers import run_once

        # a large project takes seconds to copy: in a worker (SQLite's online backup)
        w = run_once(self.project.copy_to, path, parent=self)
        self.statusBar().showMessage(f"Saving the project as {path}…")

        def saved(_):
            if self.open_project(path):
                self.statusBar().showMessage(f"Saved as {path}; working in it now", 8000)
            self.projectSaved.emit(str(path))

        w.yielded.connect(saved)
        w.errored.connect(lambda msg: (self.report_error("Cannot save the project", msg), self.projectSaved.emit("")))
        self._save_worker = w
        w.start()
        return True

    def close_project_by_user(self) -> None:
        """File > Close: asks first while training runs."""
        if self.train_worker is not None and not self.train_worker.done and not self.confirm_close_during_training():
            return
        self.close_project()
        self._update_title()
        self.statusBar().showMessage("Project closed. Open an image folder and a mask folder, or a project.", 8000)

    def close_project(self) -> None:
        self._stop_workers()
        if self.project is not None:
            self.project.close()
        self.project = None
        self.scan = None
        self.pairs = {}
        self.dataset_info = None
        self._samples.clear()
        self._unreadable.clear()
        self._prefetch_gen += 1
        self._probs.clear()
        self.proposals.clear()
        self.previews.clear()
        self.checkpoint = None
        self.current = None
        self.undo_stack.clear()
        self.queue.model.set_rows([])
        self.canvas.set_image(None)
        self.iel_panel.clear()

    def _attach(self, project, scan) -> bool:
        from ielstudio.core.errors import DataError

        if self.train_worker is not None and not self.train_worker.done:
            if not self.confirm_close_during_training():
                project.close()
                return False
        self.close_project()
        self.project, self.scan = project, scan
        try:
            project.hold()  # after closing the previous project, which releases its own lock
        except (DataError, OSError) as e:  # a read-only folder: the project still opens
            self.statusBar().showMessage(f"Could not write the project's lock file: {e}", 10000)
        self.pairs = {p.name: p for p in scan.pairs}
        try:
            if not project.read_only:  # a damaged project opened to salvage it is never written
                project.add_images(scan.pairs)
        except Exception as e:
            self.report_error("Cannot update the project", str(e))
        self._reload_queue()
        enc = project.mask_encoding()
        if enc is not None:
            self._set_classes(enc.n_classes)
        self._add_recent(project.path)
        self._start_thumbnails()
        self._update_title()
        n = len(scan.pairs)
        msg = f"Opened {n} image/mask pairs from {project.images_dir}"
        if scan.skipped:
            msg += f" ({len(scan.skipped)} files skipped, see the queue)"
        self.statusBar().showMessage(msg, 10000)
        self.queue.step(0)
        self.queue.focus_table()  # keys go to the queue and the window's shortcuts, never the filter box
        self.datasetOpened.emit()
        self._load_checkpoint_from_project()
        return True

    def _reload_queue(self) -> None:
        rows = [QueueRow(r.name, r.status, r.score, r.changed_fraction, r.skip_reason)
                for r in self.project.images(order_by="score")]
        known = {r.name for r in rows}
        for s in self.scan.skipped:
            name = Path(s.path).name
            if name not in known:
                rows.append(QueueRow(name, "skipped", None, None, s.problem))
        self.queue.model.set_rows(rows)

    def _set_classes(self, n_classes: int) -> None:
        n = max(2, int(n_classes))
        names = ["background"] + [f"class {c}" for c in range(1, n)]
        self.canvas.set_class_names(names)

    def _update_title(self) -> None:
        import shiboken6

        if not shiboken6.isValid(self) or not shiboken6.isValid(self.undo_stack):
            return  # the window is being torn down
        title = "IEL Studio"
        if self.project is not None:
            title = f"{self.project.path.stem} – {title}"
            if self.undo_stack.count():
                title = f"{title} ({self.undo_stack.count()} edits this session)"
        self.setWindowTitle(title)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and all(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls()]
        event.acceptProposedAction()
        self.open_dropped(paths)

    def open_dropped(self, paths: list[Path]) -> bool:
        """A project file, a folder with images/ and masks/, or an image and a mask folder."""
        paths = [Path(p) for p in paths]
        for p in paths:
            if p.suffix == ".ielproj":
                return self.open_project(p)
        dirs = [p for p in paths if p.is_dir()]
        if len(dirs) >= 2:
            def maskish(p: Path) -> bool:
                n = p.name.lower()
                return any(k in n for k in ("mask", "label", "gt", "seg", "annot"))

            masks = next((d for d in dirs if maskish(d)), dirs[1])
            images = next(d for d in dirs if d != masks)
            return self.open_folders(images, masks)
        if len(dirs) == 1:
            d = dirs[0]
            if (d / "images").is_dir() and (d / "masks").is_dir():
                return self.open_folders(d / "images", d / "masks")
            masks = QFileDialog.getExistingDirectory(self, f"Mask folder for {d.name}", str(d.parent))
            if masks:
                return self.open_folders(d, masks)
            return False
        self.report_error("Cannot open", "drop a project file, or an image folder and a mask folder")
        return False

    # ------------------------------------------------------------------ images
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

        try:
            s = load_sample(pair, self.project.mask_encoding() if self.project else None)
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
        try:
            if self.project is not None and self.project.image(pair.name).status == "unreviewed":
                self.project.record_decision(pair.name, "skipped", reason=reason)
        except Exception as e:  # the queue still shows it; the project says why it could not
            self.statusBar().showMessage(f"Cannot update the project: {e}", 10000)
        self.queue.model.update(pair.name, status="skipped", reason=reason)
        if first:
            self.report_error(f"Cannot load {what}", reason + "\nIt is marked skipped; the review goes on.")
        else:
            self.statusBar().showMessage(f"Cannot load {what}: {reason} (marked skipped)", 10000)

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
        row = self.queue.model.get(name)
        if row is not None and row.status == "skipped" and name not in self.pairs:
            self.current = None
            self.canvas.set_image(None)
            self.iel_panel.clear()
            self.statusBar().showMessage(f"{name}: skipped: {row.reason}", 10000)
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
        self._prefetch_around(name)

    def _prefetch_around(self, name: str, ahead: int = 2) -> None:
        """Load the next and previous images of the queue in the background (fast N / P)."""
        if self.project is None:
            return
        names = self.queue.visible_names()
        if name not in names:
            return
        i = names.index(name)
        wanted = names[i + 1:i + 1 + ahead] + names[max(0, i - 1):i]
        if self.prefetch_worker is None:
            self.prefetch_worker = GeneratorWorker(jobs.prefetch_job, self.prefetch_queue, cancel_kwarg="cancel",
                                                   parent=self)
            self.prefetch_worker.yielded.connect(self._on_prefetched)
            self.prefetch_worker.start()
        encoding = self.project.mask_encoding()
        for n in wanted:
            if n in self.pairs and n not in self._samples and n not in self._prefetching:
                self._prefetching.add(n)
                self.prefetch_queue.put((n, self.pairs[n], encoding, self._prefetch_gen))

    def _on_prefetched(self, item: "jobs.Prefetched") -> None:
        self._prefetching.discard(item.name)
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
            self.iel_panel.request(s.mask, self._probs.get(name), self.n_classes(), self.training_panel.iel_config())

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
                score = "–" if row.score is None else f"{row.score:.3f}"
                text = f"{self.current} · score {score} · {row.status} · " + text
        self.status_label.setText(text)

    def step_image(self, delta: int) -> None:
        self.queue.step(delta)

    def _request_thumbnail(self, name: str) -> None:
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

    # ------------------------------------------------------------------ decisions
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
        names = [command.name] if isinstance(command, DecisionCommand) else [
            c.name for c in (command.child(i) for i in range(command.childCount())) if isinstance(c, DecisionCommand)]
        step()
        if len(names) == 1 and names[0] != self.current:
            self.queue.select(names[0])  # show the image whose decision changed
        self.statusBar().showMessage(f"{'Undid' if verb == 'undo' else 'Redid'}: {text}", 8000)

    def decision_changed(self, name: str) -> None:
        """After a command changed ``name`` in the project: update its row and the view."""
        try:
            row = self.project.image(name)
        except KeyError:
            return
        self.queue.model.update(name, status=row.status)
        if name == self.current:
            self._refresh_overlays(name, iel=False)
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
            self.step_image(1)
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
            self.step_image(1)
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
        before = self.current_mask(name)
        region = object_under(before, prop, row, col)
        after = before.copy()
        after[region] = prop[region]
        if np.array_equal(after, before):
            self.statusBar().showMessage("The proposal does not change anything there.", 4000)
            return
        self.undo_stack.push(DecisionCommand(self, name, "edited", after, f"Accept object on {name}"))

    def accept_worse_than(self, threshold: float | None = None) -> int:
        """Accept every unreviewed proposal whose score is below ``threshold``, as ONE undo step."""
        if self.project is None:
            return 0
        if threshold is None:
            threshold, ok = QInputDialog.getDouble(
                self, "Accept proposals", "Accept every unreviewed proposal with a label-quality score below:",
                float(self.settings.value("accept_worse/threshold", 0.8)), 0.0, 1.0, 3)
            if not ok:
                return 0
            self.settings.setValue("accept_worse/threshold", threshold)
        names = [r.name for r in self.queue.model.rows
                 if r.status == "unreviewed" and r.score is not None and r.score < threshold
                 and r.name in self.proposals]
        if not names:
            self.statusBar().showMessage(f"No unreviewed proposal with a score below {threshold:g}.", 5000)
            return 0
        self.undo_stack.beginMacro(f"Accept {len(names)} proposals with score < {threshold:g}")
        for name in names:
            self.undo_stack.push(DecisionCommand(self, name, "accepted", self.proposals[name],
                                                 f"Accept proposal for {name}"))
        self.undo_stack.endMacro()
        self.statusBar().showMessage(f"Accepted {len(names)} proposals (one undo step).", 6000)
        return len(names)

    # ------------------------------------------------------------------ training
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
        names = [n for n in self.queue.visible_names() if n in self.pairs]
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
            self._training_state = "idle"
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
        self._start_job(jobs.review_job, args, "loading images…", project_path=str(self.project.path))
        self.statusBar().showMessage("Training started", 4000)
        self.trainingStarted.emit()
        return True

    def score_with_saved_model(self) -> bool:
        """Proposals and scores for every image from the project's saved model (background)."""
        if self.project is None or self.is_training():
            return False
        ref = self.project.checkpoint
        if ref is None or not Path(ref.path).is_file():
            self.statusBar().showMessage("No saved model in this project yet: train one first.", 5000)
            return False
        self.checkpoint = Path(ref.path)
        self._train_settings = {"checkpoint": str(ref.path), "clean": self.clean_config().to_dict()}
        self._job_kind = "score"
        self._start_job(jobs.checkpoint_scoring_job, (self.scan, str(ref.path), self.clean_config()),
                        "scoring with the saved model…", project_path=str(self.project.path),
                        expected_sha256=ref.sha256)
        return True

    def _start_job(self, fn, args: tuple, text: str, **kwargs) -> None:
        from ielstudio.core.training import StepEvent

        self.training_panel.set_running(True)
        self.training_panel.set_progress_text(text)
        self._training_state = "loading"
        self._scoring_started = None
        self.last_training = None
        self.queue.freeze_order(True)  # rows keep their place until the job ends
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
            self._training_state = "stopping"
            self.training_panel.set_message("Stopping after this step…")

    def _on_training_progress(self, done: int, total: int) -> None:
        if self._training_state == "loading":
            self.training_panel.progress.setRange(0, max(1, total))
            self.training_panel.progress.setValue(done)
            self.training_panel.set_progress_text(f"loading images {done}/{total}")

    def _on_training_event(self, ev) -> None:
        from ielstudio.core.training import EvalEvent, StepEvent

        if isinstance(ev, jobs.DatasetInfo):
            self._on_dataset_info(ev)
        elif isinstance(ev, StepEvent):
            if self._training_state == "loading":
                self._training_state = "training"
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
        if self._training_state == "loading":
            self._training_state = "training"
            self.training_panel.set_progress_text("starting…")
        try:
            old = self.project.mask_encoding()
            self.project.set_mask_encoding(info.encoding)
            if old != info.encoding:
                self._samples.clear()  # re-read with the dataset's class mapping
                self._prefetch_gen += 1
                self._prefetching.clear()
        except Exception as e:
            self.report_error("Cannot update the project", str(e))
        self._set_classes(info.n_classes)
        self.training_panel.set_data_shape(info.in_channels, info.n_classes)
        by_path = {}
        for p in self.pairs.values():
            by_path[Path(p.image_path)] = p.name
            by_path[Path(p.mask_path)] = p.name
        scan_skipped = {Path(s.path) for s in self.scan.skipped}
        for sk in info.skipped:
            if Path(sk.path) in scan_skipped:
                continue
            name = by_path.get(Path(sk.path))
            if name is None:
                continue
            try:
                if self.project.image(name).status != "skipped":
                    self.project.record_decision(name, "skipped", reason=sk.problem)
                self.queue.model.update(name, status="skipped", reason=sk.problem)
            except Exception as e:
                self.report_error("Cannot update the project", str(e))
        if info.skipped:
            self.statusBar().showMessage(f"{len(info.skipped)} files skipped (hover the queue rows for why)", 8000)
        if self.current and not self._samples:
            self.show_image(self.current)

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
            rows.append((name, r.score, r.changed))
        while len(self._probs) > PROBS_CACHE:
            self._probs.popitem(last=False)
        self.queue.model.update_many({n: {"score": s, "changed": c} for n, s, c in rows})
        if self.current in reviews.items:
            self._refresh_overlays(self.current)
        self._update_status()
        if reviews.step is None:
            self._show_scoring_progress(reviews)
        if reviews.warnings:
            kept = reviews.warnings[0].startswith("the model is not reliable for any class")
            title = "The model is not reliable: masks kept as given" if kept else "Labels kept where the model is not reliable"
            self.report_error(title, "\n".join(reviews.warnings))
        self.reviewsApplied.emit(reviews)

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
        self.training_panel.set_message(
            f"Done: {ev.steps} steps ({ev.reason})" + ("" if agreement is None else f"; agreement {agreement:.3f}"))
        if ev.checkpoint:  # the job recorded it in the project
            self.checkpoint = Path(ev.checkpoint)
        if ev.reason != "cancelled" and self._training_state != "stopping":
            self.training_panel.set_progress_text("scoring every image with the kept model…")

    def _on_training_finished(self, result) -> None:
        stopped = self._training_state == "stopping"
        finished = self.last_training
        self._training_state = "idle"
        self.queue.freeze_order(False)  # re-rank once, now that the scores are final
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
            self.score_with_saved_model()

    def _on_training_error(self, message: str) -> None:
        self._training_state = "idle"
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
            self.training_panel.set_message(f"Proposals of the saved model {Path(ref.path).name}, as stored in "
                                            "the project" + (f". {warnings[0]}" if warnings else ""))
            self.training_panel.finish_progress("proposals loaded")
            if self.current:
                self._refresh_overlays(self.current)
            return
        if self.project.read_only or not Path(ref.path).is_file():
            return  # nothing may be written into a project opened to salvage it
        self.checkpoint = Path(ref.path)
        self.training_panel.set_message(f"Saved model {Path(ref.path).name}: recomputing its proposals")
        self.score_with_saved_model()

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | Path | None = None) -> bool:
        """Write the corrected masks and report.csv/json to ``out_dir`` (asks when None)."""
        if self.project is None:
            self.report_error("Nothing to export", "open a dataset first")
            return False
        if out_dir is None:
            start = self.settings.value("last/export_dir", str(Path(self.project.images_dir).parent))
            out_dir = QFileDialog.getExistingDirectory(self, "Export corrected masks to", start)
            if not out_dir:
                return False
            self.settings.setValue("last/export_dir", out_dir)
        out = Path(out_dir)
        if out.resolve() == Path(self.project.masks_dir).resolve():
            self.report_error("Export refused", f"{out} is the original masks folder; choose another folder")
            return False
        if self.export_worker is not None and not self.export_worker.done:
            return False
        from ielstudio.core.session import ExportDone, iter_export

        w = GeneratorWorker(iter_export, self.project, out, cancel_kwarg="cancel", parent=self)

        def on_event(ev):
            if isinstance(ev, ExportDone):
                r = ev.report
                msg = f"Exported {r.written} masks and report.csv/report.json to {r.out_dir}"
                if r.errors:
                    self.report_error("Export finished with errors",
                                      f"{r.errors} images could not be exported; see {r.csv_path}")
                self.statusBar().showMessage(msg, 10000)
                self.exportFinished.emit(r)
            else:
                self.statusBar().showMessage(f"Exporting {ev.done}/{ev.total}…")

        def on_error(msg):
            self.report_error("Export failed", msg)
            self.exportFinished.emit(None)

        w.yielded.connect(on_event)
        w.errored.connect(on_error)
        self.export_worker = w
        w.start()
        return True

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
        for attr in ("train_worker", "export_worker"):
            self._finish_worker(attr)
        if self.prefetch_worker is not None:
            self.prefetch_queue.put((None, None, None, None))
            self.prefetch_worker.stop(5000)
            self.prefetch_worker = None
            self.prefetch_queue = queue.Queue()
            self._prefetching.clear()
        if self.thumb_worker is not None:
            self.thumb_queue.put((None, None))  # wakes the thread, which then ends
            self.thumb_worker.stop(5000)
            self.thumb_worker = None
            self.thumb_queue = queue.Queue()
        self.iel_panel.stop()
        self._training_state = "idle"
        self.training_panel.set_running(False)

    def closeEvent(self, event) -> None:
        if self.is_training() and not self.confirm_close_during_training():
            event.ignore()
            return
        self.save_settings()
        self.close_project()
        super().closeEvent(event)
