"""Background jobs of the window: core generators chained and wrapped for the review.

No Qt here (a child process imports this module). Each job is a plain generator
that calls core functions and yields small, picklable events. Work that would
stall the GUI (loading, training, proposals and label-quality scores) happens in
the job, never in the GUI thread.

``job_protocol.child_main`` runs a job in a separate process (``process_worker.ProcessWorker``):
training in a thread of the GUI process would share the GIL with the GUI, and on
a busy 2-core machine the GUI then waits hundreds of milliseconds whenever the
training thread is descheduled while holding it.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ielstudio.core.errors import Cancelled  # the one cancel signal, inside core and the jobs

from .job_protocol import (  # noqa: F401  (the events and errors the jobs yield and raise)
    DatasetInfo,
    ImageReview,
    JobError,
    Reviews,
    Settled,
    TrainingFinished,
    compact_classes,
)
from .volume_jobs import displayed, frames_of


# --------------------------------------------------------------------------- jobs

def review_image(probs: np.ndarray, given: np.ndarray, clean_config, thresholds=None) -> ImageReview:
    """Proposal + label-quality score of one image (core.cleaning), decided at the data
    set's `thresholds` (core.cleaning.thresholds_for; None: argmax)."""
    from ielstudio.core.cleaning import label_quality, propose

    probs = np.asarray(probs, np.float32)
    proposal = propose(probs, given, clean_config, thresholds)
    score, _doubt = label_quality(probs, given, thresholds)
    changed = float(np.mean(proposal != given))
    # compact for the trip to the GUI process (a smaller message is read without blocking):
    # probabilities (display only) as float16
    return ImageReview(probs.astype(np.float16), compact_classes(proposal), float(score), changed)


def _progress(cancel, report):
    def progress(done: int, total: int) -> None:
        if cancel():
            raise Cancelled()
        if report is not None:
            report(done, total)

    return progress


def _load(scan, cancel, report, encoding=None, context: int = 0):
    """The data set of a scan: its images loaded (core.dataset), or for a volume data
    set its volumes cut into slices (core.volume_data; the class mapping is the label
    values, found again from the same files; ``context``: neighbouring slices as channels)."""
    from ielstudio.core.dataset import load_samples
    from ielstudio.core.volume_data import load_volume_dataset
    from ielstudio.core.volume_review import VolumeScan

    if isinstance(scan, VolumeScan):
        return load_volume_dataset(scan.images_dir, scan.masks_dir, progress=_progress(cancel, report),
                                   context=context)
    return load_samples(scan, progress=_progress(cancel, report), encoding=encoding)


def settle_job(scan, cancel: Callable[[], bool], report: Callable[[int, int], None] | None = None) -> Iterator[Settled]:
    """Opening a data set: read its masks once for the class mapping (core.dataset.settle_encoding),
    which the window stores in the project; training and scoring then load with it."""
    from ielstudio.core.dataset import settle_encoding
    from ielstudio.core.volume_review import VolumeScan, settle_volume_encoding

    settle = settle_volume_encoding if isinstance(scan, VolumeScan) else settle_encoding
    try:
        encoding, skipped = settle(scan, _progress(cancel, report))
    except Cancelled:
        return
    yield Settled(encoding, skipped)


def _info(ds) -> DatasetInfo:
    return DatasetInfo(int(ds.n_classes), ds.encoding, int(ds.in_channels), list(ds.skipped),
                       [s.name for s in ds.samples])


#: project settings the jobs write: what the last scoring pass concluded, the training
#: curves, and (volume data sets) each volume's score
LAST_REVIEW = "last_review"
TRAINING_CURVES = "training_curves"
VOLUME_SCORES = "volume_scores"


def training_curves(history: dict) -> dict:
    """The loss (one value per step, from step 1) and held-out agreement curves of a
    training history (k-fold: the first fold's), as plain lists, for the project file."""
    h = (history.get("folds") or [history])[0]
    return {"loss": [float(v) for v in h.get("loss", [])],
            "eval_steps": [int(v) for v in h.get("eval_steps", [])],
            "agreement": [float(v) for v in h.get("agreement", [])]}


