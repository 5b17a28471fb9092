"""Turn a model's probabilities into a cleaned mask, score how much a label can be trusted,
and run the whole clean-a-folder job (`ielstudio clean`).

Pure functions (numpy + cv2): `propose`, `postprocess`, `label_quality`, `change_summary`.
The job: `clean_dataset(...)`, a generator of progress events ending in `CleanDone`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from .. import __version__
from . import distributed
from .class_names import names_by_class, read_class_names, report_class_names, with_class_names
from .dataset import LoadedDataset, image_to_chw, load_samples, load_samples_lazily, scan_pairs
from .decision import decide, decision_thresholds
from .errors import Cancelled, DataError
from .imageio import (
    IMAGE_EXTENSIONS,
    WRITABLE_MASK_EXTENSIONS,
    MaskEncoding,
    atomic_write_text,
    file_stem,
    file_suffix,
    normalize_intensity,
    read_image,
    remove_stale_temp_files,
    write_mask,
)
from .metrics import dice as _dice
from .models import build_model, count_parameters
from .review import review_samples, scoring_predictions
from .training import (
    CrossFitModel,
    DoneEvent,
    TrainConfig,
    load_checkpoint,
    predict,
    save_checkpoint,
    select_device,
    train,
)


@dataclass(frozen=True)
class CleanConfig:
    """How a model's prediction becomes the proposed mask.

    min_area: connected objects of a foreground class smaller than this (pixels) are
        removed and take the majority class around them (0 keeps everything).
    fill_holes: background enclosed by a foreground class becomes that class.
    convex_hull_classes: classes whose objects are replaced by their convex hull
        (only background pixels are painted, other classes are never overwritten).
    confident_only: keep the given label except where the model is confident
        (max probability >= threshold) and disagrees with it.
    threshold: confidence needed to overrule the given label in confident_only mode.
    adaptive_threshold: decide each foreground class at the valley of the model's
        probabilities over the data set instead of at 0.5 (`core.decision`): when
        annotators left objects out, the model's probability on every such object
        sits below 0.5, and the plain argmax would delete the labelled ones too.
    edge_tolerance: a short stretch of outline the model only moves by at most this
        many pixels is left as annotated (0 applies every change; `keep_given_edges`).
        The model's edges are no more exact than a careful annotator's; without this,
        every object's outline would be redrawn by a pixel here and there, which the
        annotator then has to review and which is as often worse as better.
    """

    min_area: int = 10
    fill_holes: bool = True
    convex_hull_classes: tuple[int, ...] = ()
    confident_only: bool = False
    threshold: float = 0.9
    adaptive_threshold: bool = True
    edge_tolerance: int = 1

    def __post_init__(self):
        object.__setattr__(self, "convex_hull_classes", tuple(int(c) for c in self.convex_hull_classes))
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.edge_tolerance < 0:
            raise ValueError(f"edge_tolerance must be >= 0, got {self.edge_tolerance}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["convex_hull_classes"] = list(self.convex_hull_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CleanConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check(probs: np.ndarray, given: np.ndarray) -> None:
    if probs.ndim != 3 or given.shape != probs.shape[1:]:
        raise ValueError(f"probs (C,H,W) {probs.shape} and given (H,W) {given.shape} do not match")


CALIBRATION_IMAGES = 64  # images whose probabilities set the decision thresholds of a data set


def calibration_subset(items: list) -> list:
    """At most CALIBRATION_IMAGES items, spread evenly over `items`."""
    if len(items) <= CALIBRATION_IMAGES:
        return list(items)
    idx = np.linspace(0, len(items) - 1, CALIBRATION_IMAGES).round().astype(int)
    return [items[i] for i in idx]


def thresholds_for(prob_maps, config: CleanConfig) -> np.ndarray | None:
    """The data set's decision thresholds (`core.decision`) from (C,H,W) probability maps
    (e.g. of `calibration_subset` images), or None when `config.adaptive_threshold` is off."""
    if not config.adaptive_threshold:
        return None
    return decision_thresholds(prob_maps)


def propose(probs: np.ndarray, given: np.ndarray, config: CleanConfig = CleanConfig(),
            thresholds: np.ndarray | None = None) -> np.ndarray:
    """The proposed clean mask (H,W) int64: the model's decision (`core.decision.decide`
    with the data set's `thresholds`; None: argmax), or, with `confident_only`, the
    given label overruled only where the model is confident; then `postprocess`, then
    changes that only move an edge by up to `edge_tolerance` px set back to the given
    label (`keep_given_edges`)."""
    probs = np.asarray(probs)
    given = np.asarray(given)
    _check(probs, given)
    arg = decide(probs, thresholds)
    if config.confident_only:
        confident = probs.max(axis=0) >= config.threshold
        mask = np.where(confident, arg, given).astype(np.int64)
    else:
        mask = arg
    return keep_given_edges(postprocess(mask, config), given, config.edge_tolerance)


EDGE_SLIVER_LENGTH = 8  # px of outline per px of tolerance: longer slivers are a misdrawn outline


def keep_given_edges(proposal: np.ndarray, given: np.ndarray, tolerance: int,
                     max_length: int = EDGE_SLIVER_LENGTH) -> np.ndarray:
    """`proposal` with every change that only nudges an edge set back to `given`.

    A change is an 8-connected region where the two masks differ. It only nudges an
    edge when each of its pixels lies within `tolerance` px (chessboard distance) of a
    pixel where both masks agree on the pixel's given class, and of one where they
    agree on its proposed class (a sliver between two regions the model confirms),
    and when it is short: at most `max_length * tolerance` pixels. Longer slivers, an
    outline drawn consistently a pixel too wide or too narrow, are corrected; so are
    removed specks, filled holes, filled notches and restored blocks, which are
    never such slivers.

    Measured once on the bundled nuclei (300 steps, a probe not kept in the repo):
    the network's own disagreements with an exact outline are 1-3 px runs (99th
    percentile 3-7 px), hence the default length of 8."""
    proposal = np.asarray(proposal)
    given = np.asarray(given)
    changed = proposal != given
    if tolerance <= 0 or not changed.any():
        return proposal
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    agree = ~changed
    near_given = np.zeros(given.shape, bool)
    near_proposed = np.zeros(given.shape, bool)
    for c in np.unique(np.concatenate([given[changed], proposal[changed]])):
        near = cv2.dilate((agree & (given == c)).astype(np.uint8), kernel).astype(bool)
        near_given |= near & (given == c)
        near_proposed |= near & (proposal == c)
    _, labels, stats = _components(changed)
    moves_edge = near_given & near_proposed
    real = np.unique(labels[changed & ~moves_edge])
    long = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] > max_length * tolerance)
    back = changed & ~np.isin(labels, real) & ~np.isin(labels, long)
    if not back.any():
        return proposal
    out = proposal.copy()
    out[back] = given[back]
    return out


def _components(binary: np.ndarray, connectivity: int = 8):
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity)
    return n, labels, stats


def _remove_specks(mask: np.ndarray, cls: int, min_area: int) -> None:
    """In place: objects of `cls` smaller than min_area take the majority class of their 1-px ring."""
    n, labels, stats = _components(mask == cls)
    h, w = mask.shape
    kernel = np.ones((3, 3), np.uint8)
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area >= min_area:
            continue
        y0, y1, x0, x1 = max(y - 1, 0), min(y + bh + 1, h), max(x - 1, 0), min(x + bw + 1, w)
        comp = labels[y0:y1, x0:x1] == i
        ring = cv2.dilate(comp.astype(np.uint8), kernel).astype(bool) & ~comp
        around = mask[y0:y1, x0:x1][ring]
        around = around[around != cls]
        fill = int(np.bincount(around).argmax()) if around.size else 0
        mask[y0:y1, x0:x1][comp] = fill


def _fill_holes(mask: np.ndarray, cls: int) -> None:
    """In place: background enclosed by `cls` (not 4-connected to the border outside it)
    becomes `cls` when the hole is no wider than the object around it: its inscribed
    radius is at most the object's largest half-thickness within that radius (+2 px) of
    the hole. A hole in a blob is filled; the loop of a vessel tree, which encloses
    background far wider than the vessels, is not."""
    outside = mask != cls
    n, labels, stats = _components(outside, connectivity=4)
    if n <= 1:
        return
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    h, w = mask.shape
    obj = None
    for i in range(1, n):
        if i in border:
            continue
        x, y, bw, bh, _ = stats[i]
        hole = labels[y:y + bh, x:x + bw] == i
        if not (mask[y:y + bh, x:x + bw][hole] == 0).any():
            continue
        radius = float(cv2.distanceTransform(np.pad(hole, 1).astype(np.uint8), cv2.DIST_L2, 3).max())
        m = int(np.ceil(radius)) + 2
        y0, y1, x0, x1 = max(y - m, 0), min(y + bh + m, h), max(x - m, 0), min(x + bw + m, w)
        if obj is None:
            obj = cv2.distanceTransform((mask == cls).astype(np.uint8), cv2.DIST_L2, 3)
        window = labels[y0:y1, x0:x1] == i
        near = cv2.dilate(window.astype(np.uint8), np.ones((2 * m + 1, 2 * m + 1), np.uint8)).astype(bool)
        thickness = float(obj[y0:y1, x0:x1][near].max(initial=0.0))
        if radius <= thickness:
            region = mask[y0:y1, x0:x1]
            region[window & (region == 0)] = cls


def _convex_hulls(mask: np.ndarray, cls: int) -> None:
    """In place: each object of `cls` is grown to its convex hull (background pixels only)."""
    n, labels, stats = _components(mask == cls)
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        comp = (labels[y:y + bh, x:x + bw] == i).astype(np.uint8)
        hull = cv2.convexHull(cv2.findNonZero(comp))
        canvas = np.zeros_like(comp)
        cv2.fillConvexPoly(canvas, hull, 1)
        window = mask[y:y + bh, x:x + bw]
        window[(canvas > 0) & (window == 0)] = cls


def postprocess(mask: np.ndarray, config: CleanConfig = CleanConfig()) -> np.ndarray:
    """A copy of `mask` with specks removed, holes filled and hulls taken (in that order),
    each per foreground class as `config` asks."""
    out = np.array(mask, dtype=np.int64, copy=True)
    classes = [int(c) for c in np.unique(out) if c != 0]
    if config.min_area > 1:
        for c in classes:
            _remove_specks(out, c, config.min_area)
    if config.fill_holes:
        for c in classes:
            _fill_holes(out, c)
    for c in config.convex_hull_classes:
        if c != 0:
            _convex_hulls(out, c)
    return out


def label_quality(probs: np.ndarray, given: np.ndarray,
                  thresholds: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """How far the given label can be trusted, judged by the model.

    Returns (score, doubt): doubt (H,W) float32 = 1 - p(given label) per pixel;
    score in [0, 1], 1 = the label agrees with a confident model:

        score = 0.9 * Dice(given, decision) + 0.1 * mean p(given) over the union of foregrounds

    The hard foreground Dice (`metrics.dice`) between the label and the model's decision
    (its argmax, or `core.decision.decide` with the data set's `thresholds`)
    estimates the label's true Dice when the model is right; it ranked labels best in a
    check on 32 generated images per noise kind (Spearman with the true Dice, weights
    1.0 / 0.9 / 0.5: jitter .978/.983/.981, blocks .829/.821/.811, specks .977/.973/.948,
    missing objects .855/.852/.846; soft Dice and whole-image mean p(given) were far
    worse). The small confidence term breaks the ties of images whose argmax matches
    exactly, ranking the ones the model is less sure of first. An image where neither the
    label nor the model has any foreground scores the mean p(given) over the whole image.
    """
    probs = np.asarray(probs, dtype=np.float32)
    given = np.asarray(given).astype(np.int64)
    _check(probs, given)
    n_classes = probs.shape[0]
    g = np.clip(given, 0, n_classes - 1)
    p_given = np.take_along_axis(probs, g[None], axis=0)[0]
    doubt = (1.0 - p_given).astype(np.float32)

    arg = decide(probs, thresholds)
    union = (given != 0) | (arg != 0)
    if not union.any():
        return float(np.clip(p_given.mean(), 0.0, 1.0)), doubt
    dice = _dice(arg, given, n_classes)
    confidence = float(p_given[union].mean())
    return float(np.clip(0.9 * dice + 0.1 * confidence, 0.0, 1.0)), doubt


#: A class whose cleaned masks keep less than this share of its labelled pixels is reported.
LOST_CLASS_SHARE = 0.1


def lost_class_warnings(labelled: np.ndarray, proposed: np.ndarray) -> list[str]:
    """Warnings for the foreground classes the model did not learn: per class c, `labelled[c]`
    pixels in the given masks and `proposed[c]` in the cleaned ones (summed over the data set).
    A class that keeps less than LOST_CLASS_SHARE of its pixels is named: e.g. a small class
    (a lesion core, a few % of the pixels) with noisy labels on a handful of images, which
    the network did not pick up in the steps it trained. Its cleaned masks are then wrong."""
    out = []
    for c in range(1, len(labelled)):
        if labelled[c] > 0 and proposed[c] < LOST_CLASS_SHARE * labelled[c]:
            out.append(f"class {c}: the given masks mark {int(labelled[c])} pixels, the cleaned masks only "
                       f"{int(proposed[c])} ({proposed[c] / labelled[c]:.0%}); the model did not learn this class. "
                       f"Check these masks before using them; training longer (more epochs) or on more images may help")
    return out


def change_summary(before: np.ndarray, after: np.ndarray, n_classes: int) -> dict:
    """What changed between two masks: per class pixels added (now that class, was not)
    and removed (was, now not), total changed pixels and their fraction of the image."""
    before = np.asarray(before)
    after = np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} vs {after.shape}")
    changed = before != after
    added = [int((changed & (after == c)).sum()) for c in range(n_classes)]
    removed = [int((changed & (before == c)).sum()) for c in range(n_classes)]
    n = int(changed.sum())
    return {
        "added": added,
        "removed": removed,
        "changed_pixels": n,
        "changed_fraction": n / before.size if before.size else 0.0,
    }


# =========================================================================== the clean-a-folder job


@dataclass
class LoadedEvent:
    """The dataset was scanned and read: usable pairs, classes and the files left out."""

    n_samples: int
    n_classes: int
    skipped: list[tuple[str, str]]  # (path, problem)
    warnings: list[str] = field(default_factory=list)  # repairs made while reading kept files
    unit: str = "image/mask pairs"  # what n_samples counts


@dataclass
class ModelEvent:
    """The network that will be trained (printed as its parameter count)."""

    arch: str
    n_parameters: int
    device: str


@dataclass
class PredictEvent:
    """Image `index` of `total` was predicted, cleaned and written."""

    index: int
    total: int
    name: str
    score: float


@dataclass
class CleanDone:
    """Last event of `clean_dataset`: the report (also written to `report_path`)."""

    report: dict
    report_path: Path


@dataclass
class TrainDone:
    """Last event of `train_dataset`."""

    model_path: Path
    steps: int
    reason: str


@dataclass
class PredictDone:
    """Last event of `predict_folder`."""

    written: list[Path]
    skipped: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)  # repairs made while reading (e.g. NaN pixels)


REPORT_NAME = "ielstudio-report.json"
#: Written into the output folder before `clean` writes its first mask and removed once
#: its report is written: when a run is killed in between, the next run finds it and says so.
RUN_MARKER = ".ielstudio-run-in-progress.json"


def previous_run_cut_short(out: Path) -> str | None:
    """A warning when the last `clean` into `out` was killed or cut short before its report."""
    marker = Path(out) / RUN_MARKER
    if not marker.is_file():
        return None
    try:
        started = json.loads(marker.read_text(encoding="utf-8")).get("started", "at an unknown time")
    except (OSError, ValueError, AttributeError):
        started = "at an unknown time"
    return (f"{out}: the last run into this folder (started {started}) ended before it wrote its report "
            "(it was killed or stopped); masks it wrote may still be here. This run writes every mask again")


def check_out_dir(out_dir: str | Path, images_dir: str | Path, masks_dir: str | Path) -> Path:
    """The output folder, refused (DataError) if it is the images or masks folder or inside
    the masks folder: cleaned masks must never land over or among the originals."""
    out = Path(out_dir).expanduser().resolve()
    images, masks = Path(images_dir).expanduser().resolve(), Path(masks_dir).expanduser().resolve()
    if out == masks or masks in out.parents:
        raise DataError(out_dir, "output folder is (inside) the masks folder; choose another so the originals stay untouched")
    if out == images:
        raise DataError(out_dir, "output folder is the images folder; choose another")
    if out.exists() and not out.is_dir():
        raise DataError(out_dir, "output path exists and is not a folder")
    return out


def check_output_files(files: dict[str, str | Path | None], images_dir: str | Path, masks_dir: str | Path,
                       out_dir: str | Path | None = None) -> dict[str, Path]:
    """Resolved paths of the output files (``{"the report": path, ...}``; None entries are
    left out), refused with DataError before any work starts when one of them

    - would land in the masks folder, or replace a file of the images folder;
    - is an existing folder, or its parent folder cannot be written;
    - is the same file as another output, or as a cleaned mask in ``out_dir``.
    """
    images = Path(images_dir).expanduser().resolve()
    masks = Path(masks_dir).expanduser().resolve()
    for folder, what in ((images, "images"), (masks, "masks")):  # before any check that looks inside them
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            raise DataError(folder, f"{what} folder cannot be read (permission denied)")
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    taken: dict[Path, str] = {}
    for what, path in files.items():
        if path is None:
            continue
        target = Path(path).expanduser().resolve()
        if masks == target or masks in target.parents:
            raise DataError(path, f"{what} would be written into the masks folder; choose another place")
        if target.parent == images and target.exists():
            raise DataError(path, f"{what} would replace a file of the images folder; choose another place")
        if target.is_dir():
            raise DataError(path, f"{what} must be a file name, but this is a folder")
        if target in taken:
            raise DataError(path, f"{what} and {taken[target]} would be written to the same file; give them different names")
        if out is not None and target.parent == out and (masks / target.name).is_file():
            raise DataError(path, f"{what} would replace the cleaned mask of the same name; choose another name")
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise DataError(path, f"cannot write {what} here: {parent} is not a writable folder")
        taken[target] = what
    return {what: target for target, what in taken.items()}


#: Data sets with more image/mask pairs than this are read lazily (`dataset.load_samples_lazily`):
#: 2,000 pairs of 512 px take about 4 GB in memory as float32 images and int64 masks.
LAZY_ABOVE = 2000


def load_dataset(images_dir: str | Path, masks_dir: str | Path, lazy: bool | None = None) -> LoadedDataset:
    """Scan and load a dataset of 2-D images; DataError when not a single pair is usable
    (naming why), or when the images are volumes (only `clean` reads those so far).
    `lazy`: read the pixels only when needed (None: when there are more than LAZY_ABOVE pairs)."""
    from .volume_data import is_volume_dataset

    if is_volume_dataset(images_dir):
        raise DataError(images_dir, "holds 3-D volumes: `ielstudio clean` and `train` read them; predict, --fold "
                                    "jobs and the window read 2-D images only for now")
    scan = scan_pairs(images_dir, masks_dir)
    if lazy is None:
        lazy = len(scan.pairs) > LAZY_ABOVE
    loaded = load_samples_lazily(scan) if lazy else load_samples(scan)
    if not loaded.samples:
        first = f"; first: {loaded.skipped[0]}" if loaded.skipped else ""
        raise DataError(masks_dir, f"no usable image/mask pairs ({len(loaded.skipped)} file(s) skipped{first})")
    return loaded


def _skipped_list(skipped) -> list[tuple[str, str]]:
    return [(str(s.path), s.problem) for s in skipped]


def _model_event(config: TrainConfig, in_channels: int, n_classes: int) -> ModelEvent:
    """What will be trained: the architecture (or the checkpoint's) and its parameter count."""
    device = select_device(config.device)
    if config.init_checkpoint:
        model, _, _ = load_checkpoint(config.init_checkpoint)
    else:
        model = build_model(config.arch, in_channels, n_classes, **config.model_kwargs())
    arch = getattr(model, "model_spec", {}).get("arch", config.arch)
    return ModelEvent(arch, count_parameters(model), str(device))


def _fit(samples, config: TrainConfig, cancel, scoring: bool = True, groups: dict[str, str] | None = None):
    """Forward the training events; returns the DoneEvent (via StopIteration value).
    `scoring`: every image is proposed and scored after training (the ETA includes it);
    `groups`: images held out together (a volume's slices)."""
    done = None
    after = scoring_predictions(len(samples), config) if scoring else 0
    for ev in train(samples, config, cancel=cancel, predictions_after=after, groups=groups):
        if isinstance(ev, DoneEvent):
            done = ev
        yield ev
    return done


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _training_summary(done: DoneEvent) -> dict:
    h = done.history
    keep = ("budget", "augmentation", "best_step", "best_agreement", "step_time_s", "elapsed_s", "holdout",
            "n_train", "n_holdout")
    out = {"steps": done.steps, "stopped_because": done.reason}
    out.update({k: h[k] for k in keep if k in h})
    if "folds" in h:
        out["folds"] = [{k: f.get(k) for k in ("steps", "reason", "best_step", "best_agreement")} for f in h["folds"]]
    out["world_size"] = world_size_of(done)
    return out


def _write_marker(marker: Path, report_file: Path) -> None:
    atomic_write_text(marker, json.dumps({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                          "pid": os.getpid(), "report": str(report_file)}))


@dataclass
class CleanRun:
    """A `clean` run set up and checked before training (`prepare_clean`): where it
    writes, the data set it loaded, the settings it runs with."""

    images_dir: Path
    masks_dir: Path
    out: Path
    report_file: Path
    csv_path: Path | None
    save_model: Path | None
    loaded: LoadedDataset
    train_config: TrainConfig
    clean_config: CleanConfig
    warnings: list[str]
    started: float
    #: the data set's class names by stored label value (`class_names.read_class_names`, read once)
    class_names: dict[int, str]

    def loaded_event(self) -> LoadedEvent:
        loaded = self.loaded
        return LoadedEvent(len(loaded.samples), loaded.n_classes, _skipped_list(loaded.skipped), list(self.warnings))


def prepare_clean(images_dir: str | Path, masks_dir: str | Path, out_dir: str | Path,
                  train_config: TrainConfig | None = None, clean_config: CleanConfig | None = None,
                  report_path: str | Path | None = None, csv_path: str | Path | None = None,
                  save_model: str | Path | None = None, load: Callable | None = None) -> CleanRun:
    """Check every output place, load the data set (`load(images_dir, masks_dir)`, default
    `load_dataset`; volumes: `volume_clean.load_volumes`) and make the output folder,
    before any training (DataError naming the first problem)."""
    started = time.time()
    train_config = train_config or TrainConfig()
    clean_config = clean_config or CleanConfig()
    if not clean_config.adaptive_threshold:  # the budget then judges held-out pixels by the argmax too
        train_config = replace(train_config, adaptive_threshold=False)
    out = check_out_dir(out_dir, images_dir, masks_dir)
    report_file = Path(report_path) if report_path else out / REPORT_NAME
    check_output_files({"the report": report_file, "the CSV table": csv_path, "the model": save_model},
                       images_dir, masks_dir, out)
    loaded = (load or load_dataset)(images_dir, masks_dir)
    out.mkdir(parents=True, exist_ok=True)  # fail on an unwritable place before training, not after
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(out_dir, "output folder is not writable")
    remove_stale_temp_files(out)  # left by a run that was killed while writing
    warnings = list(loaded.warnings)
    class_names, names_problem = read_class_names(masks_dir)
    if names_problem:
        warnings.append(names_problem)
    cut_short = previous_run_cut_short(out)
    if cut_short:
        warnings.insert(0, cut_short)
    return CleanRun(Path(images_dir), Path(masks_dir), out, report_file, Path(csv_path) if csv_path else None,
                    Path(save_model) if save_model else None, loaded, train_config, clean_config, warnings, started,
                    class_names)


def clean_dataset(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    train_config: TrainConfig | None = None,
    clean_config: CleanConfig | None = None,
    report_path: str | Path | None = None,
    csv_path: str | Path | None = None,
    save_model: str | Path | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator:
    """Train on a folder of noisy masks and write cleaned masks + a report (`ielstudio clean`).

    Yields LoadedEvent, ModelEvent, the training events (StepEvent, EvalEvent, ...,
    DoneEvent), PredictEvent per image and, last, CleanDone with the report.
    Masks go to `out_dir` under their original file names, in the input's value
    convention and format; the masks folder is never written to. With
    `train_config.folds > 1` each image is predicted by a model that did not train on it.
    Bad files are skipped and listed; DataError when nothing can be processed.
    Stops (no report) when `cancel()` turns true. A folder of volumes (NIfTI, NRRD,
    DICOM series) is cleaned by `volume_clean.clean_volumes`, with the same events.
    """
    from .volume_data import is_volume_dataset

    if is_volume_dataset(images_dir):
        from .volume_clean import clean_volumes

        yield from clean_volumes(images_dir, masks_dir, out_dir, train_config, clean_config, report_path,
                                 csv_path, save_model, cancel)
        return
    run = prepare_clean(images_dir, masks_dir, out_dir, train_config, clean_config, report_path, csv_path, save_model)
    yield run.loaded_event()
    model_ev = _model_event(run.train_config, run.loaded.in_channels, run.loaded.n_classes)
    yield model_ev
    done = yield from _fit(run.loaded.samples, run.train_config, cancel)
    if done is None or done.reason == "cancelled":
        return
    yield from write_cleaned(run, done, model_ev, cancel)


def world_size_of(done: DoneEvent) -> int:
    """How many processes trained `done`'s model (several with torchrun; `core.distributed`)."""
    histories = done.history.get("folds") or [done.history]
    return max(int(h.get("world_size", 1)) for h in histories)


def write_cleaned(run: CleanRun, done: DoneEvent, model_ev: ModelEvent,
                  cancel: Callable[[], bool] | None = None) -> Iterator:
    """From a trained model to the cleaned masks and the report: review every image
    (`review.review_samples`), write its proposal, then the model, the report and the
    CSV. What `clean` does after training, and `merge` (`core.folds`) after joining its
    fold models. Yields PredictEvent per image and, last, CleanDone. In a distributed
    run every rank reviews and writes its share of the masks; rank 0 writes the rest."""
    loaded, clean_config, train_config = run.loaded, run.clean_config, run.train_config
    samples, n_classes, out = loaded.samples, loaded.n_classes, run.out
    by_name = {s.name: s for s in samples}
    model = done.model
    device = next(model.parameters()).device
    holdout = list(done.history.get("holdout", []))
    images, written = [], []
    marker = out / RUN_MARKER  # written before the first mask: a cancel before it leaves the folder as it was
    world = distributed.world()
    if world.distributed:  # every rank writes masks: the marker comes first
        if world.is_main:
            _write_marker(marker, run.report_file)
        distributed.gather(None)
    reviews = review_samples(model, samples, clean_config, holdout, cancel)
    share = len(distributed.shard(samples, world))  # the images this process reviews
    try:
        while True:
            result = next(reviews)
            s = by_name[result.name]
            dst = out / s.mask_path.name
            if not written and not world.distributed:
                _write_marker(marker, run.report_file)
            write_mask(dst, result.proposal, s.encoding, protect=[s.mask_path])
            written.append(str(dst))
            images.append({
                "name": s.name, "image": str(s.image_path), "mask": str(s.mask_path), "output": str(dst),
                "score": round(result.score, 6), "out_of_sample": result.out_of_sample,
                "objects_removed": result.objects_removed, "regions_added": result.regions_added,
                **({} if result.outline_smoothness is None
                   else {"outline_smoothness": round(result.outline_smoothness, 6)}),
                **({} if result.outline_fit is None else {"outline_fit": round(result.outline_fit, 6)}),
                **change_summary(s.mask, result.proposal, n_classes),
            })
            yield PredictEvent(len(images) - 1, share, s.name, result.score)
    except Cancelled:
        return
    except StopIteration as stop:
        summary = stop.value
    if cancel is not None and cancel():
        return
    thresholds = summary.thresholds
    if world.distributed:
        parts = distributed.gather((images, written))
        if not world.is_main:
            return
        images = [row for part in parts for row in part[0]]
        order = {s.name: i for i, s in enumerate(samples)}  # the order one process writes them in
        images.sort(key=lambda row: order[row["name"]])
        written = [row["output"] for row in images]

    model_path = run.save_model
    if model_path:
        meta = {"n_classes": n_classes, "in_channels": loaded.in_channels,
                "encoding": loaded.encoding.to_dict(), "trained_on": str(run.images_dir), "holdout": holdout,
                "world_size": world_size_of(done)}
        save_checkpoint(model_path, model, done.config, meta)

    images.sort(key=lambda d: d["score"])  # worst label first
    scores = [d["score"] for d in images]
    named = names_by_class(run.class_names, loaded.encoding.stored_values, n_classes)
    report = {
        "tool": f"ielstudio {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - run.started, 2),
        "images_dir": str(run.images_dir.resolve()),
        "masks_dir": str(run.masks_dir.resolve()),
        "out_dir": str(out),
        "n_images": len(images),
        "n_classes": n_classes,
        "class_names": report_class_names(named),
        "mask_encoding": loaded.encoding.to_dict(),
        "mean_score": round(float(np.mean(scores)), 6) if scores else None,
        "score_meaning": "label quality in [0,1], 1 = the label agrees with the model: 0.9 * Dice(label, model decision) "
                         "+ 0.1 * mean p(label) over the union of foregrounds",
        "settings": {"train": train_config.to_dict(), "clean": clean_config.to_dict()},
        "decision_thresholds": None if thresholds is None else [round(float(t), 4) for t in thresholds],
        "model": {"arch": model_ev.arch, "n_parameters": model_ev.n_parameters,
                  "out_of_sample": isinstance(model, CrossFitModel),
                  "saved_to": str(model_path) if model_path else None},
        "seed": train_config.seed,
        "torch_version": torch.__version__,
        "device": str(device),
        "training": _training_summary(done),
        "reliability": summary.reliability.to_dict(),
        "labels_kept_as_given": summary.labels_kept_as_given,
        "objects_removed": summary.objects_removed,
        "regions_added": summary.regions_added,
        "warnings": run.warnings + with_class_names(summary.warnings, named),
        "written": written,
        "skipped": [{"path": p, "problem": m} for p, m in _skipped_list(loaded.skipped) + summary.unreadable],
        "images": images,
    }
    atomic_write_text(run.report_file, json.dumps(report, indent=2, default=_json_default))
    if run.csv_path:
        atomic_write_text(run.csv_path, _report_csv(images, n_classes))
    with contextlib.suppress(OSError):
        marker.unlink()
    yield CleanDone(report, run.report_file)


def _report_csv(images: list[dict], n_classes: int) -> str:
    """report.csv: a row per image, as in the report's ``images``; ``outline_smoothness`` and
    ``outline_fit`` (the score's two factors besides the model's) are empty where the score
    is the model's alone."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "score", "changed_pixels", "changed_fraction"]
               + [f"added_{c}" for c in range(n_classes)] + [f"removed_{c}" for c in range(n_classes)]
               + ["objects_removed", "regions_added", "outline_smoothness", "outline_fit", "output"])
    for d in images:
        w.writerow([d["name"], d["score"], d["changed_pixels"], f"{d['changed_fraction']:.6f}",
                    *d["added"], *d["removed"], d["objects_removed"], d["regions_added"],
                    d.get("outline_smoothness", ""), d.get("outline_fit", ""), d["output"]])
    return buf.getvalue()


def train_dataset(
    images_dir: str | Path,
    masks_dir: str | Path,
    train_config: TrainConfig | None,
    save_model: str | Path,
    cancel: Callable[[], bool] | None = None,
) -> Iterator:
    """Train on a folder and save the model (`ielstudio train`). Yields LoadedEvent,
    ModelEvent, the training events and, last, TrainDone (nothing saved if cancelled).
    A folder of volumes trains on their slices, as `clean` does."""
    from .volume_data import is_volume_dataset

    train_config = train_config or TrainConfig()
    check_output_files({"the model": save_model}, images_dir, masks_dir)
    volume = is_volume_dataset(images_dir)
    if volume:
        from .volume_clean import load_volumes

        loaded = load_volumes(images_dir, masks_dir, context=train_config.slice_context)
        yield LoadedEvent(len(loaded.cases), loaded.n_classes, _skipped_list(loaded.skipped), list(loaded.warnings),
                          unit=f"image/label volume pairs ({len(loaded.samples)} slices)")
    else:
        loaded = load_dataset(images_dir, masks_dir)
        yield LoadedEvent(len(loaded.samples), loaded.n_classes, _skipped_list(loaded.skipped), list(loaded.warnings))
    yield _model_event(train_config, loaded.in_channels, loaded.n_classes)
    done = yield from _fit(loaded.samples, train_config, cancel, scoring=False,
                           groups=loaded.groups() if volume else None)
    if done is None or done.reason == "cancelled":
        return
    if not distributed.world().is_main:
        return  # every rank holds the same weights; rank 0 writes them
    meta = {"n_classes": loaded.n_classes, "in_channels": loaded.in_channels, "trained_on": str(images_dir),
            "world_size": world_size_of(done)}
    meta.update({"label_values": loaded.values, "volumes": True} if volume else
                {"encoding": loaded.encoding.to_dict()})
    save_checkpoint(save_model, done.model, done.config, meta)
    yield TrainDone(Path(save_model), done.steps, done.reason)


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(folder, "images folder does not exist" if not folder.exists() else "not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and file_suffix(p) in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(folder, "no image files in this folder")
    return files


def predict_folder(
    model_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    clean_config: CleanConfig | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator:
    """Segment every image of a folder with a saved model (`ielstudio predict`).

    Masks are written as `<image stem><mask suffix>` in the value convention the model
    was trained with (stored in the checkpoint), decided at the folder's thresholds
    (`thresholds_for` on up to CALIBRATION_IMAGES images) and post-processed by `clean_config`.
    Yields PredictEvent per image and, last, PredictDone. Unreadable images are skipped.
    In a distributed run (torchrun) each rank segments its share of the images
    (`distributed.shard`) at rank 0's thresholds, and every PredictDone lists them all.
    """
    from .volume_data import is_volume_dataset

    clean_config = clean_config or CleanConfig()
    images_dir = Path(images_dir)
    if is_volume_dataset(images_dir):
        raise DataError(images_dir, "holds 3-D volumes: predict reads 2-D images only for now (`ielstudio clean` "
                                    "and `train` read volumes)")
    out = Path(out_dir).expanduser().resolve()
    if out == images_dir.expanduser().resolve():
        raise DataError(out_dir, "output folder is the images folder; choose another")
    if out.exists() and not out.is_dir():
        raise DataError(out_dir, "output path exists and is not a folder")
    model, _, meta = load_checkpoint(model_path)
    spec = model.model_spec
    n_classes, in_channels = int(spec["n_classes"]), int(spec["in_channels"])
    if "encoding" in meta:
        encoding = MaskEncoding.from_dict(meta["encoding"])
    else:
        encoding = MaskEncoding.gray(n_classes, 255 if n_classes == 2 else 1)
    suffix = encoding.suffix if encoding.suffix in WRITABLE_MASK_EXTENSIONS else ".png"
    dev = select_device(device)
    model.to(dev)
    files, skipped = [], []
    by_stem: dict[str, Path] = {}
    for path in _list_images(images_dir):  # one output name per stem: a.png and a.tif would collide
        first = by_stem.setdefault(file_stem(path.name).lower(), path)
        if first is path:
            files.append(path)
        else:
            skipped.append((str(path), f"another image has the same name ({first.name}); skipped"))
    for path in files:  # e.g. --out pointed at the masks folder: never replace a file that is there
        target = out / (file_stem(path.name) + suffix)
        if target.exists():
            raise DataError(target, "already exists and predict never replaces a file (it may be an original "
                                    "mask); choose an empty or new output folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(out_dir, "output folder is not writable")

    repairs: dict[str, None] = {}  # ordered set: calibration reads an image twice

    def probs_of(path: Path) -> np.ndarray:
        found: list[str] = []
        image = image_to_chw(normalize_intensity(read_image(path, found)))
        repairs.update(dict.fromkeys(found))
        if image.shape[0] != in_channels:
            image = np.repeat(image, in_channels, 0) if image.shape[0] == 1 else image.mean(0, keepdims=True)
        return predict(model, image, dev)

    def calibration_probs():
        for path in calibration_subset(files):
            if cancel is not None and cancel():
                return
            try:
                yield probs_of(path)
            except DataError:
                continue  # reported when the main loop reaches it

    try:
        thresholds = thresholds_for(calibration_probs(), clean_config)
    except ValueError:  # cancelled, or no readable image among the calibration ones
        thresholds = None
    world = distributed.world()
    if world.distributed and thresholds is not None:
        thresholds = np.asarray(distributed.from_main([float(t) for t in thresholds]))
    written, unreadable = [], []
    for i, path in distributed.shard(list(enumerate(files)), world):
        if cancel is not None and cancel():
            return
        try:
            probs = probs_of(path)
        except DataError as e:
            unreadable.append((str(e.path or path), e.problem))
            continue
        mask = postprocess(decide(probs, thresholds), clean_config)
        dst = out / (file_stem(path.name) + suffix)
        write_mask(dst, mask, encoding)
        written.append(dst)
        yield PredictEvent(i, len(files), path.name, float(probs.max(0).mean()))
    if world.distributed:
        parts = distributed.gather((written, unreadable, list(repairs)))
        written = sorted((p for part in parts for p in part[0]), key=lambda p: p.name)
        unreadable = [s for part in parts for s in part[1]]
        repairs = dict.fromkeys(r for part in parts for r in part[2])
    yield PredictDone(written, skipped + unreadable, list(repairs))
