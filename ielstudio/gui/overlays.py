"""What the canvas draws, as arrays: class colours and lookup tables, the difference
between the current mask and the proposal, proposal outlines, the displayed image.
Pure numpy (no widgets), so the pictures can be tested pixel by pixel."""

from __future__ import annotations

import numpy as np

# class colours (index 0 = background, transparent); clear on gray images
CLASS_COLORS = [
    (0, 0, 0),
    (0, 190, 255),
    (255, 170, 0),
    (190, 90, 255),
    (255, 230, 40),
    (0, 220, 170),
    (255, 100, 170),
    (140, 200, 60),
    (120, 140, 255),
]
ADDED_COLOR = (40, 230, 60)  # pixels the proposal adds
REMOVED_COLOR = (255, 40, 40)  # pixels the proposal removes
RELABELLED_COLOR = (255, 0, 230)  # pixels the proposal gives another foreground class

def class_color(c: int) -> tuple[int, int, int]:
    if c < len(CLASS_COLORS):
        return CLASS_COLORS[c]
    rng = np.random.default_rng(c)  # stable extra colours for many classes
    return tuple(int(v) for v in rng.integers(60, 256, 3))


def class_lut() -> np.ndarray:
    """(256,4) uint8 RGBA table: class index -> colour, background transparent."""
    lut = np.zeros((256, 4), np.uint8)
    for c in range(1, 256):
        lut[c, :3] = class_color(c)
        lut[c, 3] = 255
    return lut


def difference_lut() -> np.ndarray:
    lut = np.zeros((256, 4), np.uint8)
    lut[1] = (*ADDED_COLOR, 255)
    lut[2] = (*REMOVED_COLOR, 255)
    lut[3] = (*RELABELLED_COLOR, 255)
    return lut


def difference_map(current: np.ndarray, proposal: np.ndarray) -> np.ndarray:
    """uint8 (H,W) of what accepting the proposal would still change in the ``current`` mask:
    1 a foreground label added (was background), 2 one removed, 3 another foreground class."""
    d = np.zeros(current.shape, np.uint8)
    differs = current != proposal
    d[differs & (proposal != 0) & (current == 0)] = 1
    d[differs & (proposal == 0)] = 2
    d[differs & (proposal != 0) & (current != 0)] = 3
    return d


def outline(labels: np.ndarray) -> np.ndarray:
    """The 1 px inner outline of every labelled region (its class there, 0 elsewhere): the
    proposal is drawn as outlines so that it never looks like the filled current mask."""
    a = np.asarray(labels)
    pad = np.pad(a, 1, mode="constant", constant_values=-1)
    edge = ((pad[1:-1, 1:-1] != pad[:-2, 1:-1]) | (pad[1:-1, 1:-1] != pad[2:, 1:-1])
            | (pad[1:-1, 1:-1] != pad[1:-1, :-2]) | (pad[1:-1, 1:-1] != pad[1:-1, 2:]))
    return np.where(edge & (a != 0), a, 0)


def display_image(image: np.ndarray) -> np.ndarray:
    """(C,H,W) / (H,W) normalised float image -> (H,W) or (H,W,3) float32 for display."""
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        if a.shape[0] == 1:
            a = a[0]
        elif a.shape[0] == 3:
            a = np.moveaxis(a, 0, -1)
        else:
            a = a[0]
    return np.ascontiguousarray(a)
