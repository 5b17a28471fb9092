"""k-fold cleaning as k independent jobs and a merge, e.g. a SLURM array of
`ielstudio clean IMAGES MASKS --folds K --fold i --out DIR_i` followed by
`ielstudio merge DIR_0 ... DIR_K-1 --out DIR`.

Each fold job trains the model of its fold (`training.train_fold`: the images of
fold i held out, the others training, the seed of fold i) and leaves in its folder
the fold's checkpoint and a manifest (FOLD_MANIFEST: settings, seed, the data set's
fingerprint, the training history). The merge checks that the k folders belong
together, joins their models into the CrossFitModel one `--folds K` run would hold
(`training.combine_folds`) and runs what `clean` runs after training
(`cleaning.write_cleaned`): the same masks and report as `clean --folds K` in one
process with the same seed, on the same device. Training, the costly part, runs in
parallel; the merge predicts every image once, by the fold model that held it out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from . import distributed
from .cleaning import (
    CleanConfig,
    CleanRun,
    _json_default,
    _model_event,
    prepare_clean,
    world_size_of,
    write_cleaned,
)
from .errors import DataError
from .imageio import atomic_write_text
from .training import (
    CrossFitModel,
    DoneEvent,
    TrainConfig,
    combine_folds,
    fold_assignment,
    load_checkpoint,
    save_checkpoint,
    select_device,
    train_fold,
)

#: The manifest a fold job writes into its folder, last (a folder without it is not a finished fold).
FOLD_MANIFEST = "ielstudio-fold.json"
MANIFEST_FORMAT = "ielstudio-fold"
MANIFEST_VERSION = 1


def fold_model_name(fold: int, folds: int) -> str:
    return f"fold-{fold}-of-{folds}.pt"


@dataclass
class FoldDone:
    """Last event of `clean_fold`."""

    fold: int
    folds: int
    steps: int
    reason: str
    model_path: Path
    manifest_path: Path


def dataset_fingerprint(samples: Sequence) -> str:
    """sha256 over the names, images and masks as loaded: the merge refuses fold folders
    trained on other data (or on masks edited since)."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.name):
        h.update(s.name.encode("utf-8", "surrogateescape") + b"\0")
        for a in (np.ascontiguousarray(s.image), np.ascontiguousarray(s.mask)):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clean_fold(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    fold: int,
    train_config: TrainConfig,
    clean_config: CleanConfig | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator:
    """Train fold `fold` of `train_config.folds` and leave its checkpoint and manifest in
    `out_dir` (`ielstudio clean --folds K --fold i`). Yields LoadedEvent, ModelEvent, the
    training events and, last, FoldDone. Writes no masks: `merge_folds` does, once every
    fold is done. Nothing is written when cancelled."""
    if train_config.folds < 2:
        raise ValueError("--fold needs --folds K with K >= 2 (the number of fold jobs)")
    if not 0 <= fold < train_config.folds:
        raise ValueError(f"--fold {fold} does not exist: with --folds {train_config.folds} the folds are "
                         f"0..{train_config.folds - 1}")
    out = Path(out_dir).expanduser()
    model_path = out / fold_model_name(fold, train_config.folds)
    manifest_path = out / FOLD_MANIFEST
    run = prepare_clean(images_dir, masks_dir, out_dir, train_config, clean_config,
                        report_path=manifest_path, save_model=model_path)
    n = len(run.loaded.samples)
    if n < run.train_config.folds:
        raise DataError(masks_dir, f"{run.train_config.folds} folds need at least {run.train_config.folds} "
                                   f"usable image/mask pairs; there are {n}")
    yield run.loaded_event()
    yield _model_event(run.train_config, run.loaded.in_channels, run.loaded.n_classes)
    done = None
    for ev in train_fold(run.loaded.samples, run.train_config, fold, cancel):
        if isinstance(ev, DoneEvent):
            done = ev
        yield ev
    if done is None or done.reason == "cancelled" or not distributed.world().is_main:
        return  # in a distributed run rank 0 writes
    fingerprint = dataset_fingerprint(run.loaded.samples)
    loaded = run.loaded
    save_checkpoint(run.save_model, done.model, done.config, {
        "n_classes": loaded.n_classes, "in_channels": loaded.in_channels, "encoding": loaded.encoding.to_dict(),
        "trained_on": str(run.images_dir), "holdout": list(done.history.get("holdout", [])),
        "fold": fold, "folds": run.train_config.folds, "dataset_fingerprint": fingerprint,
        "world_size": world_size_of(done)})
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "tool": f"ielstudio {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fold": fold, "folds": run.train_config.folds, "seed": run.train_config.seed,
        "images_dir": str(run.images_dir.resolve()), "masks_dir": str(run.masks_dir.resolve()),
        "n_images": n, "dataset_fingerprint": fingerprint,
        "settings": {"train": run.train_config.to_dict(), "clean": run.clean_config.to_dict()},
        "model": model_path.name, "model_sha256": _sha256_file(run.save_model),
        "device": str(next(done.model.parameters()).device),
        "history": done.history,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1, default=_json_default))
    yield FoldDone(fold, run.train_config.folds, done.steps, done.reason, run.save_model, manifest_path)


