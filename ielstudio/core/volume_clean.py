"""`ielstudio clean` on volumes: train on their 2-D slices, then propose, gate and score
each volume as one 3-D object, and write corrected label volumes with the input's header.

- **Training** is the 2-D recipe and automatic budget (`training.train`) on every slice,
  with the slices of a volume held out together (`groups`), so that the budget and the
  reliability check never judge a slice whose neighbours trained.
- **Objects are 3-D**: the model's decisions, stacked, are post-processed in 3-D (a
  speck is a 26-connected component under `min_area` voxels, which takes the majority
  class around it; a cavity enclosed by a class in 3-D is filled; convex hulls are taken
  per slice), and the do-no-harm gate (`review.gate_changes`) applies or refuses each
  26-connected changed region as a whole. An object's tip, a few pixels on its last
  slice, is part of the object and stays.
- **Scores** per slice (`review.image_score`) and per volume (the mean over the
  slices where the label or the model has foreground); the report lists the volumes
  worst first, each with its worst slices.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import __version__
from . import distributed
from .class_names import names_by_class, report_class_names, with_class_names
from .cleaning import (
    RUN_MARKER,
    CleanConfig,
    CleanDone,
    LoadedEvent,
    PredictEvent,
    _convex_hulls,
    _json_default,
    _model_event,
    _report_csv,
    _training_summary,
    calibration_subset,
    change_summary,
    keep_given_edges,
    prepare_clean,
    thresholds_for,
)
from .decision import decide
from .errors import DataError
from .imageio import atomic_write_text
from .review import (MAX_RELIABILITY_IMAGES, apply_object_rules, assess_reliability, gate_changes, image_score,
                     reliability_pair, scoring_predictions, spread, summary_warnings)
from .training import CrossFitModel, DoneEvent, TrainConfig, predict, save_checkpoint, train
from .volume_data import VolumeCase, VolumeDataset, class_values, load_volume_dataset, volume_of

#: Worst slices listed per volume in the report.
WORST_SLICES = 5


def _structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, bool)


def postprocess_volume(mask: np.ndarray, config: CleanConfig = CleanConfig()) -> np.ndarray:
    """A copy of the class volume `mask` (D,H,W; slices first) with 3-D specks removed,
    3-D cavities filled and each slice's objects of the hull classes made convex."""
    from scipy import ndimage

    out = np.array(mask, dtype=np.int64, copy=True)
    classes = [int(c) for c in np.unique(out) if c != 0]
    if config.min_area > 1:
        for c in classes:
            labels, n = ndimage.label(out == c, structure=_structure(out.ndim))
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            for i, box in enumerate(ndimage.find_objects(labels), start=1):
                if box is None or sizes[i] >= config.min_area:
                    continue
                grown = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
                comp = labels[grown] == i
                ring = ndimage.binary_dilation(comp, structure=_structure(out.ndim)) & ~comp
                around = out[grown][ring]
                around = around[around != c]
                out[grown][comp] = int(np.bincount(around).argmax()) if around.size else 0
    if config.fill_holes:
        for c in classes:
            cavity = ndimage.binary_fill_holes(out == c) & (out == 0)
            out[cavity] = c
    for c in config.convex_hull_classes:
        if c != 0:
            for k in range(out.shape[0]):
                _convex_hulls(out[k], c)
    return out


@dataclass
class VolumeResult:
    case: VolumeCase
    proposal: np.ndarray  # (D,H,W) classes, slices first
    given: np.ndarray
    slice_scores: list[float]
    score: float
    out_of_sample: bool
    probs: np.ndarray | None = None  # (C,D,H,W) float16, the model's probabilities (for the review window)
    objects_removed: int = 0  # 3-D objects the model finds no trace of (`review.remove_unsupported_objects`)
    regions_added: int = 0  # 3-D regions the masks left out (`review.add_supported_regions`)


def _volume_score(slice_scores: list[float], foreground: list[bool]) -> float:
    judged = [s for s, f in zip(slice_scores, foreground) if f] or slice_scores
    return float(np.mean(judged)) if judged else 1.0


