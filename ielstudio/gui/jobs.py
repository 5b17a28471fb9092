"""Background jobs of the window: core generators chained and wrapped for the review.

Each job is a plain generator (run by ``workers.GeneratorWorker``) that calls
core functions and yields small events. Work that would stall the GUI thread
(loading, proposals and label-quality scores for a snapshot) happens here, in
the worker thread, so the GUI only copies results into widgets.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np


@dataclass
class LoadProgress:
    done: int
    total: int


@dataclass
class SamplesLoaded:
    """``dataset``: the ``core.dataset.LoadedDataset`` (samples, skipped, n_classes, encoding)."""

    dataset: object


@dataclass
class ImageReview:
    """The model's view of one image: probabilities, proposal, label-quality score, changed fraction."""

    probs: np.ndarray
    proposal: np.ndarray
    score: float
    changed: float


@dataclass
class Reviews:
    """Proposals and scores for some images, at a training step (None = after training)."""

    step: int | None
    items: dict[str, ImageReview] = field(default_factory=dict)
    done: int = 0
    total: int = 0


def review_image(probs: np.ndarray, given: np.ndarray, clean_config) -> ImageReview:
    """Proposal + label-quality score of one image (core.cleaning)."""
    from ielstudio.core.cleaning import label_quality, propose

    probs = np.asarray(probs, np.float32)
    proposal = propose(probs, given, clean_config)
    score, _doubt = label_quality(probs, given)
    changed = float(np.mean(proposal != given))
    return ImageReview(probs, proposal.astype(np.int64, copy=False), float(score), changed)


class Cancelled(Exception):
    """Raised inside a long core call when the user cancels."""


def load_job(scan, cancel: Callable[[], bool] | None = None,
             report: Callable[[int, int], None] | None = None) -> Iterator:
    """Load every pair of ``scan`` (core.dataset.load_samples); ``report(done, total)`` per file."""
    from ielstudio.core.dataset import load_samples

    def progress(done: int, total: int) -> None:
        if cancel is not None and cancel():
            raise Cancelled()
        if report is not None:
            report(done, total)

    try:
        dataset = load_samples(scan, progress=progress)
    except Cancelled:
        return
    yield SamplesLoaded(dataset)


def training_job(scan, config, clean_config, snapshot_names: list[str] | None, snapshot_every: int,
                 cancel: Callable[[], bool], dataset=None,
                 report: Callable[[int, int], None] | None = None) -> Iterator:
    """Load the samples (unless ``dataset`` is given), then ``core.training.train``.

    Snapshot events become ``Reviews`` (proposals and scores computed here, in the thread).
    Every other training event is passed through unchanged.
    """
    from ielstudio.core.training import SnapshotEvent, train

    if dataset is None:
        for ev in load_job(scan, cancel, report):
            yield ev
            if isinstance(ev, SamplesLoaded):
                dataset = ev.dataset
    if cancel():
        return
    samples = list(dataset.samples)
    if not samples:
        raise ValueError("no usable image/mask pairs to train on")
    given = {s.name: s.mask for s in samples}
    names = [n for n in (snapshot_names or given) if n in given]
    kwargs = {"cancel": cancel, "snapshot_every": snapshot_every}
    if names:
        kwargs["snapshot_names"] = names
    for ev in train(samples, config, **kwargs):
        if isinstance(ev, SnapshotEvent):
            items = {}
            for name, probs in ev.probs.items():
                if cancel():
                    break
                if name in given:
                    items[name] = review_image(probs, given[name], clean_config)
            yield Reviews(ev.step, items, len(items), len(items))
        else:
            yield ev


def scoring_job(model, samples, device, clean_config, cancel: Callable[[], bool],
                chunk: int = 8) -> Iterator[Reviews]:
    """Predict every sample with the trained model; yield proposals and scores in chunks."""
    from ielstudio.core.training import predict

    total = len(samples)
    items: dict[str, ImageReview] = {}
    for i, s in enumerate(samples):
        if cancel():
            break
        probs = predict(model, s.image, device)
        items[s.name] = review_image(probs, s.mask, clean_config)
        if len(items) >= chunk or i == total - 1:
            yield Reviews(None, items, i + 1, total)
            items = {}
    if items:
        yield Reviews(None, items, total, total)


@dataclass
class Thumbnail:
    name: str
    rgb: np.ndarray  # (h, w) or (h, w, 3) uint8


def make_thumbnail(image_path, size: int = 40) -> np.ndarray:
    """A small uint8 preview of an image file (core.imageio read + normalise)."""
    import cv2

    from ielstudio.core.imageio import normalize_intensity, read_image

    img = normalize_intensity(read_image(image_path))
    h, w = img.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)


def thumbnail_job(requests: "queue.Queue", cancel: Callable[[], bool], size: int = 40) -> Iterator[Thumbnail]:
    """Serve thumbnail requests ``(name, image_path)`` until cancelled (waits, never spins)."""
    while not cancel():
        try:
            name, path = requests.get(timeout=0.25)
        except queue.Empty:
            continue
        if name is None:
            return
        try:
            yield Thumbnail(name, make_thumbnail(path, size))
        except Exception:  # an unreadable file shows no thumbnail; opening it reports why
            continue
