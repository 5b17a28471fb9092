"""The bottom panel: training settings, Start / Pause / Resume / Stop, progress and live curves.

The form edits a ``core.training.TrainConfig`` (and its ``IELConfig``): every
widget is keyed by the dataclass field it sets (``TRAIN_FIELDS`` / ``IEL_FIELDS``),
values are applied with ``dataclasses.replace`` so an unknown name fails loudly,
and a test checks the keys against the dataclasses so the form cannot drift.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .canvas_input import ShortcutsPassThrough
from .training_values import available_devices, format_eta, parse_classes

# form widget -> dataclass field it edits
TRAIN_FIELDS = ("arch", "epochs", "max_steps", "folds", "slice_context", "device", "init_checkpoint")
IEL_FIELDS = ("heat", "heat_dt", "heat_steps", "convex_classes", "convex_dt", "convex_steps")
CLEAN_FIELDS = ("convex_hull_classes",)


class TrainingPanel(QWidget):
    """Settings + controls + curves. Emits intent; the main window runs the worker."""

    startRequested = Signal()
    pauseRequested = Signal()
    resumeRequested = Signal()
    stopRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.in_channels = 1
        self.n_classes = 2
        self._param_cache: dict[tuple, str] = {}
        self._loss: list[tuple[int, float]] = []
        self._agree: list[tuple[int, float]] = []
        self._paused = False  # the job is paused: the bar reads "paused at …"
        self._before_pause: str | None = None  # the bar's text to show again on resume

        # --- model
        self.arch = QComboBox()
        from ielstudio.core.models import ARCHITECTURES

        for name in ARCHITECTURES:
            self.arch.addItem(name, name)
        self.params_label = QLabel("")
        self.params_label.setStyleSheet("color: gray")
        self.arch.currentIndexChanged.connect(lambda _: self.update_parameter_count())
        self.new_radio = QRadioButton("New model")
        self.finetune_radio = QRadioButton("Fine-tune:")
        self.new_radio.setChecked(True)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("checkpoint .pt")
        self.checkpoint_button = QPushButton("…")
        self.checkpoint_button.setFixedWidth(28)
        self.checkpoint_button.clicked.connect(self._choose_checkpoint)
        self.device = QComboBox()
        for value, label in available_devices():
            self.device.addItem(label, value)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 10000)
        self.epochs.setSpecialValueText("auto")
        self.epochs.setToolTip("Epochs (auto = a budget chosen from the dataset size)")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(1, 10_000_000)
        self.max_steps.setToolTip("Upper bound on optimisation steps")
        self.folds = QSpinBox()
        self.folds.setRange(1, 10)
        self.folds.setSpecialValueText("1 (hold-out)")
        self.folds.setToolTip(
            "1: one model; the automatic budget holds 20 % of the images out, and only those are scored by a "
            "model that never saw their label. k >= 2: k models, every image scored and proposed by one that "
            "never saw its label (fairer scores, k times the training time); as clean --folds k")
        self.slice_context = QSpinBox()
        self.slice_context.setRange(0, 8)
        self.slice_context.setSpecialValueText("off")
        self.slice_context.setToolTip(
            "Volumes: this many neighbouring slices on each side go to the network as extra input channels "
            "(as --slice-context N); 2-D images ignore it. Not measured against 0 yet")

        model_box = QGroupBox("Model")
        mf = QFormLayout(model_box)
        arch_row = QHBoxLayout()
        arch_row.addWidget(self.arch, 1)
        arch_row.addWidget(self.params_label)
        mf.addRow("Architecture", arch_row)
        ck_row = QHBoxLayout()
        ck_row.addWidget(self.new_radio)
        ck_row.addWidget(self.finetune_radio)
        ck_row.addWidget(self.checkpoint_edit, 1)
        ck_row.addWidget(self.checkpoint_button)
        mf.addRow(ck_row)
        mf.addRow("Device", self.device)
        steps_row = QHBoxLayout()
        steps_row.addWidget(QLabel("Epochs"))
        steps_row.addWidget(self.epochs)
        steps_row.addWidget(QLabel("Max steps"))
        steps_row.addWidget(self.max_steps)
        mf.addRow(steps_row)
        folds_row = QHBoxLayout()  # one row, so the form (and the queue above it) keep their height
        folds_row.addWidget(QLabel("Folds"))
        folds_row.addWidget(self.folds)
        folds_row.addWidget(QLabel("Slice context"))
        folds_row.addWidget(self.slice_context)
        mf.addRow(folds_row)

        # --- IEL
        self.heat = QCheckBox("Heat IEL")
        self.heat.setChecked(True)
        self.heat_dt = QDoubleSpinBox()
        self.heat_dt.setRange(0.001, 0.25)
        self.heat_dt.setDecimals(3)
        self.heat_dt.setSingleStep(0.01)
        self.heat_steps = QSpinBox()
        self.heat_steps.setRange(1, 500)
        self.convex_classes = QLineEdit()
        self.convex_classes.setPlaceholderText("none, e.g. 1,2")
        self.convex_classes.setToolTip("Foreground classes whose objects should be convex (curve-motion IEL)")
        self.convex_dt = QDoubleSpinBox()
        self.convex_dt.setRange(0.001, 1.0)
        self.convex_dt.setDecimals(3)
        self.convex_dt.setSingleStep(0.01)
        self.convex_steps = QSpinBox()
        self.convex_steps.setRange(1, 500)
        self.convex_hull = QCheckBox("Replace them by their convex hull")
        self.convex_hull.setToolTip("Proposals: each object of the convex classes becomes its convex hull "
                                    "(ielstudio clean --convex-hull). Off: the convexity IEL only shapes training.")
        iel_box = QGroupBox("Inverse evolution layers")
        ig = QGridLayout(iel_box)
        ig.addWidget(self.heat, 0, 0)
        ig.addWidget(QLabel("dt"), 0, 1)
        ig.addWidget(self.heat_dt, 0, 2)
        ig.addWidget(QLabel("K"), 0, 3)
        ig.addWidget(self.heat_steps, 0, 4)
        ig.addWidget(QLabel("Convex classes"), 1, 0)
        ig.addWidget(self.convex_classes, 2, 0)
        ig.addWidget(QLabel("dt"), 2, 1)
        ig.addWidget(self.convex_dt, 2, 2)
        ig.addWidget(QLabel("K"), 2, 3)
        ig.addWidget(self.convex_steps, 2, 4)
        ig.addWidget(self.convex_hull, 3, 0, 1, 5)

        # --- controls and progress
        self.start_button = QPushButton("Start training")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.startRequested)
        self.pause_button.clicked.connect(self._pause_clicked)
        self.stop_button.clicked.connect(self.stopRequested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.progress.setToolTip("The ETA counts the remaining steps, evaluations and the scoring of every "
                                 "image after training; time paused does not count")
        self.status = QLabel("Not trained yet")
        self.status.setWordWrap(True)
        ctl_box = QWidget()
        cl = QVBoxLayout(ctl_box)
        cl.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.pause_button)
        row.addWidget(self.stop_button)
        cl.addLayout(row)
        cl.addWidget(self.progress)
        cl.addWidget(self.status)
        cl.addStretch(1)

        # --- curves
        pg.setConfigOptions(antialias=False)
        self.loss_plot = pg.PlotWidget(title="Training loss")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.3)
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen((255, 170, 0), width=2))
        self.agree_plot = pg.PlotWidget(title="Agreement with given labels (Dice)")
        self.agree_plot.setLabel("bottom", "step")
        self.agree_plot.setYRange(0, 1)
        self.agree_plot.showGrid(x=True, y=True, alpha=0.3)
        self.agree_curve = self.agree_plot.plot(pen=pg.mkPen((0, 190, 255), width=2), symbol="o", symbolSize=5,
                                                symbolBrush=(0, 190, 255))
        self._shortcut_filter = ShortcutsPassThrough(self)
        for p in (self.loss_plot, self.agree_plot):
            p.installEventFilter(self._shortcut_filter)
            p.setMinimumWidth(220)
            p.setMinimumHeight(150)

        left = QVBoxLayout()
        left.addWidget(model_box)
        left.addWidget(iel_box)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(left, 0)
        ctl_box.setMinimumWidth(230)
        layout.addWidget(ctl_box, 0)
        layout.addWidget(self.loss_plot, 1)
        layout.addWidget(self.agree_plot, 1)

        self.set_from_config(self.default_config())
        self.set_running(False)

    # --- config <-> form -------------------------------------------------------------
    @staticmethod
    def default_config():
        from ielstudio.core.training import TrainConfig

        return TrainConfig()

    def set_from_config(self, config) -> None:
        i = self.arch.findData(config.arch)
        if i >= 0:
            self.arch.setCurrentIndex(i)
        self.epochs.setValue(int(config.epochs or 0))
        self.max_steps.setValue(int(config.max_steps))
        self.folds.setValue(int(config.folds))
        self.slice_context.setValue(int(config.slice_context))
        i = self.device.findData(config.device)
        self.device.setCurrentIndex(max(0, i))
        ck = getattr(config, "init_checkpoint", None)
        self.checkpoint_edit.setText("" if not ck else str(ck))
        (self.finetune_radio if ck else self.new_radio).setChecked(True)
        iel = config.iel
        self.heat.setChecked(bool(iel.heat))
        self.heat_dt.setValue(float(iel.heat_dt))
        self.heat_steps.setValue(int(iel.heat_steps))
        self.convex_classes.setText(",".join(str(c) for c in iel.convex_classes))
        self.convex_dt.setValue(float(iel.convex_dt))
        self.convex_steps.setValue(int(iel.convex_steps))
        self.update_parameter_count()

    def form_values(self) -> tuple[dict, dict]:
        """(TrainConfig field -> value, IELConfig field -> value) as shown in the form."""
        ck = self.checkpoint_edit.text().strip() if self.finetune_radio.isChecked() else ""
        train = {
            "arch": self.arch.currentData(),
            "epochs": self.epochs.value() or None,
            "max_steps": self.max_steps.value(),
            "folds": self.folds.value(),
            "slice_context": self.slice_context.value(),
            "device": self.device.currentData(),
            "init_checkpoint": ck or None,
        }
        iel = {
            "heat": self.heat.isChecked(),
            "heat_dt": round(self.heat_dt.value(), 6),
            "heat_steps": self.heat_steps.value(),
            "convex_classes": parse_classes(self.convex_classes.text()),
            "convex_dt": round(self.convex_dt.value(), 6),
            "convex_steps": self.convex_steps.value(),
        }
        assert tuple(train) == TRAIN_FIELDS and tuple(iel) == IEL_FIELDS
        return train, iel

    def clean_values(self) -> dict:
        """CleanConfig field -> value as shown in the form (the rest keep CleanConfig's defaults,
        as the command's do when their flags are not given)."""
        hull = parse_classes(self.convex_classes.text()) if self.convex_hull.isChecked() else ()
        values = {"convex_hull_classes": hull or ((1,) if self.convex_hull.isChecked() else ())}
        assert tuple(values) == CLEAN_FIELDS
        return values

    def config(self, base=None):
        """The TrainConfig shown in the form (fields not in the form come from ``base``)."""
        base = base if base is not None else self.default_config()
        train, iel = self.form_values()
        new_iel = dataclasses.replace(base.iel, **iel)
        # the automatic budget's floor never exceeds the cap chosen in the form
        return dataclasses.replace(base, iel=new_iel, min_steps=min(base.min_steps, train["max_steps"]), **train)

    def iel_config(self):
        """The IELConfig of the form (for the defect maps), or None if the form is invalid."""
        try:
            return self.config().iel
        except (ValueError, TypeError):
            return None

    # --- parameter count -----------------------------------------------------------
    def set_data_shape(self, in_channels: int, n_classes: int) -> None:
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.update_parameter_count()

    def update_parameter_count(self) -> None:
        arch = self.arch.currentData()
        key = (arch, self.in_channels, self.n_classes)
        if key not in self._param_cache:
            try:
                from ielstudio.core.models import build_model, count_parameters

                n = count_parameters(build_model(arch, self.in_channels, self.n_classes))
                self._param_cache[key] = f"{n / 1e6:.2f} M params" if n >= 1e5 else f"{n:,} params"
            except Exception as e:  # an architecture that cannot be built here
                self._param_cache[key] = "unavailable"
                self.arch.setItemData(self.arch.currentIndex(), str(e), Qt.ItemDataRole.ToolTipRole)
        self.params_label.setText(self._param_cache[key])

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint to fine-tune", "", "Checkpoints (*.pt *.pth)")
        if path:
            self.checkpoint_edit.setText(path)
            self.finetune_radio.setChecked(True)

    # --- run state -----------------------------------------------------------------
    def set_running(self, running: bool, paused: bool = False) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.pause_button.setText("Resume" if paused else "Pause")
        was_paused, self._paused = self._paused, paused and running
        if self._paused and not was_paused:  # the bar says so too, and keeps the step it paused at
            self._show_progress(self.progress.format())
        elif was_paused and not self._paused and self._before_pause:
            self.progress.setFormat(self._before_pause)
        if not self._paused:
            self._before_pause = None
        for w in (self.arch, self.new_radio, self.finetune_radio, self.checkpoint_edit, self.checkpoint_button,
                  self.device, self.epochs, self.max_steps, self.folds, self.slice_context, self.heat, self.heat_dt,
                  self.heat_steps, self.convex_classes, self.convex_dt, self.convex_steps, self.convex_hull):
            w.setEnabled(not running)

    def _show_progress(self, text: str) -> None:
        """The bar's text; while paused "paused at step N/M", the rest kept for the resume
        (the step in flight when Pause was pressed still reports, after the pause)."""
        if self._paused:
            self._before_pause = text
            text = f"paused at {text.split(' · ')[0]}"
        self.progress.setFormat(text)

    def _pause_clicked(self) -> None:
        if self.pause_button.text() == "Pause":
            self.pauseRequested.emit()
        else:
            self.resumeRequested.emit()

    def reset_curves(self) -> None:
        self._loss.clear()
        self._agree.clear()
        self.loss_curve.setData([], [])
        self.agree_curve.setData([], [])

    def show_curves(self, curves: dict) -> None:
        """The curves of an earlier training, as the project stored them (`jobs.training_curves`)."""
        self._loss = [(step, float(y)) for step, y in enumerate(curves.get("loss", []), start=1) if math.isfinite(y)]
        self._agree = [(int(x), float(y)) for x, y in zip(curves.get("eval_steps", []), curves.get("agreement", []))]
        for curve, points in ((self.loss_curve, self._loss), (self.agree_curve, self._agree)):
            a = np.asarray(points, float).reshape(-1, 2)
            curve.setData(a[:, 0], a[:, 1])

    def on_step(self, ev) -> None:
        """A StepEvent: progress bar, ETA, loss curve."""
        total = max(1, int(ev.total_steps))
        self.progress.setRange(0, total)
        self.progress.setValue(int(ev.step))
        fold = f"fold {ev.fold + 1}/{ev.n_folds} · " if ev.n_folds > 1 else ""
        self._show_progress(f"{fold}step {ev.step}/{total} · ETA {format_eta(ev.eta_s)}")
        if math.isfinite(ev.loss):
            self._loss.append((int(ev.step), float(ev.loss)))
            a = np.asarray(self._loss)
            self.loss_curve.setData(a[:, 0], a[:, 1])
        # no epoch count: with a few images and large batches it runs far ahead of the step
        if self._paused:  # the step in flight when Pause was pressed has finished: training waits here
            self.status.setText(f"Paused after step {ev.step}; Resume goes on from there")
        else:
            self.status.setText(f"loss {ev.loss:.4f} · learning rate {ev.lr:.2g}")

    def on_scoring(self, done: int, total: int, eta_s: float | None) -> None:
        """The scoring pass after training (or with a saved model): a bar of its own."""
        self.progress.setRange(0, max(1, int(total)))
        self.progress.setValue(int(done))
        self._show_progress(f"scoring {done}/{total} · ETA {format_eta(eta_s)}")

    def on_eval(self, ev) -> None:
        self._agree.append((int(ev.step), float(ev.agreement)))
        a = np.asarray(self._agree)
        self.agree_curve.setData(a[:, 0], a[:, 1])

    def set_message(self, text: str) -> None:
        self.status.setText(text)

    def set_progress_text(self, text: str) -> None:
        self.progress.setFormat(text)

    def finish_progress(self, text: str) -> None:
        """The job is over: a full bar (training that stopped early at step 300 of 800
        finished, it did not stop half way) with ``text``."""
        self.progress.setRange(0, max(1, self.progress.maximum()))
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(text)
