"""The volume side of the window's background jobs (no Qt here): a volume data set
scored volume by volume as `ielstudio clean` scores it, and each slice's review turned
into the frame the window shows slices in (`core.volume_review.to_display`)."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .job_protocol import ImageReview, Reviews, compact_classes

#: slices per Reviews message (as `jobs.REVIEWS_PER_MESSAGE` images): small messages keep the GUI's reads short
SLICES_PER_MESSAGE = 4


def frames_of(scan) -> dict:
    """Volume name -> `volume_review.Orientation` of a volume scan (empty for 2-D data)."""
    return {v.name: v.orientation for v in getattr(scan, "volumes", [])}


def displayed(name: str, review: ImageReview, frames: dict) -> ImageReview:
    """A slice's review in the frame the window shows slices in (`volume_review.to_display`)."""
    from ielstudio.core.volume_review import split_slice_name, to_display

    parts = split_slice_name(name) if frames else None
    o = frames.get(parts[0]) if parts else None
    if o is None:
        return review
    return ImageReview(to_display(review.probs, o), to_display(review.proposal, o), review.score, review.changed)


def volume_scoring_job(model, ds, clean_config, cancel: Callable[[], bool], holdout=None,
                       chunk: int = SLICES_PER_MESSAGE, frames: dict | None = None) -> Iterator[Reviews]:
    """Propose and score every volume with a trained model through
    core.volume_clean.review_volumes (3-D objects and gate, the path of `ielstudio clean`
    on volumes); yield its slices in chunks (in the displayed frame, `frames`), the
    first with the volume's score."""
    from ielstudio.core.volume_clean import review_volumes

    total = len(ds.samples)
    done = removed = added = 0
    held: Reviews | None = None  # the last message waits for the warnings that end the pass
    reviews = review_volumes(model, ds, clean_config, list(holdout or []), cancel)
    try:
        while True:
            r = next(reviews)
            removed, added = removed + r.objects_removed, added + r.regions_added
            names = [r.case.slice_name(k) for k in range(r.case.n_slices)]
            for start in range(0, len(names), chunk):
                if cancel():
                    return
                items = {names[k]: displayed(names[k], ImageReview(
                    r.probs[:, k], compact_classes(r.proposal[k]), float(r.slice_scores[k]),
                    float(np.mean(r.proposal[k] != r.given[k]))), frames or {})
                         for k in range(start, min(len(names), start + chunk))}
                done += len(items)
                if held is not None:
                    yield held
                held = Reviews(None, items, done, total,
                               volume_scores={r.case.name: float(r.score)} if start == 0 else {})
    except StopIteration as stop:
        _thresholds, _reliability, warnings = stop.value
    if held is not None and not cancel():
        held.warnings, held.objects_removed, held.regions_added = list(warnings), removed, added
        yield held
