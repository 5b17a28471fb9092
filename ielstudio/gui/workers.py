"""Run a core generator in a QThread and turn what it yields into Qt signals.

The superqt ``thread_worker`` idea: a long job is a generator; each ``yield`` is a
progress report and the point where cancel and pause are honoured. Signals are
emitted from the worker thread and delivered (queued) in the GUI thread.

    worker = GeneratorWorker(train, samples, config, cancel_kwarg="cancel")
    worker.yielded.connect(on_event)
    worker.finished.connect(on_done)
    worker.start()
    ...
    worker.pause(); worker.resume(); worker.cancel()
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, QThread, Signal


def error_message(exc: BaseException) -> str:
    """A one-line message for the user: DataError already names file and problem."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if name == "DataError":
        return text
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"Out of memory: {text or name}. Try a smaller crop, batch size or model."
    return f"{name}: {text}" if text else name


class _Runner(QThread):
    """The thread; the worker's signals are emitted from here (queued to the GUI)."""

    def __init__(self, worker: "GeneratorWorker"):
        super().__init__()
        self._worker = worker

    def run(self) -> None:
        self._worker._run()


class GeneratorWorker(QObject):
    """Pull items from ``fn(*args, **kwargs)`` (a generator) in a thread.

    Signals (all delivered in the thread that owns the worker, normally the GUI thread):
    - ``yielded(object)``: each item (possibly coalesced, see ``coalesce``);
    - ``progress(int, int)``: ``(item.step, item.total_steps)`` for items that have both;
    - ``finished(object)``: the generator's return value (None if cancelled), always last
      unless the generator raised;
    - ``errored(str)``: a one-line message if the generator raised (``traceback_text``
      keeps the details);
    - ``paused()`` / ``resumed()``.

    ``cancel()`` is honoured between yields (and, with ``cancel_kwarg``, inside the
    generator: the callable ``is_cancelled`` is passed under that keyword; likewise
    ``progress_kwarg`` passes ``progress.emit`` for progress inside one long call).
    ``pause()`` makes the thread stop pulling and wait on a condition (no busy loop).
    ``coalesce(item) -> bool`` marks items that may be dropped when they arrive faster
    than ``min_interval_s`` apart; the newest dropped one is still emitted before the
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
        if progress_kwarg:  # the job may report (done, total) from inside a long call
            self._kwargs[progress_kwarg] = self.progress.emit
        self._coalesce = coalesce
        self._min_interval = float(min_interval_s)
        self._cond = threading.Condition()
        self._cancel = False
        self._stop_requested = False
        self._paused = False
        self.waiting = False
        self.traceback_text = ""
        self.result: Any = None
        self.n_yielded = 0
        self._thread = _Runner(self)
        self.done = False  # True once finished or errored has been emitted

    def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, timeout_ms: int = 30000) -> bool:
        return self._thread.wait(timeout_ms)

    # --- control (any thread) -------------------------------------------------------
    def is_cancelled(self) -> bool:
        """What the generator sees (through ``cancel_kwarg``): a cancel or a stop request."""
        return self._cancel or self._stop_requested

    def request_stop(self) -> None:
        """Soft cancel: tell the generator (``is_cancelled`` turns True, pause ends) but keep
        pulling, so it can finish its step and yield its final event (e.g. a DoneEvent)."""
        with self._cond:
            self._stop_requested = True
            was_paused, self._paused = self._paused, False
            self._cond.notify_all()
        if was_paused:
            self.resumed.emit()

    def is_paused(self) -> bool:
        return self._paused

    def cancel(self) -> None:
        with self._cond:
            self._cancel = True
            self._cond.notify_all()

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

    def stop(self, timeout_ms: int = 30000) -> bool:
        """Cancel and wait for the thread to end; True if it ended."""
        self.cancel()
        if not self._thread.isRunning():
            return True
        return self._thread.wait(timeout_ms)

    # --- the thread -----------------------------------------------------------------
    def _wait_while_paused(self) -> None:
        with self._cond:
            while self._paused and not self._cancel:
                self.waiting = True  # blocked on the condition, not spinning
                self._cond.wait()
            self.waiting = False

    def _emit(self, item: Any) -> None:
        self.n_yielded += 1
        self.yielded.emit(item)
        step, total = getattr(item, "step", None), getattr(item, "total_steps", None)
        if isinstance(step, int) and isinstance(total, int):
            self.progress.emit(step, total)

    def _run(self) -> None:
        gen = None
        pending = None  # newest coalesced item not yet emitted
        last_emit = 0.0
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
                    if now - last_emit < self._min_interval:
                        pending = item
                        continue
                    pending = None
                    last_emit = now
                    self._emit(item)
                else:
                    if pending is not None:
                        self._emit(pending)
                        pending = None
                    self._emit(item)
            if pending is not None:
                self._emit(pending)
        except BaseException as exc:  # shown to the user, never a crash
            self.traceback_text = traceback.format_exc()
            self.done = True
            self.errored.emit(error_message(exc))
            return
        finally:
            if gen is not None and hasattr(gen, "close"):
                try:
                    gen.close()
                except Exception:  # a generator that fails while closing: nothing to do
                    pass
        self.done = True
        self.finished.emit(None if self._cancel else self.result)


def run_once(fn: Callable[..., Any], *args: Any, parent=None, **kwargs: Any) -> GeneratorWorker:
    """A worker that calls ``fn(*args, **kwargs)`` once and yields its result (not started)."""

    def job():
        yield fn(*args, **kwargs)

    return GeneratorWorker(job, parent=parent)