class ScoreWriter:
    """The one writer of a job's results into the project, from the job's own thread or
    process (one transaction per batch), so the GUI thread never waits for the disk:
    scores of every batch; once the kept model is known (`use_model`), its proposals,
    the model reference, the training curves and, on the last batch, what the scoring
    pass concluded (`LAST_REVIEW`), so that a reopened project needs no model run."""

    def __init__(self, project_path: str | Path | None):
        self.project_path = project_path
        self._project = None
        self.source: str | None = None

    def _open(self):
        from ielstudio.core.session import Project

        if self._project is None:
            self._project = Project.open(self.project_path)
        return self._project

    def use_model(self, checkpoint_path: str | Path, clean_config, sha256: str | None = None,
                  history: dict | None = None, record: bool = False) -> None:
        """The proposals that follow come from this saved model with these clean settings:
        record the model in the project when it is new to it (`record`, or a training's
        `history`, whose curves are stored too)."""
        from ielstudio.core.session import file_sha256, proposal_source

        digest = sha256 or file_sha256(checkpoint_path)
        self.source = proposal_source(digest, clean_config.to_dict())
        if self.project_path is None:
            return
        project = self._open()
        if history is not None or record:
            project.set_checkpoint(checkpoint_path)
        if history is not None:
            project.set_setting(TRAINING_CURVES, training_curves(history))
        project.set_setting(LAST_REVIEW, {"source": self.source, "complete": False, "warnings": []})

    def __call__(self, reviews: Reviews) -> Reviews:
        if self.project_path is None or not reviews.items:
            return reviews
        project = self._open()
        project.set_scores([(n, r.score, r.changed, r.parts) for n, r in reviews.items.items()])
        if reviews.volume_scores and reviews.step is None:
            project.set_setting(VOLUME_SCORES, {**(project.get_setting(VOLUME_SCORES) or {}),
                                                **reviews.volume_scores})
        if reviews.step is None and self.source is not None:
            project.set_proposals(((n, r.proposal) for n, r in reviews.items.items()), self.source)
            reviews.source = self.source
            if reviews.done == reviews.total:
                project.set_setting(LAST_REVIEW, {"source": self.source, "complete": True,
                                                  "warnings": list(reviews.warnings),
                                                  "objects_changed": bool(reviews.objects_removed
                                                                          or reviews.regions_added)})
        return reviews

    def close(self) -> None:
        if self._project is not None:
            self._project.close()
            self._project = None


REVIEWS_PER_MESSAGE = 4  # images per Reviews event: small messages keep the GUI's reads short


def dataset_scoring_job(model, ds, clean_config, cancel: Callable[[], bool], holdout=None,
                        frames: dict | None = None) -> Iterator[Reviews]:
    """`scoring_job` for a loaded data set; a volume data set is reviewed volume by volume
    (`volume_scoring_job`), as `ielstudio clean` reviews it."""
    from ielstudio.core.volume_data import VolumeDataset

    if isinstance(ds, VolumeDataset):
        from .volume_jobs import volume_scoring_job

        return volume_scoring_job(model, ds, clean_config, cancel, holdout=holdout, frames=frames or {})
    return scoring_job(model, list(ds.samples), clean_config, cancel, holdout=holdout)


def scoring_job(model, samples, clean_config, cancel: Callable[[], bool],
                chunk: int = REVIEWS_PER_MESSAGE, holdout=None) -> Iterator[Reviews]:
    """Propose and score every sample with a trained model through core.review.review_samples
    (the path `ielstudio clean` takes); yield the reviews in chunks. `holdout`: the images
    the model never trained on (they decide which classes it may change)."""
    from ielstudio.core.review import review_samples

    total = len(samples)
    if not samples:
        return
    given = {s.name: s.mask for s in samples}
    items: dict[str, ImageReview] = {}
    done = 0
    reviews = review_samples(model, samples, clean_config, holdout, cancel)
    try:
        while True:
            r = next(reviews)
            done += 1
            items[r.name] = ImageReview(np.asarray(r.probs, np.float32).astype(np.float16), compact_classes(r.proposal),
                                        float(r.score),
                                        float(np.mean(r.proposal != given[r.name])), r.score_parts())
            if len(items) >= chunk and done < total:
                yield Reviews(None, items, done, total)
                items = {}
    except Cancelled:
        return
    except StopIteration as stop:
        summary = stop.value
    if cancel():
        if items:
            yield Reviews(None, items, done, total)
        return
    yield Reviews(None, items, total, total, warnings=summary.warnings, objects_removed=summary.objects_removed,
                  regions_added=summary.regions_added)


