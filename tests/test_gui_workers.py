"""GeneratorWorker: a plain generator run in a QThread, with cancel, pause and coalescing."""

import threading
from dataclasses import dataclass

import pytest

pytest.importorskip("PySide6")

from ielstudio.gui.job_protocol import error_message  # noqa: E402
from ielstudio.gui.workers import GeneratorWorker, NewestRequestWorker, run_once  # noqa: E402


def counting(n, gate=None, reached=None):
    """Yield 0..n-1 and return their sum; optionally block at item 2 until `gate` is set."""
    for i in range(n):
        if gate is not None and i == 2:
            reached.set()
            gate.wait(10)
        yield i
    return sum(range(n))


def test_yields_every_item_in_order_and_returns_value(qtbot):
    got = []
    w = GeneratorWorker(counting, 5)
    w.yielded.connect(got.append)
    with qtbot.waitSignal(w.finished, timeout=5000) as blocker:
        w.start()
    assert got == [0, 1, 2, 3, 4]
    assert blocker.args == [10]
    assert w.wait(5000) and not w.is_running()


def test_error_becomes_one_line_message(qtbot):
    def broken():
        yield 1
        raise ValueError("loss is NaN at step 2\nmore detail")

    w = GeneratorWorker(broken)
    finished = []
    w.finished.connect(finished.append)
    with qtbot.waitSignal(w.errored, timeout=5000) as blocker:
        w.start()
    assert blocker.args == ["ValueError: loss is NaN at step 2"]
    assert "Traceback" in w.traceback_text
    assert w.failure.kind == "ValueError" and w.failure.path is None  # the error keeps its type
    w.wait(5000)
    assert finished == []


def test_data_error_message_is_kept_verbatim():
    from ielstudio.core.errors import DataError
    from ielstudio.gui.job_protocol import JobFailure

    assert error_message(DataError("/x/a.png", "unreadable")) == "/x/a.png: unreadable"
    failure = JobFailure.of(DataError("/x/a.png", "unreadable"))
    assert (failure.kind, failure.path, failure.message) == ("DataError", "/x/a.png", "/x/a.png: unreadable")
    assert error_message(RuntimeError("CUDA out of memory. Tried")).startswith("Out of memory")


def test_cancel_is_honoured_between_yields_and_passed_to_generator(qtbot):
    closed = []
    seen = []

    def job(cancel):
        i = 0
        try:
            while True:
                seen.append(cancel())
                yield i
                i += 1
        finally:
            closed.append(i)  # the worker closes the generator after a cancel

    got = []
    w = GeneratorWorker(job, cancel_kwarg="cancel")

    def on_item(i):
        got.append(i)
        if i == 3:
            w.cancel()

    w.yielded.connect(on_item)
    with qtbot.waitSignal(w.finished, timeout=5000) as blocker:
        w.start()
    assert blocker.args == [None]  # cancelled: no result
    w.wait(5000)
    # the thread may have produced more items before the GUI thread saw item 3, but
    # nothing after the cancel is delivered, and the generator was closed
    assert got == [0, 1, 2, 3]
    assert w.is_cancelled() and closed and closed[0] >= 3
    assert seen[0] is False


def test_pause_stops_pulling_until_resume(qtbot):
    gate, reached = threading.Event(), threading.Event()
    pulled = []

    def job():
        for i in range(6):
            pulled.append(i)
            if i == 2:
                reached.set()
                gate.wait(10)
            yield i

    got = []
    w = GeneratorWorker(job)
    w.yielded.connect(got.append)
    w.start()
    assert reached.wait(5)
    with qtbot.waitSignal(w.paused, timeout=2000):
        w.pause()  # takes effect before the next pull
    assert w.is_paused()
    gate.set()
    # item 2 arrives; the worker then waits: nothing beyond item 2 is pulled
    qtbot.waitUntil(lambda: got == [0, 1, 2] and w.waiting, timeout=5000)
    assert pulled == [0, 1, 2]  # blocked on the condition before pulling item 3
    with qtbot.waitSignal(w.finished, timeout=5000):
        w.resume()
    assert got == [0, 1, 2, 3, 4, 5]
    w.wait(5000)


def test_cancel_while_paused_ends_the_thread(qtbot):
    gate, reached = threading.Event(), threading.Event()
    w = GeneratorWorker(counting, 100, gate, reached)
    w.start()
    assert reached.wait(5)
    w.pause()
    gate.set()
    with qtbot.waitSignal(w.finished, timeout=5000):
        w.cancel()
    assert w.wait(5000)


@dataclass
class Step:
    step: int
    total_steps: int


def test_coalesced_items_are_thinned_but_last_one_kept(qtbot):
    def job():
        for i in range(1, 2001):
            yield Step(i, 2000)
        yield "done"

    got, progress = [], []
    w = GeneratorWorker(job, coalesce=lambda x: isinstance(x, Step), min_interval_s=10.0)
    w.yielded.connect(got.append)
    w.progress.connect(lambda s, t: progress.append((s, t)))
    with qtbot.waitSignal(w.finished, timeout=5000):
        w.start()
    # first Step passes, the rest arrive within 10 s and are coalesced into the newest
    assert got == [Step(1, 2000), Step(2000, 2000), "done"]
    assert progress == [(1, 2000), (2000, 2000)]


