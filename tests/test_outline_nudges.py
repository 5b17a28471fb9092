"""Rule 2's per-object view of outline moves (core.review.objects_moved_enough): the
moves of an object's outline are applied only when, together, they change the object
by at least OUTLINE_MIN_CHANGE; a nudge of a few pixels along part of an outline is
within what a model's and an expert's edges differ by."""

import numpy as np
import pytest

from drawn import disk as drawn_disk
from drawn import probs_of
from ielstudio.core.metrics import dice
from ielstudio.core.review import OUTLINE_MIN_CHANGE, gate_changes, objects_moved_enough


def disk(shape, centre, radius) -> np.ndarray:
    return drawn_disk(shape, centre, radius, np.int64)


def change_of(given: np.ndarray, moved: np.ndarray) -> float:
    return 1 - dice(given, moved, 2)


def nudged(rows: int):
    """(given, proposal): a disk of radius 12 with a sliver 1 px wide and `rows` px long
    shaved off its right side (0.1-0.2 px of its ~450)."""
    given = disk((64, 64), (32, 32), 12)
    proposal = given.copy()
    for y in range(32 - rows // 2, 32 - rows // 2 + rows):
        x = np.flatnonzero(given[y])[-1]  # the outline's last pixel on that row
        proposal[y, x] = 0
    return given, proposal


def test_a_nudge_along_part_of_an_outline_is_set_back_and_a_whole_new_outline_is_kept():
    given, proposal = nudged(9)
    share = change_of(given, proposal)
    assert 0 < share < OUTLINE_MIN_CHANGE  # 9 of ~450 px: about 1 %
    np.testing.assert_array_equal(objects_moved_enough(proposal, given), given)
    # the threshold decides: just under the object's change, the nudge stays
    np.testing.assert_array_equal(objects_moved_enough(proposal, given, min_change=share - 1e-6), proposal)
    np.testing.assert_array_equal(objects_moved_enough(proposal, given, min_change=share + 1e-6), given)
    # drawn 2 px too wide all round: the model's outline changes the object by ~15 %, kept
    wide = disk((64, 64), (32, 32), 14)
    assert change_of(given, wide) >= OUTLINE_MIN_CHANGE
    np.testing.assert_array_equal(objects_moved_enough(given, wide), given)


def test_the_moves_of_one_object_count_together():
    """Two short slivers, each too small alone, kept when the object changes enough in all."""
    given = disk((64, 64), (32, 32), 4)  # ~49 px: a sliver of 3 px on either side is ~3 % each
    proposal = given.copy()
    for y in (31, 32, 33):
        xs = np.flatnonzero(given[y])
        proposal[y, xs[0]] = proposal[y, xs[-1]] = 0
    left_only = proposal.copy()
    left_only[31:34, 32:] = given[31:34, 32:]
    assert change_of(given, left_only) < OUTLINE_MIN_CHANGE <= change_of(given, proposal)
    np.testing.assert_array_equal(objects_moved_enough(proposal, given), proposal)
    np.testing.assert_array_equal(objects_moved_enough(left_only, given), given)


def test_objects_are_judged_each_on_its_own():
    """The big object's nudge is under the share; the small one's equal nudge is over it."""
    given = disk((64, 96), (24, 32), 14)  # centre (x, y)
    given[30:35, 70:75] = 1  # a 5 x 5 px object
    proposal = given.copy()
    for x0 in (24, 72):  # the same 5 px shaved off the top of each
        top = np.flatnonzero(given[:, x0])[0]
        proposal[top, x0 - 2:x0 + 3] = 0
    left, right = (slice(None), slice(0, 48)), (slice(None), slice(48, None))
    assert change_of(given[left], proposal[left]) < OUTLINE_MIN_CHANGE <= change_of(given[right], proposal[right])
    out = objects_moved_enough(proposal, given)
    np.testing.assert_array_equal(out[:, :48], given[:, :48])
    np.testing.assert_array_equal(out[:, 48:], proposal[:, 48:])


def test_specks_holes_and_whole_objects_are_not_outline_moves():
    given = disk((64, 64), (24, 24), 10)
    given[50:53, 50:53] = 1  # a speck, removed
    given[24, 24] = 0  # a one-pixel hole, filled
    proposal = disk((64, 64), (24, 24), 10)
    proposal[5:8, 50:53] = 1  # a small object added, touching nothing of its class
    np.testing.assert_array_equal(objects_moved_enough(proposal, given), proposal)


def test_a_nudge_between_two_classes_counts_for_both_objects():
    """A 3 px sliver of class 1 handed to class 2: small for the large 1, 5 % or more of the small 2."""
    given = disk((64, 64), (24, 32), 14)  # centre (x, y): its right edge at x = 38
    given[30:34, 39:43] = 2  # a small class-2 object (16 px) against it
    edge = [(y, np.flatnonzero(given[y] == 1)[-1]) for y in (31, 32, 33)]
    proposal = given.copy()
    for y, x in edge:
        proposal[y, x] = 2
    small_before = (given == 2)
    assert change_of(small_before.astype(int), (proposal == 2).astype(int)) >= OUTLINE_MIN_CHANGE
    np.testing.assert_array_equal(objects_moved_enough(proposal, given), proposal)
    # the small object grows enough: kept; with a share above its change, set back
    np.testing.assert_array_equal(objects_moved_enough(proposal, given, min_change=0.2), given)


def test_the_gate_sets_nudges_back_unless_told_not_to_and_works_on_volumes():
    given, proposal = nudged(9)
    probs = probs_of(np.where(proposal == 1, 0.95, 0.02))  # the model is sure of its outline
    np.testing.assert_array_equal(gate_changes(proposal, given, probs, [True, True]), given)
    np.testing.assert_array_equal(gate_changes(proposal, given, probs, [True, True], min_change=0), proposal)
    # a volume: the nudged slice set back, a slice grown 2 px all round kept
    wide = disk((64, 64), (32, 32), 14)
    vol_given = np.stack([given, np.zeros_like(given), given])
    vol_prop = np.stack([proposal, np.zeros_like(given), wide])
    out = objects_moved_enough(vol_prop, vol_given)
    np.testing.assert_array_equal(out, np.stack([given, np.zeros_like(given), wide]))


@pytest.mark.parametrize("min_change", [0.0, -1.0])
def test_zero_keeps_every_move(min_change):
    given, proposal = nudged(3)
    np.testing.assert_array_equal(objects_moved_enough(proposal, given, min_change=min_change), proposal)
