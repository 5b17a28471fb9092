"""Prediction maps for a reopened project.

A project stores its proposals and scores, not the model's probabilities (they would
be C floats per pixel of every image). So when a reopened project shows an image, its
saved model predicts that one image, in the IEL panel's worker thread (never the GUI
thread), and the panel shows the prediction's defect maps as it did after training. A
volume's slice is given to the model as it trained (`VolumeSlices.model_input`: its
neighbours as channels, the volume's intensity range) and its probabilities are turned
into the frame the window shows.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

#: probabilities kept for the images shown last (a few MB each at most)
CACHED_IMAGES = 8


class SavedModelPredictions:
    """The saved model's probabilities for the images shown, loaded and computed on demand,
    always in the IEL panel's one worker thread (`IELPanel.request`)."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = Path(checkpoint)
        self._model = None
        self._config = None  # the checkpoint's TrainConfig: its slice_context
        self._unreadable = False  # the model could not be loaded: not tried again
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def probabilities(self, name: str, model_input: Callable[[int], np.ndarray],
                      frame: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray | None:
        """(C, H, W) probabilities of image ``name``, or None where the model cannot be read
        (the panel then shows the given mask's maps alone). ``model_input(slice_context)``
        gives what the model is fed; ``frame`` turns its output into the displayed frame.
        Runs in a worker thread."""
        from ielstudio.core.training import load_checkpoint, predict

        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        if self._unreadable:
            return None
        if self._model is None:
            try:
                self._model, self._config, _ = load_checkpoint(self.checkpoint)  # weights only: nothing unpickled
            except Exception:  # moved, damaged: the stored proposals still stand, the box says what to do
                self._unreadable = True
                return None
        probs = predict(self._model, model_input(self._config.slice_context))
        if frame is not None:
            probs = frame(probs)
        self._cache[name] = probs
        while len(self._cache) > CACHED_IMAGES:
            self._cache.popitem(last=False)
        return probs

    def request(self, name: str, image: np.ndarray) -> Callable[[], np.ndarray | None]:
        """What the IEL panel's worker calls for the probabilities of 2-D image ``name``."""
        return partial(self.probabilities, name, lambda _context: image)

    def request_slice(self, name: str, volumes) -> Callable[[], np.ndarray | None]:
        """The same for slice ``name`` of a volume data set (`core.volume_review.VolumeSlices`)."""
        from ielstudio.core.volume_review import to_display

        return partial(self.probabilities, name, partial(volumes.model_input, name),
                       partial(to_display, o=volumes.orientation(name)))
