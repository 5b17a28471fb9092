"""Shared test set-up: Qt offscreen before any Qt import, small torch thread pool."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("IELSTUDIO_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import pytest  # noqa: E402


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
