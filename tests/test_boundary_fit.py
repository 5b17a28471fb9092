"""Where the outline sits in the image (`core.boundary_fit`): an outline on the object's
edge fits (Dice 1); one drawn too wide, too narrow or shifted is matched to the edge,
and its Dice with it estimates the outline's true Dice."""

import numpy as np
import pytest

from ielstudio.core.boundary_fit import (MAX_OFFSET, MAX_SHIFT, best_fitting_outline, candidate_contrasts,
                                        outline_fit_dice)
from ielstudio.core.metrics import dice


def disk(shape=(64, 64), centre=(32, 30), radius=12):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)


def scan(obj, noise=8.0, seed=0):
    """A bright object (120) on a darker background (60) with Gaussian noise."""
    rng = np.random.default_rng(seed)
    return (60.0 + 60.0 * obj + rng.normal(0, noise, obj.shape)).astype(np.float32)


def test_the_objects_own_outline_fits():
    obj = disk()
    image = scan(obj)
    np.testing.assert_array_equal(best_fitting_outline(image, obj), obj.astype(bool))
    assert outline_fit_dice(image, obj) == 1.0


def test_every_candidate_is_scored_the_given_outline_first():
    obj = disk()
    image = scan(obj)
    contrasts = candidate_contrasts(image, disk(radius=14))
    moves = [m for m, _ in contrasts]
    assert moves[0] == (0, 0, 0) and len(moves) == len(set(moves)) == (2 * MAX_OFFSET + 1) * (2 * MAX_SHIFT + 1) ** 2
    best = max(contrasts, key=lambda c: c[1])[0]
    assert best == (-2, 0, 0)  # 2 px too wide: shrunk by 2, not moved
    assert candidate_contrasts(image, np.zeros_like(obj)) == []


@pytest.mark.parametrize("given", ["wide", "narrow", "shifted"])
def test_a_misplaced_outline_is_matched_to_the_edge_and_scored_near_its_true_dice(given):
    obj = disk()
    image = scan(obj)
    mask = {"wide": disk(radius=14), "narrow": disk(radius=10), "shifted": np.roll(obj, 1, axis=1)}[given]
    fit = best_fitting_outline(image, mask)
    assert dice(fit.astype(np.uint8), obj, 2) > 0.97  # the outline found is the object's
    true = dice(mask, obj, 2)
    assert true < 0.97
    assert outline_fit_dice(image, mask) == pytest.approx(true, abs=0.03)


def test_the_same_misplacement_costs_a_small_object_more_as_its_dice_does():
    small, large = disk(radius=5), disk(radius=20)
    fits = [outline_fit_dice(scan(obj), disk(radius=r + 2)) for obj, r in ((small, 5), (large, 20))]
    truths = [dice(disk(radius=r + 2), obj, 2) for obj, r in ((small, 5), (large, 20))]
    assert fits[0] < fits[1] - 0.1 and truths[0] < truths[1] - 0.1
    assert fits == pytest.approx(truths, abs=0.06)  # a disk shrunk by a 2 px disk is not quite the smaller disk


def test_it_judges_where_the_outline_sits_not_what_it_encloses():
    """A spurious blob moves with every candidate outline, so the object's outline still
    decides: blobs are for the shape prior and rule 3, not for this fit."""
    obj = disk()
    image = scan(obj)
    blob = obj.copy()
    blob[4:12, 50:58] = 1  # labelled, but the image shows nothing there
    assert outline_fit_dice(image, blob) == 1.0
    wide = disk(radius=14)
    wide[4:12, 50:58] = 1
    assert outline_fit_dice(image, wide) < 0.9


def test_invariant_to_contrast_and_brightness_and_channels_are_averaged():
    obj = disk()
    image = scan(obj)
    mask = disk(radius=14)
    fit = best_fitting_outline(image, mask)
    np.testing.assert_array_equal(best_fitting_outline(3.0 * image - 500.0, mask), fit)
    np.testing.assert_array_equal(best_fitting_outline(-image, mask), fit)  # a dark object fits as a bright one
    np.testing.assert_array_equal(best_fitting_outline(np.stack([image, image + 10, image - 10]), mask), fit)
    labels = mask * 2  # any foreground class counts: the foreground as one
    assert outline_fit_dice(image, labels) == outline_fit_dice(image, mask)


def test_nothing_to_judge_is_a_perfect_fit():
    obj = disk()
    assert outline_fit_dice(np.full(obj.shape, 7.0, np.float32), disk(radius=14)) == 1.0  # a flat image says nothing
    assert outline_fit_dice(scan(obj), np.zeros_like(obj)) == 1.0  # nothing labelled
    assert outline_fit_dice(scan(obj), np.ones_like(obj)) == 1.0  # everything labelled: no outline
    with pytest.raises(ValueError):
        outline_fit_dice(scan(obj), np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError):
        outline_fit_dice(np.zeros((32, 32), np.float32), obj)


def test_an_object_at_the_image_border_and_a_crop_give_the_same_fit():
    obj = disk(centre=(5, 30), radius=12)  # cut by the top edge
    image = scan(obj)
    assert outline_fit_dice(image, obj) == 1.0
    shifted = np.zeros_like(obj)
    shifted[:-1] = obj[1:]  # moved up by one: the part above the edge is lost
    fit = best_fitting_outline(image, shifted).astype(np.uint8)
    assert dice(fit, obj, 2) > dice(shifted, obj, 2) + 0.01  # moved back down; the row lost at the edge stays lost
    # the fit is computed on a crop around the mask: padding the image far away changes nothing
    mask = disk(radius=14)
    image = scan(disk())
    big = np.pad(image, 40, mode="reflect"), np.pad(mask, 40)
    assert outline_fit_dice(*big) == outline_fit_dice(image, mask)
    assert (MAX_OFFSET, MAX_SHIFT) == (2, 1)
