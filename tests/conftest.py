"""Shared test set-up: Qt offscreen before any Qt import, small torch thread pool."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("IELSTUDIO_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
