"""Shared test set-up: Qt offscreen before any Qt import, small torch thread pool."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("IELSTUDIO_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _collect_garbage_after_gui_tests(request):
    """After a test with windows (set up first, so torn down after qtbot has closed them),
    free their reference cycles at once: left to a later test, the collector once ran in
    the GUI thread while that test's training thread was building a model, and the
    process died of a segmentation fault (full suite, under load)."""
    yield
    if "qtbot" in request.fixturenames:
        gc.collect()


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is fastest and avoids spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _drain(generator):
    """(every item a generator yields, the value it returns)."""
    items = []
    try:
        while True:
            items.append(next(generator))
    except StopIteration as stop:
        return items, stop.value


@pytest.fixture
def drain():
    """Run a review generator (core.review.review_samples, core.volume_clean.review_volumes)
    to its end: (its results, its summary)."""
    return _drain


@pytest.fixture
def planned(request):
    """``planned(window)``: wait until the window's `plan_in_background` worker (decisions
    on many images, read and encoded in a worker) has ended and its decisions are recorded."""
    qtbot = request.getfixturevalue("qtbot")

    def wait(w) -> None:
        worker = w.planning_worker
        if worker is not None:
            qtbot.waitUntil(lambda: worker.done, timeout=20000)

    return wait


class _Brightness(torch.nn.Module):
    """A model that segments by intensity: class 1 with p 0.98 where the first channel is
    above 0.5, p 0.005 elsewhere; never a class above 1 (for n_classes > 2); with
    ``sees=False`` it finds nothing anywhere."""

    def __init__(self, n_classes: int = 2, sees: bool = True):
        super().__init__()
        self.n_classes, self.sees = n_classes, sees
        self.device_marker = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        import math

        bright = (x[:, :1] > 0.5).float() if self.sees else torch.zeros_like(x[:, :1])
        fg = math.log(0.005 / 0.995) + (math.log(0.98 / 0.02) - math.log(0.005 / 0.995)) * bright
        others = [torch.full_like(fg, -20.0)] * (self.n_classes - 2)
        return torch.cat([torch.zeros_like(fg), fg, *others], 1)


@pytest.fixture
def brightness_model():
    """The class of a model that segments by intensity (`_Brightness`): call it, e.g.
    ``brightness_model(3)`` for three classes, ``brightness_model(sees=False)``."""
    return _Brightness