def review_volumes(model, ds: VolumeDataset, config: CleanConfig, holdout: list[str],
                   cancel: Callable[[], bool] | None = None) -> Iterator[VolumeResult]:
    """Propose and score every volume (see the module doc); returns (StopIteration.value)
    (thresholds, reliability, warnings)."""
    cancelled = cancel or (lambda: False)
    device = next(model.parameters()).device
    crossfit = isinstance(model, CrossFitModel)

    def probs_of(s) -> np.ndarray:
        return predict(model.model_for(s.name) if crossfit else model, s.image, device)

    thresholds = thresholds_for((probs_of(s) for s in calibration_subset(ds.samples)), config)
    held = set(holdout)
    oos = [s for s in ds.samples if crossfit or s.name in held]
    judged = oos or ds.samples
    trained = [s for s in ds.samples if s.name not in held] if oos and not crossfit else []
    pairs, trained_pairs = ([reliability_pair(probs_of(s), s, thresholds)
                             for s in spread(chosen, MAX_RELIABILITY_IMAGES)] for chosen in (judged, trained))
    reliability = assess_reliability(pairs, ds.n_classes, thresholds, out_of_sample=bool(oos), trained=trained_pairs)
    labelled, proposed = np.zeros(ds.n_classes), np.zeros(ds.n_classes)
    objects_removed = regions_added = 0
    for case in ds.cases:
        if cancelled():
            break
        slices = ds.slices_of(case)
        probs = np.stack([probs_of(s) for s in slices], axis=1)  # (C,D,H,W)
        given = np.stack([s.mask for s in slices])
        decided = np.stack([decide(probs[:, k], thresholds) for k in range(len(slices))])
        if config.confident_only:
            decided = np.where(probs.max(axis=0) >= config.threshold, decided, given)
        raw = postprocess_volume(decided, config)
        raw = np.stack([keep_given_edges(raw[k], given[k], config.edge_tolerance) for k in range(len(slices))])
        image = np.stack([s.image for s in slices], axis=1)  # (C,D,H,W)
        proposal = gate_changes(raw, given, probs, reliability.reliable, thresholds, image=image)
        proposal, removed, added = apply_object_rules(proposal, given, probs, thresholds, image, reliability)
        objects_removed, regions_added = objects_removed + removed, regions_added + added
        labelled += np.bincount(given.ravel(), minlength=ds.n_classes)[:ds.n_classes]
        proposed += np.bincount(proposal.ravel(), minlength=ds.n_classes)[:ds.n_classes]
        scores = [image_score(probs[:, k], given[k], thresholds, reliability, slices[k].image).value
                  for k in range(len(slices))]
        foreground = [bool((given[k] != 0).any() or (decided[k] != 0).any()) for k in range(len(slices))]
        yield VolumeResult(case, proposal, given, scores, _volume_score(scores, foreground),
                           crossfit or all(s.name in held for s in slices), probs.astype(np.float16), removed, added)
    warnings = summary_warnings(reliability, objects_removed, labelled, proposed, regions_added)
    return thresholds, reliability, warnings


def load_volumes(images_dir: str | Path, masks_dir: str | Path, context: int = 0) -> VolumeDataset:
    """`load_volume_dataset`; DataError when not a single pair is usable (naming why)."""
    ds = load_volume_dataset(images_dir, masks_dir, context=context)
    if not ds.cases:
        first = f"; first: {ds.skipped[0]}" if ds.skipped else ""
        raise DataError(masks_dir, f"no usable image/label volume pairs ({len(ds.skipped)} skipped{first})")
    return ds


