"""Run a job generator in a child process, with the signals and controls of
`workers.GeneratorWorker`: the window's training and scoring jobs run here, so the GUI
process runs no extra Python thread while they work (`job_protocol` is what the child
and the window say to each other)."""

from __future__ import annotations

import queue
import time
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, QTimer, Signal

from .job_protocol import JobFailure
from .workers import DRAIN_BUDGET_S


class ProcessWorker(QObject):
    """Run a job generator in a child process; same signals and controls as GeneratorWorker.

    ``fn(*args, cancel=..., report=..., **kwargs)`` must be importable (module level,
    no Qt). The GUI thread reads the child's messages on a timer, so the GUI process
    runs no extra Python thread while the job works: no GIL to wait for, however busy
    the machine. ``pause()`` blocks the child between events; ``request_stop()`` and
    ``cancel()`` make the job's ``cancel()`` true (it finishes its step and ends);
    ``cancel()`` also stops emitting; ``stop()`` waits for the process (terminating it
    if it hangs).
    """

    yielded = Signal(object)
    progress = Signal(int, int)
    finished = Signal(object)
    errored = Signal(str)
    paused = Signal()
    resumed = Signal()

    def __init__(self, fn: Callable[..., Iterator[Any]], *args: Any, n_threads: int | None = None,
                 min_interval_s: float = 0.1, poll_ms: int = 20, parent=None, **kwargs: Any):
        super().__init__(parent)
        import multiprocessing as mp
        from collections import deque

        from .job_protocol import child_main

        ctx = mp.get_context("spawn")  # never fork a process that has Qt and torch threads
        self._queue = ctx.Queue()
        self._cancel_ev = ctx.Event()
        self._run_ev = ctx.Event()
        self._run_ev.set()
        self.process = ctx.Process(target=child_main, name="ielstudio-job", daemon=True,
                                   args=(fn, args, kwargs, self._queue, self._cancel_ev, self._run_ev, n_threads,
                                         min_interval_s))
        self._inbox: deque = deque()
        self._paused = False
        self._hard = False
        self.done = False
        self.n_yielded = 0
        self.result: Any = None
        self.traceback_text = ""
        self.failure: JobFailure | None = None  # set when the job raised
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.drain)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.process.start()
        self._timer.start()

    def is_running(self) -> bool:
        return self.process.is_alive()

    @property
    def waiting(self) -> bool:
        return self._paused

    def _pump(self, timeout: float = 0.0) -> bool:
        """Move what the child sent into the inbox; True if anything came."""
        got = False
        try:
            while True:
                self._inbox.append(self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait())
                got = True
                timeout = 0.0
        except queue.Empty:
            return got

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until the child ends (reading its messages meanwhile, for ``drain``)."""
        if self.process.pid is None:
            return True
        deadline = time.monotonic() + timeout_ms / 1000
        while self.process.is_alive() and time.monotonic() < deadline:
            self._pump(0.05)
        self.process.join(0.5)
        self._pump()
        return not self.process.is_alive()

    def stop(self, timeout_ms: int = 30000) -> bool:
        """Cancel, wait for the child (terminate it if it hangs); nothing more is emitted."""
        self.cancel()
        ended = self.wait(timeout_ms)
        if not ended:
            self.process.terminate()
            self.process.join(5)
        self._timer.stop()
        self.done = True
        return ended

    def drain(self) -> None:
        """Emit what the child has sent (GUI thread; called by the timer)."""
        if self.done:
            self._timer.stop()
            return
        self._pump()
        t0 = time.monotonic()
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "event":
                if not self._hard:
                    self.n_yielded += 1
                    self.yielded.emit(payload)
                    step, total = getattr(payload, "step", None), getattr(payload, "total_steps", None)
                    if isinstance(step, int) and isinstance(total, int):
                        self.progress.emit(step, total)
            elif kind == "progress":
                if not self._hard:
                    self.progress.emit(*payload)
            elif kind == "end":
                self._finish()
                self.result = payload
                self.finished.emit(None if self._hard else payload)
                return
            elif kind == "error":
                self.failure = payload  # a JobFailure: the error's type, message, file and traceback
                self.traceback_text = payload.traceback
                self._finish()
                self.errored.emit(payload.message)
                return
            if time.monotonic() - t0 > DRAIN_BUDGET_S:
                return  # the rest on the next tick
        if not self.process.is_alive() and self.process.exitcode is not None and not self._pump():
            self._finish()
            self.errored.emit(f"the background process ended unexpectedly (exit code {self.process.exitcode})")

    def _finish(self) -> None:
        # the child exits on its own after its last message; joining it here would block
        # the GUI while torch tears down (seconds on a busy machine)
        self._timer.stop()
        self.done = True

    # --- control --------------------------------------------------------------------
    def is_cancelled(self) -> bool:
        return self._cancel_ev.is_set()

    def is_paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        if self._paused or self._cancel_ev.is_set():
            return
        self._paused = True
        self._run_ev.clear()
        self.paused.emit()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._run_ev.set()
        self.resumed.emit()

    def request_stop(self) -> None:
        self._cancel_ev.set()
        was_paused, self._paused = self._paused, False
        self._run_ev.set()
        if was_paused:
            self.resumed.emit()

    def cancel(self) -> None:
        self._hard = True
        self.request_stop()