def review_job(scan, config, clean_config, snapshot_names: list[str] | None, snapshot_every: int,
               checkpoint_path: str | Path | None, cancel: Callable[[], bool],
               report: Callable[[int, int], None] | None = None, project_path: str | Path | None = None,
               encoding=None) -> Iterator:
    """Load the pairs, train (core.training.train), then score every image with the kept model.

    Yields DatasetInfo, the training events (StepEvent, EvalEvent), Reviews for each
    snapshot (proposals and scores computed here), TrainingFinished (the model saved to
    ``checkpoint_path``) and, unless stopped, Reviews(step=None) for every image.
    Snapshots only preview: the automatic budget keeps the weights of its best
    evaluation, which can be a hundred steps older than the last snapshot, so the
    proposals a person accepts come from the saved model, as `ielstudio clean`'s do.
    With ``project_path`` the scores are also written to the project here. ``encoding``:
    the class mapping settled when the data set was opened (None: found while loading).
    """
    writer = ScoreWriter(project_path)
    try:
        yield from _review_job(scan, config, clean_config, snapshot_names, snapshot_every, checkpoint_path,
                               cancel, report, writer, encoding)
    finally:
        writer.close()


def _review_job(scan, config, clean_config, snapshot_names, snapshot_every, checkpoint_path, cancel, report,
                writer, encoding) -> Iterator:
    from ielstudio.core.cleaning import calibration_subset, thresholds_for
    from ielstudio.core.training import DoneEvent, SnapshotEvent, save_checkpoint, train

    try:
        ds = _load(scan, cancel, report, encoding, context=config.slice_context)
    except Cancelled:
        return
    yield _info(ds)
    samples = list(ds.samples)
    if not samples:
        raise JobError("no usable image/mask pairs to train on")
    given = {s.name: s.mask for s in samples}
    names = [n for n in (snapshot_names or given) if n in given]
    from ielstudio.core.review import scoring_predictions

    kwargs: dict[str, Any] = {"cancel": cancel, "snapshot_every": snapshot_every,
                              "predictions_after": scoring_predictions(len(samples), config)}
    if names:
        kwargs["snapshot_names"] = names
    model, holdout = None, []
    frames = frames_of(scan)
    groups = ds.groups() if hasattr(ds, "groups") else None  # a volume's slices are held out together
    for ev in train(samples, config, groups=groups, **kwargs):
        if isinstance(ev, SnapshotEvent):
            items = {}
            shown = {n: p for n, p in ev.probs.items() if n in given}
            thresholds = thresholds_for(calibration_subset(list(shown.values())), clean_config) if shown else None
            for name, probs in shown.items():
                if cancel():
                    break
                items[name] = displayed(name, review_image(probs, given[name], clean_config, thresholds), frames)
            names_done = list(items)
            for i in range(0, len(names_done), REVIEWS_PER_MESSAGE):
                chunk = {n: items[n] for n in names_done[i:i + REVIEWS_PER_MESSAGE]}
                yield writer(Reviews(ev.step, chunk, min(i + len(chunk), len(items)), len(items)))
        elif isinstance(ev, DoneEvent):
            model, holdout = ev.model, list(ev.history.get("holdout", []))
            saved = None
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, ev.model, ev.config, {"steps": ev.steps, "reason": ev.reason,
                                                                       "holdout": list(ev.history.get("holdout", []))})
                saved = str(checkpoint_path)
                writer.use_model(checkpoint_path, clean_config, history=ev.history)
            yield TrainingFinished(ev.steps, ev.reason, ev.history, ev.config, saved)
        else:
            yield ev
    if model is not None and not cancel():
        for r in dataset_scoring_job(model, ds, clean_config, cancel, holdout=holdout, frames=frames):
            yield writer(r)