def clean_volumes(
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
    """`clean_dataset` for a folder of volumes: the same events (PredictEvent per
    volume), corrected label volumes in `out_dir` under their names, in their format and
    with their header, and a report per volume and per slice."""
    run = prepare_clean(images_dir, masks_dir, out_dir, train_config, clean_config, report_path, csv_path,
                        save_model, load=functools.partial(
                            load_volumes, context=(train_config or TrainConfig()).slice_context))
    ds: VolumeDataset = run.loaded
    out, report_file, warnings = run.out, run.report_file, run.warnings
    train_config, clean_config = run.train_config, run.clean_config
    yield LoadedEvent(len(ds.cases), ds.n_classes, [(str(s.path), s.problem) for s in ds.skipped], warnings,
                      unit=f"image/label volume pairs ({len(ds.samples)} slices)")
    model_ev = _model_event(train_config, ds.in_channels, ds.n_classes)
    yield model_ev
    done = None
    # the ETA counts what review_volumes predicts after training, as review_samples' does
    after = scoring_predictions(len(ds.samples), train_config)
    for ev in train(ds.samples, train_config, cancel=cancel, predictions_after=after, groups=ds.groups()):
        if isinstance(ev, DoneEvent):
            done = ev
        yield ev
    if done is None or done.reason == "cancelled" or not distributed.world().is_main:
        return
    model = done.model
    holdout = list(done.history.get("holdout", []))
    marker = out / RUN_MARKER
    rows, written = [], []
    reviews = review_volumes(model, ds, clean_config, holdout, cancel)
    try:
        while True:
            result = next(reviews)
            case = result.case
            dst = out / case.label_path.name
            if dst.suffix.lower() == ".nhdr":  # a detached header is written back as one .nrrd file
                dst = dst.with_suffix(".nrrd")
            if not written:
                atomic_write_text(marker, json.dumps({
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "pid": os.getpid(), "report": str(report_file)}))
            from . import volumes

            labels = class_values(volume_of(case, list(result.proposal)), ds.values, case.label.dtype)
            volumes.write_label_volume(dst, labels, case.label, protect=[case.label_path])
            written.append(str(dst))
            worst = np.argsort(result.slice_scores, kind="stable")[:WORST_SLICES]
            rows.append({
                "name": case.name, "image": str(case.image_path), "mask": str(case.label_path), "output": str(dst),
                "score": round(result.score, 6), "out_of_sample": result.out_of_sample,
                "objects_removed": result.objects_removed, "regions_added": result.regions_added,
                "slice_axis": case.axis, "slices": case.n_slices,
                "worst_slices": [{"slice": int(k), "score": round(result.slice_scores[k], 6)} for k in worst],
                "slice_scores": [round(s, 6) for s in result.slice_scores],
                **change_summary(result.given, result.proposal, ds.n_classes),
            })
            yield PredictEvent(len(rows) - 1, len(ds.cases), case.name, result.score)
    except StopIteration as stop:
        thresholds, reliability, review_warnings = stop.value
    if cancel is not None and cancel():
        return
    model_path = None
    if run.save_model:
        model_path = run.save_model
        save_checkpoint(model_path, model, done.config, {
            "n_classes": ds.n_classes, "in_channels": ds.in_channels, "label_values": ds.values,
            "trained_on": str(images_dir), "holdout": holdout, "volumes": True})
    rows.sort(key=lambda d: d["score"])
    scores = [d["score"] for d in rows]
    named = names_by_class(run.class_names, ds.values, ds.n_classes)
    report = {
        "tool": f"ielstudio {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - run.started, 2),
        "images_dir": str(Path(images_dir).resolve()),
        "masks_dir": str(Path(masks_dir).resolve()),
        "out_dir": str(out),
        "kind": "volumes",
        "n_images": len(rows),
        "n_slices": len(ds.samples),
        "n_classes": ds.n_classes,
        "class_names": report_class_names(named),
        "label_values": ds.values,
        "mean_score": round(float(np.mean(scores)), 6) if scores else None,
        "score_meaning": "per slice as for 2-D images; per volume the mean over its slices where the label or the "
                         "model has foreground",
        "settings": {"train": train_config.to_dict(), "clean": clean_config.to_dict()},
        "decision_thresholds": None if thresholds is None else [round(float(t), 4) for t in thresholds],
        "model": {"arch": model_ev.arch, "n_parameters": model_ev.n_parameters,
                  "out_of_sample": isinstance(model, CrossFitModel),
                  "saved_to": str(model_path) if model_path else None},
        "seed": train_config.seed,
        "torch_version": torch.__version__,
        "device": str(next(model.parameters()).device),
        "training": _training_summary(done),
        "reliability": reliability.to_dict(),
        "labels_kept_as_given": not reliability.any_reliable and not any(
            r["objects_removed"] or r["regions_added"] for r in rows),
        "objects_removed": sum(r["objects_removed"] for r in rows),
        "regions_added": sum(r["regions_added"] for r in rows),
        "warnings": warnings + with_class_names(review_warnings, named),
        "written": written,
        "skipped": [{"path": str(s.path), "problem": s.problem} for s in ds.skipped],
        "images": rows,
    }
    atomic_write_text(report_file, json.dumps(report, indent=2, default=_json_default))
    if run.csv_path:
        atomic_write_text(run.csv_path, _report_csv(rows, ds.n_classes))
    with contextlib.suppress(OSError):
        marker.unlink()
    yield CleanDone(report, report_file)
