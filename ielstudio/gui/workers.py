"""Run a core generator in a background thread and turn what it yields into Qt signals.

The superqt ``thread_worker`` idea: a long job is a generator; each ``yield`` is a
progress report and the point where cancel and pause are honoured.

The worker thread never touches Qt: it puts what the generator yields into a
``queue.Queue``, and a QTimer in the GUI thread drains that queue and emits the
signals there. (Emitting Qt signals from a non-Qt thread corrupts reference counts
in PySide6 6.12.0 and crashes the interpreter; this design does not depend on how
any binding handles cross-thread signals.)

    worker = GeneratorWorker(train, samples, config, cancel_kwarg="cancel")
    worker.yielded.connect(on_event)
    worker.finished.connect(on_done)
    worker.start()
    ...
    worker.pause(); worker.resume(); worker.request_stop(); worker.cancel()
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, QTimer, Signal

from .job_protocol import JobFailure

POLL_MS = 10  # how often the GUI thread drains the queue while a job runs
DRAIN_BUDGET_S = 0.02  # at most this long per drain, so a burst never stalls the GUI


_YIELD, _PROGRESS, _FINISH, _ERROR = range(4)


class GeneratorWorker(QObject):
    """Pull items from ``fn(*args, **kwargs)`` (a generator) in a thread.

    Signals (all emitted in the GUI thread):
    - ``yielded(object)``: each item (possibly coalesced, see ``coalesce``);
    - ``progress(int, int)``: ``(item.step, item.total_steps)`` for items that have both,
      and whatever the job reports through ``progress_kwarg``;
    - ``finished(object)``: the generator's return value (None if cancelled), always last
      unless the generator raised;
    - ``errored(str)``: a one-line message if the generator raised (``failure``: its type and file; ``traceback_text``
      keeps the details);
    - ``paused()`` / ``resumed()``.

    ``cancel()`` is honoured between yields, and items produced but not yet delivered
    are dropped (with ``cancel_kwarg``, the cancel is also seen inside the
    generator: the callable ``is_cancelled`` is passed under that keyword; likewise
    ``progress_kwarg`` passes a ``report(done, total)`` callable for progress inside
    one long call). ``request_stop()`` only tells the generator and lets it finish.
    ``pause()`` makes the thread stop pulling and wait on a condition (no busy loop).
    ``coalesce(item) -> bool`` marks items that may be dropped when they arrive faster
    than ``min_interval_s`` apart; the newest dropped one is still delivered before the
    next non-coalescible item and before ``finished``.
    """

    yielded = Signal(object)
    progress = Signal(int, int)
    finished = Signal(object)
    errored = Signal(str)
    paused = Signal()
    resumed = Signal()

    def __init__(
        self,
        fn: Callable[..., Iterator[Any]],
        *args: Any,
        cancel_kwarg: str | None = None,
        progress_kwarg: str | None = None,
        coalesce: Callable[[Any], bool] | None = None,
        min_interval_s: float = 0.0,
        parent=None,
        **kwargs: Any,
    ):
        super().__init__(parent)
        self._fn = fn
        self._args = args
        self._kwargs = dict(kwargs)
        if cancel_kwarg:
            self._kwargs[cancel_kwarg] = self.is_cancelled
        if progress_kwarg:
            self._kwargs[progress_kwarg] = self._report
        self._coalesce = coalesce
        self._min_interval = float(min_interval_s)
        self._cond = threading.Condition()
        self._cancel = False
        self._stop_requested = False
        self._paused = False
        self.waiting = False  # True while the thread is blocked by a pause
        self.traceback_text = ""
        self.failure: JobFailure | None = None  # set when the job raised
        self.result: Any = None
        self.n_yielded = 0
        self.done = False  # True once finished or errored has been emitted
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"worker-{getattr(fn, '__name__', 'job')}",
                                        daemon=True)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.drain)

    # --- lifecycle (GUI thread) -------------------------------------------------------
    def start(self) -> None:
        self._timer.start()
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until the thread ends (signals still queued are delivered by ``drain``)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout_ms / 1000)
        return not self._thread.is_alive()

    def stop(self, timeout_ms: int = 30000) -> bool:
        """Cancel and wait for the thread to end; True if it ended. Nothing more is emitted."""
        self.cancel()
        ended = self.wait(timeout_ms)
        self._timer.stop()
        self.done = True
        return ended

    def drain(self) -> None:
        """Emit what the thread has produced (GUI thread; called by the timer)."""
        t0 = time.monotonic()
        while True:
            try:
                kind, a, b = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == _YIELD:
                if not self._cancel:  # after a (hard) cancel nothing more is delivered
                    self.yielded.emit(a)
            elif kind == _PROGRESS:
                if not self._cancel:
                    self.progress.emit(a, b)
            elif kind == _FINISH:
                self._timer.stop()
                self.done = True
                self.finished.emit(a)
                return
            elif kind == _ERROR:
                self._timer.stop()
                self.done = True
                self.errored.emit(a)
                return
            if time.monotonic() - t0 > DRAIN_BUDGET_S:
                return  # the rest on the next tick: keep the GUI responsive

    # --- control (any thread) ---------------------------------------------------------
    def is_cancelled(self) -> bool:
        """What the generator sees (through ``cancel_kwarg``): a cancel or a stop request."""
        return self._cancel or self._stop_requested

    def is_paused(self) -> bool:
        return self._paused

    def cancel(self) -> None:
        """Hard cancel: the thread stops pulling before the next item."""
        with self._cond:
            self._cancel = True
            self._cond.notify_all()

    def request_stop(self) -> None:
        """Soft cancel: tell the generator (``is_cancelled`` turns True, pause ends) but keep
        pulling, so it can finish its step and yield its final event (e.g. a DoneEvent)."""
        with self._cond:
            self._stop_requested = True
            was_paused, self._paused = self._paused, False
            self._cond.notify_all()
        if was_paused:
            self.resumed.emit()

    def pause(self) -> None:
        with self._cond:
            if self._paused or self._cancel or self._stop_requested:
                return
            self._paused = True
        self.paused.emit()

    def resume(self) -> None:
        with self._cond:
            if not self._paused:
                return
            self._paused = False
            self._cond.notify_all()
        self.resumed.emit()

    # --- the thread (no Qt here) ------------------------------------------------------
    def _report(self, done: int, total: int) -> None:
        self._queue.put((_PROGRESS, int(done), int(total)))

    def _wait_while_paused(self) -> None:
        with self._cond:
            while self._paused and not self._cancel:
                self.waiting = True  # blocked on the condition, not spinning
                self._cond.wait()
            self.waiting = False

    def _post(self, item: Any) -> None:
        self.n_yielded += 1
        self._queue.put((_YIELD, item, None))
        step, total = getattr(item, "step", None), getattr(item, "total_steps", None)
        if isinstance(step, int) and isinstance(total, int):
            self._queue.put((_PROGRESS, step, total))

    def _run(self) -> None:
        gen = None
        pending = None  # newest coalesced item not yet delivered
        last_post = 0.0
        try:
            gen = self._fn(*self._args, **self._kwargs)
            while True:
                self._wait_while_paused()
                if self._cancel:
                    break
                try:
                    item = next(gen)
                except StopIteration as stop:
                    self.result = stop.value
                    break
                if self._coalesce is not None and self._coalesce(item):
                    now = time.monotonic()
                    if now - last_post < self._min_interval:
                        pending = item
                        continue
                    pending = None
                    last_post = now
                    self._post(item)
                else:
                    if pending is not None:
                        self._post(pending)
                        pending = None
                    self._post(item)
            if pending is not None:
                self._post(pending)
        except BaseException as exc:  # shown to the user, never a crash
            self.failure = JobFailure.of(exc)
            self.traceback_text = self.failure.traceback
            self._queue.put((_ERROR, self.failure.message, None))
            return
        finally:
            if gen is not None and hasattr(gen, "close"):
                try:
                    gen.close()
                except Exception:  # a generator that fails while closing: nothing to do
                    pass
        self._queue.put((_FINISH, None if self._cancel else self.result, None))


def run_once(fn: Callable[..., Any], *args: Any, parent=None, **kwargs: Any) -> GeneratorWorker:
    """A worker that calls ``fn(*args, **kwargs)`` once and yields its result (not started)."""

    def job():
        yield fn(*args, **kwargs)

    return GeneratorWorker(job, parent=parent)


def newest_request_job(requests: "queue.Queue", make_serve: Callable[[], Callable[..., Any]], cancel):
    """Serve ``(request_id, *payload)`` requests from ``requests``, the newest first (older
    waiting ones are skipped); ``None`` ends the job. ``make_serve()`` gives the function
    that serves a payload (called once per job, so it may keep a cache). Yields
    ``(request_id, result or None, error message or None)``: a failed request is told,
    and the job goes on."""
    serve = make_serve()
    while not cancel():
        req = requests.get()
        while True:  # only the newest request matters
            try:
                req = requests.get_nowait()
            except queue.Empty:
                break
        if req is None:
            return
        rid, *payload = req
        try:
            yield rid, serve(*payload), None
        except Exception as e:  # told to the caller; the job goes on
            yield rid, None, f"{type(e).__name__}: {e}"


class NewestRequestWorker(QObject):
    """One long-lived thread for a panel whose requests supersede each other (the maps or
    the planes of the image now shown): ``request(*payload)`` queues a request and
    ``answered(result, error)`` is emitted in the GUI thread for the newest one only
    (an answer to an older request is dropped). ``forget()`` drops the answer on its
    way; ``stop()`` ends the thread (a later request starts a new one)."""

    answered = Signal(object, object)  # (result or None, error message or None)

    def __init__(self, make_serve: Callable[[], Callable[..., Any]], parent=None):
        super().__init__(parent)
        self._make_serve = make_serve
        self._request_id = 0
        self._pending_id: int | None = None
        self._requests: queue.Queue = queue.Queue()
        self._worker: GeneratorWorker | None = None

    def request(self, *payload: Any) -> None:
        self._request_id += 1
        if self._worker is None:
            self._worker = GeneratorWorker(newest_request_job, self._requests, self._make_serve,
                                           cancel_kwarg="cancel", parent=self)
            self._worker.yielded.connect(self._on_result)
            self._worker.start()
        self._pending_id = self._request_id
        self._requests.put((self._request_id, *payload))

    def busy(self) -> bool:
        """Whether the answer to the newest request is still to come."""
        return self._pending_id is not None

    def forget(self) -> None:
        """The answer still on its way (if any) is not delivered."""
        self._request_id += 1
        self._pending_id = None

    def stop(self) -> None:
        if self._worker is not None:
            self._requests.put(None)
            self._worker.stop(10000)
            self._worker = None
            self._requests = queue.Queue()
        self._pending_id = None

    def _on_result(self, item) -> None:
        rid, result, error = item
        if rid != self._request_id:
            return  # a newer request is on its way
        self._pending_id = None
        self.answered.emit(result, error)
