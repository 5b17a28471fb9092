"""Opening, saving, closing and exporting the review project, and drag and drop."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from . import jobs
from .iel_panel import NO_PREDICTION_YET
from .queue_model import QueueRow
from .workers import GeneratorWorker


#: Folder names that say nothing about the data: the project is named after the parent too.
GENERIC_FOLDER_NAMES = {"images", "image", "imgs", "img", "raw", "data", "input", "inputs", "scans", "slices"}


def _safe_file_name(text: str) -> str:
    """``text`` usable as a file name everywhere (letters, digits, ``-_.``), at most 60 characters."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "project"
    return out[:60]


class ProjectMixin:
    """The open project: folders in, project file, Save As, Close, export (a damaged,
    locked or moved project: `window_recovery.RecoveryMixin`)."""

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

    def _scan(self, images_dir, masks_dir):
        """The folders' pairs: images (core.dataset), or volumes cut into slices from their
        headers alone (core.volume_review), so that 50 CT volumes open at once."""
        from ielstudio.core.dataset import scan_pairs
        from ielstudio.core.errors import DataError
        from ielstudio.core.volume_data import is_volume_dataset
        from ielstudio.core.volume_review import scan_volume_dataset

        try:
            if is_volume_dataset(images_dir):
                return scan_volume_dataset(images_dir, masks_dir)
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
        self.review_notice.clear()
        self.described_classes = {}
        self.checkpoint = None
        self._saved_predictions = None
        self.iel_panel.set_no_prediction(*NO_PREDICTION_YET)
        self.current = None
        self.undo_stack.clear()
        self._open_volumes(None)
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
        from ielstudio.core.class_names import read_class_names

        self.described_classes, names_problem = read_class_names(project.masks_dir)
        self._open_volumes(scan)
        try:
            if not project.read_only:  # a damaged project opened to salvage it is never written
                project.add_images(scan.pairs)
        except Exception as e:
            self.report_error("Cannot update the project", str(e))
        self._reload_queue()
        enc = project.mask_encoding()
        if enc is not None:
            self._set_classes(enc.n_classes)
        else:  # named from the start; the legend grows as masks show until the mapping is settled
            self._set_classes(2)
            self._settle_dataset()
        self._add_recent(project.path)
        self._start_thumbnails()
        self._update_title()
        n = len(scan.pairs)
        msg = f"Opened {n} image/mask pairs from {project.images_dir}"
        if self.volumes is not None:
            msg = f"Opened {len(scan.volumes)} image/label volumes ({n} slices) from {project.images_dir}"
        if scan.skipped:
            msg += f" ({len(scan.skipped)} files skipped, see the queue)"
        if names_problem:
            msg += f"; {names_problem}"
        self.statusBar().showMessage(msg, 10000)
        self.queue.step(0)
        self._auto_selected, self._whole_pass_applied = self.queue.current_name(), False
        self.queue.focus_table()  # keys go to the queue and the window's shortcuts, never the filter box
        self.datasetOpened.emit()
        self._load_checkpoint_from_project()
        return True

    def _settle_dataset(self) -> None:
        """A data set opened for the first time: its class mapping is read from the masks in
        the background (core.dataset.settle_encoding) and stored in the project, so that the
        window, training and scoring use one mapping from the start."""
        if not self.scan.pairs:
            return
        w = GeneratorWorker(jobs.settle_job, self.scan, cancel_kwarg="cancel", progress_kwarg="report", parent=self)
        w.yielded.connect(self._on_settled)
        w.progress.connect(lambda done, total: self.statusBar().showMessage(
            f"Reading the masks' class values {done}/{total}", 2000) if done % 50 == 0 or done == total else None)
        w.errored.connect(lambda message: self.statusBar().showMessage(f"Cannot read the masks' classes: {message}",
                                                                       10000))
        self.settle_worker = w
        w.start()

    def _on_settled(self, settled: "jobs.Settled") -> None:
        if self.project is None or self.project.mask_encoding() is not None:
            return  # closed meanwhile, or training settled it first
        self.mark_skipped_files(settled.skipped)
        self.use_encoding(settled.encoding)
        self.datasetSettled.emit()

    def _reload_queue(self) -> None:
        in_scan = set(self.pairs)  # a project may remember images (slices) no longer in the folders
        rows = [QueueRow(r.name, r.status, r.score, r.changed_fraction, r.skip_reason, r.score_parts)
                for r in self.project.images(order_by="score") if self.volumes is None or r.name in in_scan]
        if self.volumes is not None:  # slices in volume order: the row of a volume lists them so
            order = {p.name: i for i, p in enumerate(self.scan.pairs)}
            rows.sort(key=lambda r: order[r.name])
        known = {r.name for r in rows}
        for s in self.scan.skipped:
            name = Path(s.path).name
            if name not in known:
                rows.append(QueueRow(name, "skipped", None, None, s.problem))
        self.queue.model.set_rows(rows, self.scan.group_of() if self.volumes is not None else None)
        if self.volumes is not None:
            self.queue.model.set_group_scores(self.project.get_setting(jobs.VOLUME_SCORES) or {})

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

    def export_start_dir(self) -> str:
        """Where the export dialog opens: the last export's folder, else beside the images
        (corrected masks next to the originals), except for the bundled samples (inside the
        application) and read-only places: then the user's documents folder."""
        import os

        from PySide6.QtCore import QStandardPaths

        from ielstudio.core.paths import resources_dir

        last = self.settings.value("last/export_dir", "")
        if last and Path(last).is_dir():
            return str(last)
        beside = Path(self.project.images_dir).resolve().parent
        if not beside.is_relative_to(resources_dir().resolve()) and os.access(beside, os.W_OK):
            return str(beside)
        return QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation) or str(Path.home())

    def export(self, out_dir: str | Path | None = None) -> bool:
        """Write the corrected masks and report.csv/json to ``out_dir`` (asks when None)."""
        if self.project is None:
            self.report_error("Nothing to export", "open a dataset first")
            return False
        if out_dir is None:
            out_dir = QFileDialog.getExistingDirectory(self, "Export corrected masks to", self.export_start_dir())
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

        if self.volumes is not None:
            w = self.export_volumes(out)
        else:
            w = GeneratorWorker(iter_export, self.project, out, cancel_kwarg="cancel", parent=self)
        unit = "label volumes" if self.volumes is not None else "masks"

        def on_event(ev):
            if isinstance(ev, ExportDone):
                r = ev.report
                msg = f"Exported {r.written} {unit} and report.csv/report.json to {r.out_dir}"
                if r.errors:
                    self.report_error("Export finished with errors",
                                      f"{r.errors} {unit} could not be exported; see {r.csv_path}")
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