def test_run_once_returns_function_result(qtbot):
    w = run_once(lambda a, b: a * b, 6, b=7)
    got = []
    w.yielded.connect(got.append)
    with qtbot.waitSignal(w.finished, timeout=5000):
        w.start()
    assert got == [42]


def test_request_stop_lets_the_generator_finish_its_last_event(qtbot):
    def job(cancel):
        step = 0
        while True:
            if cancel():
                yield ("done", step)
                return "stopped"
            step += 1
            yield ("step", step)

    got = []
    w = GeneratorWorker(job, cancel_kwarg="cancel")

    def on_item(item):
        got.append(item)
        if item == ("step", 2):
            w.request_stop()

    w.yielded.connect(on_item)
    with qtbot.waitSignal(w.finished, timeout=5000) as blocker:
        w.start()
    assert blocker.args == ["stopped"]  # not a hard cancel: the return value comes through
    assert got[-1][0] == "done" and got[:2] == [("step", 1), ("step", 2)]
    w.wait(5000)


def test_process_worker_relays_events_and_a_job_error(qtbot, tmp_path):
    """A job in a child process: its events arrive in order, its error as one line."""
    from ielstudio.core.dataset import scan_pairs
    from ielstudio.core.training import TrainConfig
    from ielstudio.core.cleaning import CleanConfig
    from ielstudio.gui.jobs import DatasetInfo, review_job
    from ielstudio.gui.process_worker import ProcessWorker

    import cv2
    import numpy as np

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((16, 16), 100, np.uint8))
    (tmp_path / "masks" / "a.png").write_bytes(b"not a png")  # the only pair is unreadable
    scan = scan_pairs(tmp_path / "images", tmp_path / "masks")
    w = ProcessWorker(review_job, scan, TrainConfig(), CleanConfig(), None, 0, None, n_threads=1)
    got = []
    w.yielded.connect(got.append)
    with qtbot.waitSignal(w.errored, timeout=120000) as blocker:
        w.start()
    assert blocker.args == ["no usable image/mask pairs to train on"]
    assert len(got) == 1 and isinstance(got[0], DatasetInfo) and got[0].names == []
    assert len(got[0].skipped) == 1 and "a.png" in str(got[0].skipped[0].path)
    assert "JobError" in w.traceback_text
    assert (w.failure.kind, w.failure.message) == ("JobError", "no usable image/mask pairs to train on")
    assert w.wait(30000) and w.process.exitcode == 0


def test_newest_request_worker_answers_only_the_newest_request(qtbot):
    """Requests queued while one is served are skipped but the newest; an answer to a
    superseded request is dropped; a failed request is told and the thread goes on;
    forget() drops the answer on its way. The served function is made once per thread."""
    started, release = threading.Event(), threading.Event()
    made, served = [], []

    def make_serve():
        made.append(1)

        def serve(x):
            served.append(x)
            if x == "slow":
                started.set()
                release.wait(10)
            if x == "bad":
                raise ValueError("no such plane")
            return x * 2
        return serve

    w = NewestRequestWorker(make_serve)
    got = []
    w.answered.connect(lambda result, error: got.append((result, error)))
    w.request("slow")
    assert started.wait(10)
    for x in (1, 2, 3):  # queued while "slow" runs: only 3 is served
        w.request(x)
    release.set()
    qtbot.waitUntil(lambda: not w.busy(), timeout=5000)
    assert got == [(6, None)]
    with qtbot.waitSignal(w.answered, timeout=5000):
        w.request("bad")
    assert got[-1] == (None, "ValueError: no such plane")
    with qtbot.waitSignal(w.answered, timeout=5000):
        w.request(5)
    assert got[-1] == (10, None)
    w.request(7)
    w.forget()
    assert not w.busy()
    qtbot.waitUntil(lambda: 7 in served, timeout=5000)  # served, and its answer drained ...
    qtbot.wait(100)
    assert got[-1] == (10, None) and len(got) == 3  # ... but not delivered
    w.stop()
    assert made == [1] and served == ["slow", 3, "bad", 5, 7]


def _threads_and_niceness(cancel=None, report=None):
    """A job that says how its process runs (module level: a spawned child imports it)."""
    import os

    import torch

    yield torch.get_num_threads(), os.nice(0) if hasattr(os, "nice") else None


def test_a_job_process_uses_torchs_own_threads_as_the_command_does_at_a_lower_priority(qtbot):
    """Same thread count as `ielstudio clean` (a training takes the same steps in both; on
    a CPU another count adds the sums in another order), while the window keeps the CPU
    it needs: the child runs at a lower priority."""
    import os
    import subprocess
    import sys

    from ielstudio.gui.process_worker import ProcessWorker

    fresh = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, check=True).stdout)
    w = ProcessWorker(_threads_and_niceness)
    got = []
    w.yielded.connect(got.append)
    with qtbot.waitSignal(w.finished, timeout=120000):
        w.start()
    threads, niceness = got[0]
    assert threads == fresh
    if hasattr(os, "nice"):
        assert niceness >= os.nice(0) + 5 or niceness == 19  # 19: the floor of an already nice parent
