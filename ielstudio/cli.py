"""The `ielstudio` command: gui (default), demo, clean, merge, train, predict, install-desktop.

Headless commands never import Qt; `gui` and `demo` import it inside their handlers.
Training/IEL/cleaning flags are mapped onto the fields of `TrainConfig`, `IELConfig`
and `CleanConfig` (tables below); their defaults come from those dataclasses, and a
test checks that every field is reachable from a flag or exempted with a reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
from typing import Iterable, TextIO

from ielstudio import __version__
from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.errors import DataError
from ielstudio.core.iel import IELConfig
from ielstudio.core.models import ARCHITECTURES
from ielstudio.core.review import augmentation_note
from ielstudio.core.training import TrainConfig

COMMANDS = ("gui", "demo", "clean", "merge", "train", "predict", "install-desktop", "uninstall-desktop")

# flag dest -> dataclass field it sets (flags written by hand, with their own help)
TRAIN_FLAGS = {
    "arch": "arch",
    "width": "width",
    "device": "device",
    "seed": "seed",
    "epochs": "epochs",
    "steps": "max_steps",
    "checkpoint": "init_checkpoint",
    "folds": "folds",
}
IEL_FLAGS = {
    "iel": "heat",  # the spec also switches the curve-motion layer (via convex_classes)
    "convex_classes": "convex_classes",
    "heat_classes": "heat_classes",
    "heat_dt": "heat_dt",
    "heat_steps": "heat_steps",
    "convex_dt": "convex_dt",
    "convex_steps": "convex_steps",
    "convex_radii": "convex_radii",
    "convex_band": "convex_band",
}
CLEAN_FLAGS = {
    "min_area": "min_area",
    "no_fill_holes": "fill_holes",
    "convex_hull": "convex_hull_classes",
    "confident_only": "confident_only",
    "threshold": "threshold",
    "no_adaptive_threshold": "adaptive_threshold",
    "edge_tolerance": "edge_tolerance",
}
# dataclass fields deliberately without a flag of their own, with the reason
EXEMPT = {
    "TrainConfig.iel": "built from the --iel, --heat-*, --convex-* flags",
    "TrainConfig.adaptive_threshold": "set with CleanConfig.adaptive_threshold by --no-adaptive-threshold",
}


def _default(cls, name: str):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def advanced_train_fields() -> list[dataclasses.Field]:
    """TrainConfig fields without a hand-written flag: each gets a generated `--field-name`
    flag (type and help taken from the dataclass field)."""
    taken = set(TRAIN_FLAGS.values()) | {k.split(".", 1)[1] for k in EXEMPT if k.startswith("TrainConfig.")}
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in taken]


def _classes(text: str, allow_zero: bool = False) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2 but got {text!r}") from None
    if not values or min(values) < (0 if allow_zero else 1):
        raise argparse.ArgumentTypeError(f"expected class numbers >= {0 if allow_zero else 1}, got {text!r}")
    return values


def _iel_spec(text: str) -> str:
    parts = {p.strip() for p in text.lower().split(",") if p.strip()}
    if not parts or not parts <= {"heat", "convex", "none"} or ("none" in parts and len(parts) > 1):
        raise argparse.ArgumentTypeError(f"--iel must be heat, convex, heat,convex or none, got {text!r}")
    return ",".join(sorted(parts, key=["heat", "convex", "none"].index))


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    t, i = TrainConfig, IELConfig
    g = p.add_argument_group("training")
    g.add_argument("--arch", choices=list(ARCHITECTURES), help=f"segmenter architecture (default: {_default(t, 'arch')})")
    g.add_argument("--width", type=int, metavar="N", help=f"channels of the first network level (default: {_default(t, 'width')})")
    g.add_argument("--epochs", type=float, metavar="N", help="passes over the images; overrides the automatic training budget "
                   "(default: automatic: stop when agreement with held-out images stops improving)")
    g.add_argument("--steps", type=int, metavar="N", help=f"at most N optimisation steps (default: {_default(t, 'max_steps')}; "
                   "the automatic budget may stop earlier)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help=f"where to train (default: {_default(t, 'device')}: cuda, then mps, then cpu)")
    g.add_argument("--seed", type=int, metavar="N", help=f"random seed; CPU runs are reproducible (default: {_default(t, 'seed')})")
    g.add_argument("--checkpoint", metavar="PATH", help="fine-tune from this saved model instead of starting from scratch")
    g.add_argument("--folds", type=int, metavar="K", help="K >= 2: train K models so every image is predicted by one that "
                   "never saw its label (K times slower); default 1: one model")
    g = p.add_argument_group("inverse evolution layers (used in the training loss only)")
    g.add_argument("--iel", type=_iel_spec, metavar="SPEC", help="heat (smoothness), convex (convexity), heat,convex or none "
                   "(default: heat)")
    g.add_argument("--convex-classes", type=_classes, metavar="1,2", help="classes the convexity IEL and --convex-hull act on (default: 1)")
    g.add_argument("--heat-classes", type=lambda s: _classes(s, allow_zero=True), metavar="0,1",
                   help="classes the heat IEL smooths (default: all)")
    g.add_argument("--heat-dt", "--iel-dt", dest="heat_dt", type=float, metavar="F",
                   help=f"heat IEL step size dt (default: {_default(i, 'heat_dt')}; --iel-dt is the old name)")
    g.add_argument("--heat-steps", "--iel-steps", dest="heat_steps", type=int, metavar="K",
                   help=f"heat IEL number of steps K (default: {_default(i, 'heat_steps')}); noise amplification "
                   "(1+2dt)^K (--iel-steps is the old name)")
    g.add_argument("--convex-dt", type=float, metavar="F", help=f"convexity IEL step size (default: {_default(i, 'convex_dt')})")
    g.add_argument("--convex-steps", type=int, metavar="K", help=f"convexity IEL number of steps (default: {_default(i, 'convex_steps')})")
    g.add_argument("--convex-radii", type=_classes, metavar="3,6,9", help="window radii (px) of the concavity detector "
                   f"(default: {','.join(map(str, _default(i, 'convex_radii')))}); about the object radius")
    g.add_argument("--convex-band", type=int, metavar="N", help=f"inner band width (px) of the convexity IEL (default: {_default(i, 'convex_band')})")
    g = p.add_argument_group("advanced training settings")
    for f in advanced_train_fields():
        flag = "--" + f.name.replace("_", "-")
        default = _default(TrainConfig, f.name)
        text = f.metadata.get("help", f.name).replace("%", "%%") + f" (default: {'auto' if default is None else default})"
        if isinstance(default, bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = int if default is None else type(default)  # None: an automatic whole number (crop, batch)
            g.add_argument(flag, dest=f.name, type=kind, metavar={int: "N", float: "F"}.get(kind, "TEXT"), help=text)
    g = p.add_argument_group("model output")
    g.add_argument("--save-model", metavar="PATH", help="save the trained model to this file (e.g. model.pt)")


def _add_clean_flags(p: argparse.ArgumentParser) -> None:
    c = CleanConfig
    g = p.add_argument_group("cleaning the proposal")
    g.add_argument("--min-area", type=int, metavar="N", help=f"remove objects smaller than N pixels (default: {_default(c, 'min_area')}; 0 keeps all)")
    g.add_argument("--no-fill-holes", action="store_true", default=None, help="keep holes enclosed by an object (default: fill them)")
    g.add_argument("--convex-hull", action="store_true", default=None, help="replace each object of the --convex-classes by its convex hull")
    g.add_argument("--confident-only", action="store_true", default=None, help="keep the given label except where the model is "
                   "confident (see --threshold) and disagrees")
    g.add_argument("--threshold", type=float, metavar="P", help=f"confidence needed by --confident-only (default: {_default(c, 'threshold')})")
    g.add_argument("--no-adaptive-threshold", action="store_true", default=None, help="decide every pixel by the model's "
                   "argmax. Default: a class whose probabilities split clearly at a valley below 0.45 (as when annotators "
                   "left objects out) is decided at that valley, and the automatic budget judges its held-out images the same way")
    g.add_argument("--edge-tolerance", type=int, metavar="PX", help="leave a short stretch of outline (up to 8 px long per px) as "
                   f"annotated when the model only moves it by at most PX pixels (default: {_default(c, 'edge_tolerance')}; 0 applies every change)")
    g = p.add_argument_group("report")
    g.add_argument("--report", metavar="FILE.json", help="where to write the JSON report (default: OUT/ielstudio-report.json)")
    g.add_argument("--csv", metavar="FILE.csv", help="also write a per-image table (score, pixels added/removed per class)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ielstudio",
        description="Clean noisy segmentation masks with a network regularised by inverse evolution layers. "
        "Without a command the desktop application opens.",
    )
    p.add_argument("--version", action="version", version=f"ielstudio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("gui", help="open the desktop application (default)",
                       description="Open the desktop application, optionally on a dataset or a saved review project.")
    g.add_argument("paths", nargs="*", metavar="PATH", help="IMAGES MASKS folders, or a .ielproj project file")

    d = sub.add_parser("demo", help="open the application on the bundled sample and start training",
                       description="Open the application on the bundled sample dataset and start training at once.")
    d.add_argument("--train-steps", type=int, metavar="N", help="train for N steps (default: the automatic budget)")
    d.add_argument("--screenshot", metavar="PATH", help="save a screenshot of the window to PATH as soon as the first proposals show (or training ends), then quit")

    c = sub.add_parser("clean", help="train on a dataset and write cleaned masks",
                       description="Train a segmenter on IMAGES with their noisy MASKS (paired by file name), then write "
                       "cleaned masks with the same names, format and values into --out, plus a JSON report ranking the "
                       "labels worst first. The original masks are never changed.")
    c.add_argument("images", metavar="IMAGES", help="folder of images")
    c.add_argument("masks", metavar="MASKS", help="folder of masks (paired with the images by file name)")
    c.add_argument("--out", required=True, metavar="DIR", help="folder for the cleaned masks (not IMAGES or MASKS)")
    _add_training_flags(c)
    c.add_argument("--fold", type=int, metavar="I", help="with --folds K: train only fold I (0..K-1) and leave its model "
                   "in --out, as one job of K (e.g. a SLURM array); then `ielstudio merge` writes the masks")
    _add_clean_flags(c)

    m = sub.add_parser("merge", help="join the folders of the --fold jobs into cleaned masks and a report",
                       description="Join the output folders of `ielstudio clean --folds K --fold I` (I = 0..K-1) into "
                       "cleaned masks and a report in --out: the same as one `clean --folds K` run with the same seed. "
                       "The images and masks are read from where the fold jobs read them.")
    m.add_argument("folds", nargs="+", metavar="DIR", help="the K fold folders")
    m.add_argument("--out", required=True, metavar="DIR", help="folder for the cleaned masks (not IMAGES or MASKS)")
    m.add_argument("--images", metavar="IMAGES", help="the images folder, if it is not where the fold jobs read it")
    m.add_argument("--masks", metavar="MASKS", help="the masks folder, if it is not where the fold jobs read it")
    m.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to predict (default: the fold jobs' setting)")
    m.add_argument("--report", metavar="FILE.json", help="where to write the JSON report (default: OUT/ielstudio-report.json)")
    m.add_argument("--csv", metavar="FILE.csv", help="also write a per-image table")
    m.add_argument("--save-model", metavar="PATH", help="save the K fold models as one model file (opens in the window "
                   "like one saved by clean --folds K)")

    t = sub.add_parser("train", help="train a segmenter and save it",
                       description="Train a segmenter on IMAGES with MASKS and save it with --save-model.")
    t.add_argument("images", metavar="IMAGES", help="folder of images")
    t.add_argument("masks", metavar="MASKS", help="folder of masks")
    _add_training_flags(t)

    r = sub.add_parser("predict", help="segment images with a saved model",
                       description="Segment every image in IMAGES with a saved MODEL and write masks into --out "
                       "(named after the images, in the value convention the model was trained with).")
    r.add_argument("model", metavar="MODEL", help="a model saved by clean/train --save-model")
    r.add_argument("images", metavar="IMAGES", help="folder of images")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for the predicted masks")
    r.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to run (default: auto)")
    r.add_argument("--min-area", type=int, metavar="N", help=f"remove objects smaller than N pixels (default: {_default(CleanConfig, 'min_area')})")
    r.add_argument("--no-fill-holes", action="store_true", default=None, help="keep holes enclosed by an object")
    r.add_argument("--no-adaptive-threshold", action="store_true", default=None, help="decide every pixel by the model's "
                   "argmax (default: at the valley of the folder's probabilities when it is clearly below 0.45)")

    sub.add_parser("install-desktop", help="add IEL Studio to the desktop's application menu",
                   description="Add IEL Studio (menu entry, icon, .ielproj file type) for the current user.")
    sub.add_parser("uninstall-desktop", help="remove IEL Studio from the application menu",
                   description="Remove what install-desktop added.")
    return p


def iel_config_from_args(args: argparse.Namespace, base: IELConfig) -> IELConfig:
    """The IELConfig the --iel / --heat-* / --convex-* flags ask for."""
    values = {field: getattr(args, dest) for dest, field in IEL_FLAGS.items()
              if dest not in ("iel", "convex_classes") and getattr(args, dest, None) is not None}
    spec = getattr(args, "iel", None)
    convex_classes = getattr(args, "convex_classes", None)
    if spec is None:
        if convex_classes and not getattr(args, "convex_hull", None):
            raise ValueError("--convex-classes needs --iel heat,convex (or convex), or --convex-hull")
        return dataclasses.replace(base, **values)
    if "convex" in spec.split(","):
        values["convex_classes"] = convex_classes or (1,)
    return IELConfig.from_spec(spec, **values)


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, CleanConfig]:
    """The TrainConfig and CleanConfig the flags ask for; unset flags keep the dataclass defaults."""
    base = TrainConfig()
    values = {field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items() if getattr(args, dest, None) is not None}
    values.update({f.name: getattr(args, f.name) for f in advanced_train_fields() if getattr(args, f.name, None) is not None})
    if "max_steps" in values and "min_steps" not in values:
        values["min_steps"] = min(base.min_steps, values["max_steps"])
    values["iel"] = iel_config_from_args(args, base.iel)
    if getattr(args, "no_adaptive_threshold", None):
        values["adaptive_threshold"] = False
    train = dataclasses.replace(base, **values)

    clean: dict = {}
    if getattr(args, "min_area", None) is not None:
        clean["min_area"] = args.min_area
    if getattr(args, "no_fill_holes", None):
        clean["fill_holes"] = False
    if getattr(args, "convex_hull", None):
        clean["convex_hull_classes"] = getattr(args, "convex_classes", None) or (1,)
    if getattr(args, "confident_only", None):
        clean["confident_only"] = True
    if getattr(args, "threshold", None) is not None:
        clean["threshold"] = args.threshold
    if getattr(args, "no_adaptive_threshold", None):
        clean["adaptive_threshold"] = False
    if getattr(args, "edge_tolerance", None) is not None:
        clean["edge_tolerance"] = args.edge_tolerance
    return train, dataclasses.replace(CleanConfig(), **clean)


# ---------------------------------------------------------------- progress output


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """A one-line text bar on a stream: `label [####......] 12/300 loss 0.43 ETA 1:05`.
    On a terminal it redraws in place; otherwise it prints a line every 10 %."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 28):
        self.stream, self.width = stream, width
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_decile: tuple[str, int] | None = None
        self._open = False

    def update(self, label: str, done: int, total: int, extra: str = "") -> None:
        total = max(int(total), 1)
        frac = min(max(done / total, 0.0), 1.0)
        fill = int(round(frac * self.width))
        line = f"{label} [{'#' * fill}{'.' * (self.width - fill)}] {done}/{total}{' ' + extra if extra else ''}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            decile = (label, int(frac * 10))
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _consume(events: Iterable, bar: ProgressBar, upper_bound: bool = False):
    """Print progress for a job's events; returns the last event. `upper_bound`: the step
    total is only a cap (automatic budget), so the ETA is shown as "at most"."""
    from ielstudio.core import cleaning, distributed, training

    last = None
    quiet = not distributed.world().is_main  # under torchrun rank 0 speaks for all
    for ev in events:
        last = ev
        if quiet:
            continue
        if isinstance(ev, training.StepEvent):
            bar.update("training  ", ev.step, ev.total_steps, f"loss {ev.loss:.4f} ETA {'<=' if upper_bound else ''}{_duration(ev.eta_s)}")
        elif isinstance(ev, cleaning.LoadedEvent):
            bar.end()
            _say(f"found {ev.n_samples} {ev.unit} ({ev.n_classes} classes), skipped {len(ev.skipped)} file(s)")
            for path, problem in ev.skipped:
                _say(f"  skipped {path}: {problem}")
            for warning in ev.warnings:
                _say(f"warning: {warning}")
        elif isinstance(ev, cleaning.ModelEvent):
            bar.end()
            _say(f"network: {ev.arch}, {ev.n_parameters:,} parameters, on {ev.device}")
        elif isinstance(ev, training.EvalEvent):
            bar.end()
            fold = f"fold {ev.fold + 1}/{ev.n_folds} " if ev.n_folds > 1 else ""
            _say(f"  {fold}step {ev.step}: agreement with the given labels {ev.agreement:.3f}{' (best)' if ev.best else ''}")
        elif isinstance(ev, cleaning.PredictEvent):
            bar.update("predicting", ev.index + 1, ev.total, ev.name)
        elif isinstance(ev, training.DoneEvent):
            bar.end()
            _say(f"training stopped after {ev.steps} steps ({ev.reason})")
            note = augmentation_note(ev.history)
            if note:
                _say(f"  {note}")
    bar.end()
    return last