def read_fold_manifest(folder: str | Path) -> dict:
    """The manifest of a finished fold job's folder (DataError when it is not one)."""
    path = Path(folder).expanduser() / FOLD_MANIFEST
    if not path.is_file():
        raise DataError(folder, f"not a finished fold folder: it has no {FOLD_MANIFEST} (run `ielstudio clean "
                                "IMAGES MASKS --folds K --fold i --out` into it first, and let it finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(path, f"unreadable fold manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(path, "not an IEL Studio fold manifest")
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise DataError(path, f"fold manifest version {manifest.get('version')} is newer than this IEL Studio reads")
    for key in ("fold", "folds", "seed", "dataset_fingerprint", "settings", "model", "model_sha256", "history",
                "images_dir", "masks_dir"):
        if key not in manifest:
            raise DataError(path, f"fold manifest lacks {key!r}")
    manifest["folder"] = str(Path(folder).expanduser())
    return manifest


def _check_together(manifests: list[dict]) -> None:
    """DataError unless the manifests are folds 0..K-1 of one run, each exactly once."""
    first = manifests[0]
    for m in manifests[1:]:
        for key, what in (("folds", "number of folds"), ("seed", "seed"), ("settings", "settings"),
                          ("dataset_fingerprint", "data set (images or masks differ)")):
            if m[key] != first[key]:
                raise DataError(m["folder"], f"does not belong with {first['folder']}: another {what}")
    k = int(first["folds"])
    seen: dict[int, str] = {}
    for m in manifests:
        f = int(m["fold"])
        if f in seen:
            raise DataError(m["folder"], f"holds fold {f}, as {seen[f]} does; give each fold once")
        seen[f] = m["folder"]
    missing = sorted(set(range(k)) - set(seen))
    if missing:
        raise DataError(first["folder"], f"fold(s) {', '.join(map(str, missing))} of {k} are missing; give all "
                                         f"{k} fold folders")


def merge_folds(
    fold_dirs: Sequence[str | Path],
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    csv_path: str | Path | None = None,
    save_model: str | Path | None = None,
    device: str | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator:
    """Join the folders of k fold jobs into cleaned masks and a report in `out_dir`
    (`ielstudio merge`), as `clean --folds K` writes them. The images and masks are
    read from where the fold jobs read them unless `images_dir` / `masks_dir` say
    otherwise (another mount point), and must be the same data (fingerprint).
    Yields LoadedEvent, ModelEvent, PredictEvent per image and, last, CleanDone."""
    if not fold_dirs:
        raise ValueError("give the fold folders to merge")
    manifests = sorted((read_fold_manifest(d) for d in fold_dirs), key=lambda m: int(m["fold"]))
    _check_together(manifests)
    first = manifests[0]
    settings = first["settings"]
    train_config = TrainConfig.from_dict({**settings["train"], **({"device": device} if device else {})})
    run: CleanRun = prepare_clean(images_dir or first["images_dir"], masks_dir or first["masks_dir"], out_dir,
                                  train_config, CleanConfig.from_dict(settings["clean"]),
                                  report_path, csv_path, save_model)
    if dataset_fingerprint(run.loaded.samples) != first["dataset_fingerprint"]:
        raise DataError(run.masks_dir, "these images and masks are not the ones the fold jobs trained on (a file "
                                       "was added, removed or edited since); run the fold jobs again")
    yield run.loaded_event()
    model_ev = _model_event(run.train_config, run.loaded.in_channels, run.loaded.n_classes)
    yield model_ev
    target = select_device(run.train_config.device)
    dones = []
    for m in manifests:
        path = Path(m["folder"]) / m["model"]
        if not path.is_file():
            raise DataError(path, "the fold's model is missing from its folder")
        if _sha256_file(path) != m["model_sha256"]:
            raise DataError(path, "is not the model its fold job wrote (its checksum differs from the manifest's)")
        model, _, meta = load_checkpoint(path)
        if isinstance(model, CrossFitModel) or meta.get("fold") != m["fold"]:
            raise DataError(path, f"is not the model of fold {m['fold']}")
        history = m["history"]
        dones.append(DoneEvent(model.to(target), int(history["steps"]), history["reason"], history, run.train_config))
    names = [s.name for s in run.loaded.samples]
    combined = combine_folds(dones, fold_assignment(names, train_config.folds, train_config.seed), run.train_config)
    yield from write_cleaned(run, combined, model_ev, cancel)
