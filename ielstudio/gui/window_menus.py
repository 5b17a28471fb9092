"""The main window's actions (one per row of `dialogs.SHORTCUTS`), its menus and help dialogs."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence

from .dialogs import SHORTCUTS, AboutDialog, ShortcutsDialog


class MenusMixin:
    """Actions, menus, help dialogs of the main window."""

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
            "accept_volume": lambda: self.decide_volume("accepted"),
            "keep_volume": lambda: self.decide_volume("kept"),
            "next_slice": lambda: self.step_slice(1),
            "previous_slice": lambda: self.step_slice(-1),
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
        self.actions["score_saved"] = QAction("Score again with the saved model", self,
                                              triggered=lambda: self.score_with_saved_model())
        self.actions["review_model"] = QAction("Review with a saved model…", self,
                                               triggered=lambda: self.review_with_model())
        self.actions["review_model"].setToolTip("Score and propose with a model trained elsewhere (ielstudio train, "
                                                "a cluster run: docs/cluster.md), without training")
        self.actions["score_saved"].setToolTip("Recompute every proposal and score with the project's model "
                                               "(also brings back the prediction maps of the defect panel)")
        self.actions["review_notice"] = QAction("Show what the last scoring pass kept, and why", self,
                                                triggered=self.show_last_notice)
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
        for key in ("undo", "redo", None, "accept", "keep", "accept_worse", "accept_volume", "keep_volume", None,
                    "tool_pan", "brush", "eraser", "tool_object", "pick_class", "smaller", "larger"):
            edit.addSeparator() if key is None else edit.addAction(self.actions[key])
        view = mb.addMenu("&View")
        for key in ("next", "previous", "next_slice", "previous_slice", None, "fit_view", "actual_size",
                    "auto_contrast", "full_contrast", None, "toggle_mask", "toggle_proposal", "toggle_difference"):
            view.addSeparator() if key is None else view.addAction(self.actions[key])
        train = mb.addMenu("&Training")
        for key in ("train", "pause", "stop", None, "score_saved", "review_model", None, "review_notice"):
            train.addSeparator() if key is None else train.addAction(self.actions[key])
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

