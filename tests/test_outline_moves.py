"""Rule 2's image check (core.review.image_backs_outline_moves): an outline the model
moves by a pixel or two stays as drawn unless the image shows the edge where the model
put it; a model's edges are no more exact than an expert's."""

import numpy as np
import pytest

from drawn import disk as drawn_disk
from drawn import probs_of
from ielstudio.core.review import (
    ADD_IMAGE_MARGIN,
    ADD_THICKNESS,
    gate_changes,
    image_backs_outline_moves,
)


def disk(shape, centre, radius) -> np.ndarray:
    """Class indices (int64), as masks are read."""
    return drawn_disk(shape, centre, radius, np.int64)


def ring_case(ring_value: float):
    """(given, proposal, image): a lesion of radius 12 (0.9 on 0.1); the model grows its
    outline by 2 px, a ring whose pixels the image shows at `ring_value`."""
    given = disk((64, 64), (30, 30), 12)
    proposal = disk((64, 64), (30, 30), 14)
    image = np.where(given == 1, 0.9, 0.1).astype(np.float32)
    image[(proposal == 1) & (given == 0)] = ring_value
    return given, proposal, image[None]


@pytest.mark.parametrize("ring_value, kept", [
    (0.9, True),  # the image shows the ring as lesion: the outline was drawn too tight
    (0.1, False),  # as background: the model's edge is wrong
    (0.1 + 0.8 * (0.5 + ADD_IMAGE_MARGIN + 0.02), True),
    (0.1 + 0.8 * (0.5 + ADD_IMAGE_MARGIN - 0.02), False),  # halfway is no evidence: past it by the margin
    (0.5, False),
    (float("nan"), False),  # no evidence (the loader sets NaN to 0; this rule does not rely on it)
])
def test_an_outline_grown_by_two_px_is_kept_only_where_the_image_shows_the_edge_there(ring_value, kept):
    given, proposal, image = ring_case(ring_value)
    out = image_backs_outline_moves(proposal, given, image)
    np.testing.assert_array_equal(out, proposal if kept else given)


def test_a_shrunk_outline_is_judged_the_other_way_round():
    """Shrinking moves pixels to background: the ring must look like the background."""
    given = disk((64, 64), (30, 30), 14)
    proposal = disk((64, 64), (30, 30), 12)
    ring = (given == 1) & (proposal == 0)
    for ring_value, expected in ((0.1, proposal), (0.9, given)):
        image = np.where(proposal == 1, 0.9, 0.1).astype(np.float32)
        image[ring] = ring_value
        np.testing.assert_array_equal(image_backs_outline_moves(proposal, given, image[None]), expected)


def test_specks_holes_and_thick_regions_are_not_outline_moves():
    given = disk((64, 64), (24, 24), 10)
    given[50:53, 50:53] = 1  # a speck, removed by the proposal
    given[24, 24] = 0  # a one-pixel hole, filled
    proposal = disk((64, 64), (24, 24), 10)
    proposal[40:60, 5:20] = 1  # an object added, far thicker than ADD_THICKNESS
    flat = np.full((1, 64, 64), 0.5, np.float32)  # an image that backs nothing
    np.testing.assert_array_equal(image_backs_outline_moves(proposal, given, flat), proposal)
    assert ADD_THICKNESS <= 15


def test_two_moves_in_one_image_are_judged_each_on_its_own():
    """Left lesion: the image shows its wider outline; right lesion: it does not."""
    given = disk((64, 96), (24, 30), 10) | disk((64, 96), (72, 30), 10)
    proposal = disk((64, 96), (24, 30), 12) | disk((64, 96), (72, 30), 12)
    image = np.where(given == 1, 0.9, 0.1).astype(np.float32)
    left = (proposal == 1) & (given == 0) & (np.arange(96)[None, :] < 48)
    image[left] = 0.9
    out = image_backs_outline_moves(proposal, given, image[None])
    np.testing.assert_array_equal(out, np.where(left, 1, given))


def test_the_gate_applies_it_when_given_the_image_and_on_volumes():
    given, proposal, image = ring_case(0.1)
    probs = probs_of(np.where(proposal == 1, 0.95, 0.02))  # the model is sure of its wider outline
    np.testing.assert_array_equal(gate_changes(proposal, given, probs, [True, True]), proposal)
    np.testing.assert_array_equal(gate_changes(proposal, given, probs, [True, True], image=image), given)
    # a volume (D,H,W) with its image (C,D,H,W), its regions 26-connected: slice 0 as
    # above, slice 2 backed by its image, an empty slice between them
    g2, p2, i2 = ring_case(0.9)
    empty = np.zeros_like(given)
    vol_given, vol_prop = np.stack([given, empty, g2]), np.stack([proposal, empty, p2])
    vol_image = np.stack([image, np.zeros_like(image), i2], axis=1)
    out = image_backs_outline_moves(vol_prop, vol_given, vol_image)
    np.testing.assert_array_equal(out, np.stack([given, empty, p2]))