# ---------------------------------------------------------------- command handlers


def _cmd_gui(args: argparse.Namespace) -> int:
    paths = list(args.paths)
    kw: dict = {}
    if len(paths) == 1 and paths[0].endswith(".ielproj"):
        kw["project"] = paths[0]
    elif len(paths) == 2:
        kw["images_dir"], kw["masks_dir"] = paths
    elif paths:
        _say("ielstudio: error: give IMAGES MASKS folders or one .ielproj file")
        return 2
    from ielstudio.gui.app import run_app

    return int(run_app(**kw) or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ielstudio.gui.app import run_app

    return int(run_app(demo=True, train_steps=args.train_steps, screenshot=args.screenshot) or 0)


def _print_summary(report: dict, report_path) -> None:
    written = report.get("written", [])
    skipped = report.get("skipped", [])
    scores = [img["score"] for img in report.get("images", [])]
    _say(f"wrote {len(written)} cleaned mask(s) to {report.get('out_dir')}")
    rows = report.get("images", [])
    changed = sum(1 for img in rows if img.get("changed_pixels"))
    removed, added = report.get("objects_removed", 0), report.get("regions_added", 0)
    per_object = ([f"{removed} object(s) removed"] if removed else []) + ([f"{added} region(s) added"] if added else [])
    _say(f"changed {changed} of {len(rows)} mask(s)"
         + (f" ({' and '.join(per_object)} where the model and the image agree)" if per_object else ""))
    if skipped:
        _say(f"skipped {len(skipped)} file(s):")
        for s in skipped:
            _say(f"  {s['path']}: {s['problem']}")
    for warning in report.get("warnings", []):
        _say(f"warning: {warning}")
    rel = report.get("reliability") or {}
    if rel.get("out_of_sample"):
        from ielstudio.core.review import few_held_out_note, held_out_units

        held = report.get("training", {}).get("holdout")
        n, what = held_out_units(held) if held else (int(rel.get("n_images", 0)), "image(s)")
        note = few_held_out_note(n, bool(report.get("model", {}).get("out_of_sample")), what)
        if note:
            _say(f"note: {note}")
    if scores:
        _say(f"mean label-quality score {sum(scores) / len(scores):.3f} (1 = label agrees with the model); worst first in the report")
    saved = report.get("model", {}).get("saved_to")
    if saved:
        _say(f"model saved to {saved}")
    _say(f"report: {report_path}")


def _cmd_clean(args: argparse.Namespace) -> int:
    from ielstudio.core.cleaning import CleanDone, clean_dataset

    train, clean = configs_from_args(args)
    if args.fold is not None:
        return _clean_one_fold(args, train, clean)
    events = clean_dataset(
        args.images, args.masks, args.out, train, clean,
        report_path=args.report, csv_path=args.csv, save_model=args.save_model,
    )
    last = _consume(events, ProgressBar(), upper_bound=train.epochs is None)
    if isinstance(last, CleanDone):
        _print_summary(last.report, last.report_path)
    return 0


def _clean_one_fold(args: argparse.Namespace, train: TrainConfig, clean: CleanConfig) -> int:
    from ielstudio.core.folds import FoldDone, clean_fold

    given = [flag for flag, value in (("--report", args.report), ("--csv", args.csv),
                                      ("--save-model", args.save_model)) if value]
    if given:
        _say(f"ielstudio clean --fold: error: {', '.join(given)} belong to `ielstudio merge` (a fold job writes "
             "only its model and manifest into --out)")
        return 2
    last = _consume(clean_fold(args.images, args.masks, args.out, args.fold, train, clean), ProgressBar(),
                    upper_bound=train.epochs is None)
    if isinstance(last, FoldDone):
        _say(f"fold {last.fold} of {last.folds} done: model {last.model_path}; when all {last.folds} folds are "
             f"done, join them with `ielstudio merge DIR_0 ... DIR_{last.folds - 1} --out DIR`")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from ielstudio.core.cleaning import CleanDone
    from ielstudio.core.folds import merge_folds

    events = merge_folds(args.folds, args.out, images_dir=args.images, masks_dir=args.masks, report_path=args.report,
                         csv_path=args.csv, save_model=args.save_model, device=args.device)
    last = _consume(events, ProgressBar())
    if isinstance(last, CleanDone):
        _print_summary(last.report, last.report_path)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ielstudio.core.cleaning import TrainDone, train_dataset

    if not args.save_model:
        _say("ielstudio train: error: --save-model PATH is required (where to put the trained model)")
        return 2
    train, _ = configs_from_args(args)
    last = _consume(train_dataset(args.images, args.masks, train, args.save_model), ProgressBar(),
                    upper_bound=train.epochs is None)
    if isinstance(last, TrainDone):
        _say(f"model saved to {last.model_path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ielstudio.core.cleaning import PredictDone, predict_folder

    clean = CleanConfig()
    if args.min_area is not None:
        clean = dataclasses.replace(clean, min_area=args.min_area)
    if args.no_fill_holes:
        clean = dataclasses.replace(clean, fill_holes=False)
    if args.no_adaptive_threshold:
        clean = dataclasses.replace(clean, adaptive_threshold=False)
    last = _consume(predict_folder(args.model, args.images, args.out, device=args.device, clean_config=clean), ProgressBar())
    if isinstance(last, PredictDone):
        from ielstudio.core import distributed

        speak = _say if distributed.world().is_main else (lambda msg: None)  # every rank has the whole list
        speak(f"wrote {len(last.written)} mask(s) to {args.out}")
        for path, problem in last.skipped:
            speak(f"  skipped {path}: {problem}")
        for warning in last.warnings:
            speak(f"warning: {warning}")
        if not last.written:
            speak(f"ielstudio predict: error: no image in {args.images} could be segmented")
            return 2
    return 0


def _cmd_install_desktop(args: argparse.Namespace) -> int:
    from ielstudio.desktop import install_desktop

    change = install_desktop()
    _say(f"installed IEL Studio in the application menu: {change}")
    return 0


def _cmd_uninstall_desktop(args: argparse.Namespace) -> int:
    from ielstudio.desktop import uninstall_desktop

    change = uninstall_desktop()
    _say(f"removed IEL Studio from the application menu: {change}")
    return 0


#: Commands that run on several processes under torchrun (`core.distributed`).
DISTRIBUTED_COMMANDS = ("train", "clean", "predict")

HANDLERS = {
    "gui": _cmd_gui,
    "demo": _cmd_demo,
    "clean": _cmd_clean,
    "merge": _cmd_merge,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "install-desktop": _cmd_install_desktop,
    "uninstall-desktop": _cmd_uninstall_desktop,
}


def main(argv: list[str] | None = None) -> int:
    """Run the `ielstudio` command line; returns the exit code (0 ok, 2 bad input, 130 Ctrl+C, 143 SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")):
        argv.insert(0, "gui")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from ielstudio.core import distributed
    from ielstudio.core.training import TrainingError

    previous = _stop_on_sigterm() if args.command not in ("gui", "demo") else None  # Qt handles the window's
    rank = ""
    try:
        if distributed.launched():
            if args.command not in DISTRIBUTED_COMMANDS:
                _say(f"ielstudio {args.command}: error: runs in one process; start it without torchrun "
                     f"(torchrun runs {', '.join(DISTRIBUTED_COMMANDS)})")
                return 2
            world = distributed.init_from_env(getattr(args, "device", None) or "auto")
            rank = f"[rank {world.rank}/{world.size}] "
        code = HANDLERS[args.command](args)
        distributed.shutdown(finished=True)  # every rank done: leave together
        if rank:
            _end_rank(code)
        return code
    except KeyboardInterrupt:
        _say(f"\nielstudio {args.command}: interrupted; files already written are complete, nothing half-written is left")
        return 130
    except Terminated:
        _say(f"\nielstudio {args.command}: stopped by SIGTERM; files already written are complete, "
             "nothing half-written is left")
        return 128 + signal.SIGTERM
    except (DataError, OSError, ValueError, TrainingError) as e:
        if os.environ.get("IELSTUDIO_DEBUG"):
            raise
        _say(f"{rank}ielstudio {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 2
    except RuntimeError as e:
        if not rank:
            raise
        # a collective failed: another rank died or its connection broke (torchrun then stops us all)
        _say(f"{rank}ielstudio {args.command}: error: stopped because another process of this run failed or "
             f"lost its connection; its own message is above ({(str(e).splitlines() or [''])[0][:160]})")
        return 1
    finally:
        # the old handler first: a SIGTERM during this last cleanup (the run has ended, or
        # is ending with its message said) then does what it would have done anyway,
        # rather than raise Terminated out of `finally` as a raw traceback
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown(finished=False)  # after a failure (else already left)


def _end_rank(code: int) -> None:
    """A torchrun rank whose command succeeded ends here, after every rank has left the
    process group: its files are written and its output is flushed, and it exits without
    running C++ static destructors. With them, a gloo thread still alive at interpreter
    exit aborted a finished rank now and then ("terminate called without an active
    exception", SIGABRT; seen in CI on a loaded machine), which failed a run that had
    done all its work."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM (`kill`, a job scheduler, systemd).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows
    it; atomic writers remove their temp file on the way out."""


def _stop_on_sigterm():
    """Turn SIGTERM into `Terminated` for the duration of a headless command; returns the old handler
    (None where signals cannot be set: not the main thread). Only the first SIGTERM raises: a
    second one (torchrun sends one to every rank when one fails) must not interrupt the cleanup
    the first started, which would end in a raw traceback."""
    def handler(signum, frame):
        if handler.stopping:
            return
        handler.stopping = True
        raise Terminated()
    handler.stopping = False
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread of the main interpreter
        return None


if __name__ == "__main__":
    sys.exit(main())
