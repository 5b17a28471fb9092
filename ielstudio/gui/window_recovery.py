"""When a project does not simply open: its file is damaged, another IEL Studio has it
open, or its folders moved. Each asks the user through a method tests replace."""

from __future__ import annotations

import os
import time
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox


class RecoveryMixin:
    """Damaged project files, projects in use elsewhere, moved folders."""

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
