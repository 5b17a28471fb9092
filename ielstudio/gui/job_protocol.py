"""The protocol between a background job and the window, in one place (no Qt: a child
process imports it).

A job is a generator; what it yields are the events below (small and picklable).
In a child process (`process_worker.ProcessWorker`) ``child_main`` runs it and sends
messages on a queue: ("event", ev), ("progress", (done, total)), ("end", value) and
("error", JobFailure). A failure keeps its type: the exception's class name, its
one-line message for the user, the file it names (DataError) and the traceback.
A job that is cancelled ends (its generator returns); nothing else signals it.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class JobError(Exception):
    """A job failed in a child process; the message is already meant for the user."""


def error_message(exc: BaseException) -> str:
    """A one-line message for the user: DataError already names file and problem."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if name in ("DataError", "JobError"):
        return text
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"Out of memory: {text or name}. Try a smaller crop, batch size or model."
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------- events

@dataclass
class DatasetInfo:
    """What loading found: class count, mask encoding, channels, skipped files, usable names."""

    n_classes: int
    encoding: Any  # core.imageio.MaskEncoding
    in_channels: int
    skipped: list  # core.dataset.Skipped
    names: list[str]


@dataclass
class Settled:
    """Opening settled the data set: its class mapping and the masks that do not fit it."""

    encoding: Any  # core.imageio.MaskEncoding
    skipped: list  # core.dataset.Skipped


@dataclass
class ImageReview:
    """The model's view of one image: probabilities, proposal, label-quality score, changed fraction."""

    probs: np.ndarray
    proposal: np.ndarray
    score: float
    changed: float
    parts: dict | None = None  # what the score is made of (`core.review.score_parts`); None: not known


@dataclass
class Reviews:
    """Proposals and scores for some images, at a training step (None = after training)."""

    step: int | None
    items: dict[str, ImageReview] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    warnings: list[str] = field(default_factory=list)  # on the last chunk: classes the model did not learn
    #: the `session.proposal_source` the job stored these proposals under (None: not stored)
    source: str | None = None
    #: volume data sets: the score of each volume whose slices are in ``items`` (name -> score)
    volume_scores: dict[str, float] = field(default_factory=dict)
    #: on the last chunk: objects do-no-harm rule 3 removed, and regions rule 4 added, over the pass (`core.review`)
    objects_removed: int = 0
    regions_added: int = 0


@dataclass
class TrainingFinished:
    """Training ended (core DoneEvent without the model); the model is in ``checkpoint``."""

    steps: int
    reason: str
    history: dict
    config: Any  # core.training.TrainConfig
    checkpoint: str | None



@dataclass
class JobFailure:
    """Why a job failed, across the process boundary: ``kind`` is the exception's class
    name (DataError, TrainingError, MemoryError ...), ``message`` what the user reads,
    ``path`` the file a DataError names."""

    kind: str
    message: str
    path: str | None = None
    traceback: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> "JobFailure":
        path = getattr(exc, "path", None)
        return cls(type(exc).__name__, error_message(exc), None if path is None else str(path),
                   traceback.format_exc())


# --------------------------------------------------------------------------- child process

def _is_step(ev) -> bool:
    return type(ev).__name__ == "StepEvent"


def lower_priority() -> None:
    """Make this process yield the CPU to the window's: nice 5 on Linux and macOS, below
    normal on Windows; nothing where neither works. Nice 5 (a third of the CPU against
    another busy job, not the tenth nice 10 gives): the window responds as with nice 10
    (ui-latency-stop35.md)."""
    try:
        if hasattr(os, "nice"):
            os.nice(5)
        elif sys.platform == "win32":
            import ctypes

            below_normal = 0x4000
            ctypes.windll.kernel32.SetPriorityClass(ctypes.windll.kernel32.GetCurrentProcess(), below_normal)
    except (OSError, AttributeError):  # not allowed here: the job still runs, at normal priority
        pass


def child_main(fn, args, kwargs, out_q, cancel_ev, run_ev, n_threads: int | None,
               min_interval_s: float = 0.1) -> None:
    """Entry point of a job's child process: iterate ``fn`` and send what it yields.

    Messages on ``out_q``: ("event", ev), ("progress", (done, total)), ("end", value),
    ("error", JobFailure). StepEvents closer than ``min_interval_s`` are
    coalesced here (the newest is kept), so the GUI process wakes at most ~10 times a
    second for progress. ``run_ev`` cleared = paused (blocks between events);
    ``cancel_ev`` is the job's ``cancel()``. ``n_threads``: torch's threads; None keeps
    torch's own choice, as the command does, so that a training here takes the same
    steps as `ielstudio clean`'s (on a CPU, another thread count adds the sums in
    another order). The process runs at a lower priority, so the window stays quick.
    """
    lower_priority()
    if n_threads is not None:
        try:
            import torch

            torch.set_num_threads(max(1, n_threads))
        except Exception:  # torch is always there in practice; the job will say if not
            pass
    pending = None
    last = 0.0
    try:
        gen = fn(*args, cancel=cancel_ev.is_set, report=lambda d, t: out_q.put(("progress", (d, t))), **kwargs)
        while True:
            if not run_ev.is_set():
                if pending is not None:
                    out_q.put(("event", pending))
                    pending = None
                run_ev.wait()  # paused: block here, between events
            try:
                ev = next(gen)
            except StopIteration as stop:
                if pending is not None:
                    out_q.put(("event", pending))
                out_q.put(("end", stop.value))
                break
            if _is_step(ev):
                now = time.monotonic()
                if now - last < min_interval_s:
                    pending = ev
                    continue
                last = now
                pending = None
            elif pending is not None:
                out_q.put(("event", pending))
                pending = None
            out_q.put(("event", ev))
    except BaseException as exc:
        out_q.put(("error", JobFailure.of(exc)))
    finally:
        out_q.close()
        out_q.join_thread()


def compact_classes(proposal: np.ndarray) -> np.ndarray:
    """Class indices as uint8 when they fit (a smaller message to the GUI process)."""
    return proposal.astype(np.uint8) if proposal.size and int(proposal.max()) < 256 else proposal