def checkpoint_scoring_job(scan, checkpoint_path: str | Path, clean_config, cancel: Callable[[], bool],
                           report: Callable[[int, int], None] | None = None,
                           project_path: str | Path | None = None, expected_sha256: str | None = None,
                           encoding=None, record_model: bool = False) -> Iterator:
    """Proposals and scores for every pair with a saved model: reopening a project, or a
    model trained elsewhere (`ielstudio train`, a cluster) when `record_model` (the
    project then keeps it as its model).

    ``expected_sha256``: the digest the project recorded for the model; a file that has
    changed since (replaced, retrained elsewhere) is refused rather than silently used."""
    from ielstudio.core.errors import DataError
    from ielstudio.core.session import file_sha256
    from ielstudio.core.training import load_checkpoint

    if expected_sha256 is not None and file_sha256(checkpoint_path) != expected_sha256:
        raise DataError(checkpoint_path, "this model file has changed since the project used it (its sha256 differs); "
                                         "its proposals would not be the ones the decisions were made with. "
                                         "Train again, or put the original file back")
    model, config, meta = load_checkpoint(checkpoint_path)
    try:  # a model trained on neighbouring slices is given them again
        ds = _load(scan, cancel, report, encoding, context=getattr(config, "slice_context", 0))
    except Cancelled:
        return
    spec = model.model_spec
    if int(spec["n_classes"]) != ds.n_classes or int(spec["in_channels"]) != ds.in_channels:
        raise DataError(checkpoint_path, f"was trained for {spec['n_classes']} classes of {spec['in_channels']}-channel "
                                         f"images; this data set has {ds.n_classes} classes of {ds.in_channels}-channel "
                                         "images. Choose a model trained on data like it, or train one")
    yield _info(ds)
    writer = ScoreWriter(project_path)
    try:
        writer.use_model(checkpoint_path, clean_config, sha256=expected_sha256, record=record_model)
        for r in dataset_scoring_job(model, ds, clean_config, cancel, holdout=meta.get("holdout"),
                                     frames=frames_of(scan)):
            yield writer(r)
    finally:
        writer.close()


# --------------------------------------------------------------------------- prefetch

@dataclass
class Prefetched:
    name: str
    sample: Any  # core.dataset.Sample, or None when it could not be read (opening it says why)
    generation: int = 0  # which request batch it answers (stale ones are dropped)


def prefetch_job(requests: "queue.Queue", cancel: Callable[[], bool]) -> Iterator[Prefetched]:
    """Load ``(name, pair, encoding, generation)`` requests ahead of navigation (``pair``
    may be a callable that opens a volume ahead); a request with name None ends it."""
    from ielstudio.core.dataset import load_sample

    while not cancel():
        name, pair, encoding, generation = requests.get()
        if name is None:
            return
        try:  # a callable: a volume to open ahead (it gives no sample)
            yield Prefetched(name, pair() if callable(pair) else load_sample(pair, encoding), generation)
        except Exception:
            yield Prefetched(name, None, generation)


# --------------------------------------------------------------------------- thumbnails

@dataclass
class Thumbnail:
    name: str
    rgb: np.ndarray  # (h, w) or (h, w, 3) uint8


def make_thumbnail(image_path, size: int = 40) -> np.ndarray:
    """A small uint8 preview of an image file (core.imageio read + normalise), or of the
    array a callable returns (a volume's slice)."""
    import cv2

    from ielstudio.core.imageio import normalize_intensity, read_image

    img = normalize_intensity(image_path() if callable(image_path) else read_image(image_path))
    h, w = img.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)


def thumbnail_job(requests: "queue.Queue", cancel: Callable[[], bool], size: int = 40) -> Iterator[Thumbnail]:
    """Serve thumbnail requests ``(name, image_path or a callable giving the image)``; a
    ``(None, None)`` request ends it.

    Blocks on the queue between requests (no polling wake-ups while training runs)."""
    while not cancel():
        name, path = requests.get()
        if name is None:
            return
        try:
            yield Thumbnail(name, make_thumbnail(path, size))
        except Exception:  # an unreadable file shows no thumbnail; opening it reports why
            continue
