"""Rule 3 of do no harm (core.review.remove_unsupported_objects): a given object the model
finds no trace of, in an image whose other objects it finds, is removed; nothing else is."""


import numpy as np

from drawn import disk, probs_of
from ielstudio.core.decision import decide
from ielstudio.core.review import (
    AGREEMENT_TOLERANCE,
    IMAGE_AGREEMENT,
    MIN_OBJECT_SIZE,
    NOT_RELIABLE,
    UNSUPPORTED_PROBABILITY,
    remove_unsupported_objects,
    tolerant_dice,
    with_object_changes,
)


def lesion_and_blob():
    """(given, truth): a lesion of radius 12 and a spurious blob of radius 4 drawn beside it."""
    lesion = disk((64, 64), (24, 30), 12)
    blob = disk((64, 64), (50, 12), 4)
    return (lesion | blob).astype(np.int64), lesion.astype(np.int64)



def test_a_blob_beside_a_lesion_the_model_finds_is_removed_exactly():
    given, truth = lesion_and_blob()
    p = np.where(truth == 1, 0.9, 0.01)
    out, removed = remove_unsupported_objects(given, given, probs_of(p))
    assert removed == 1 and np.array_equal(out, truth)


def test_the_model_must_read_the_rest_of_the_image_right():
    given, truth = lesion_and_blob()
    # the model finds nothing at all: no evidence about this image, nothing removed
    out, removed = remove_unsupported_objects(given, given, probs_of(np.full((64, 64), 0.01)))
    assert removed == 0 and np.array_equal(out, given)
    # it finds the lesion but also a large object the mask does not have: tolerant Dice of the
    # rest 2 * 441 / (441 + 441 + 900) ~ 0.49 < IMAGE_AGREEMENT
    p = np.where(truth == 1, 0.9, 0.01)
    p[34:64, 34:64] = 0.9
    assert tolerant_dice(decide(probs_of(p)) == 1, truth == 1) < IMAGE_AGREEMENT
    out, removed = remove_unsupported_objects(given, given, probs_of(p))
    assert removed == 0 and np.array_equal(out, given)


def test_an_object_with_any_trace_or_the_only_object_is_kept():
    given, truth = lesion_and_blob()
    p = np.where(truth == 1, 0.9, 0.01)
    blob = (given == 1) & (truth == 0)
    # one pixel of the blob decided foreground: a trace, kept
    y, x = np.argwhere(blob)[0]
    q = p.copy()
    q[y, x] = 0.6
    assert remove_unsupported_objects(given, given, probs_of(q))[1] == 0
    # mean probability just above the bar, decision background everywhere: kept; just below: removed
    for level, removed in ((UNSUPPORTED_PROBABILITY + 0.01, 0), (UNSUPPORTED_PROBABILITY - 0.01, 1)):
        q = np.where(blob, level, p)
        assert remove_unsupported_objects(given, given, probs_of(q))[1] == removed
    # the only object of an image is never removed, however sure the model is
    only = truth.copy()
    assert remove_unsupported_objects(only, only, probs_of(np.full((64, 64), 0.0)))[1] == 0


def test_a_change_already_made_by_the_gate_is_left_alone():
    given, truth = lesion_and_blob()
    p = np.where(truth == 1, 0.9, 0.01)
    proposal = given.copy()
    proposal[given != truth] = 0  # the gate already took the blob out
    proposal[10:12, 10:12] = 1  # ... and added something elsewhere: kept as the gate left it
    out, removed = remove_unsupported_objects(proposal, given, probs_of(p))
    assert removed == 0 and np.array_equal(out, proposal)


def test_multi_class_only_background_decisions_remove_and_to_background():
    given = np.zeros((48, 48), np.int64)
    given[4:20, 4:20] = 1  # class 1, found by the model
    given[30:36, 4:10] = 1  # class 1 blob: no trace of it
    given[24:44, 24:44] = 2  # class 2, found by the model
    given[6:10, 30:34] = 2  # class 2 blob the model calls class 1: a relabel, not this rule's
    probs = np.zeros((3, 48, 48), np.float32)
    probs[0] = 1.0
    for c, (ys, xs) in ((1, (slice(4, 20), slice(4, 20))), (2, (slice(24, 44), slice(24, 44))),
                        (1, (slice(6, 10), slice(30, 34)))):
        probs[:, ys, xs] = 0.0
        probs[c, ys, xs] = 1.0
    out, removed = remove_unsupported_objects(given, given, probs)
    assert removed == 1
    expected = given.copy()
    expected[30:36, 4:10] = 0
    assert np.array_equal(out, expected)


def test_volumes_take_3d_objects():
    truth = np.zeros((5, 40, 40), np.int64)
    truth[:, 8:22, 8:22] = 1
    given = truth.copy()
    given[1:3, 30:34, 30:34] = 1  # one blob over two slices: one 3-D object
    p = np.where(truth == 1, 0.95, 0.0)
    probs = np.stack([1 - p, p]).astype(np.float32)
    out, removed = remove_unsupported_objects(given, given, probs)
    assert removed == 1 and np.array_equal(out, truth)
    # the decision thresholds weigh a volume's probabilities like a slice's
    th = np.array([0.5, 0.3])
    assert np.array_equal(decide(probs, th), np.stack([decide(probs[:, k], th) for k in range(5)]))


def test_tolerant_dice_ignores_outline_shifts_up_to_the_tolerance():
    a = disk((64, 64), (30, 30), 10)
    b = disk((64, 64), (32, 30), 10)  # shifted by 2 px
    assert tolerant_dice(a, b, 2) == 1.0
    plain = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert plain < tolerant_dice(a, b, 1) < 1.0
    assert tolerant_dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert tolerant_dice(a, np.zeros_like(a)) == 0.0
    assert AGREEMENT_TOLERANCE >= 2


def test_the_not_reliable_message_says_which_objects_were_removed():
    msgs = [f"{NOT_RELIABLE}: every mask is kept as given. The scores ...", "class 1: ..."]
    caveat = "The scores ..."
    assert with_object_changes(msgs, 0, caveat=caveat) == msgs
    changed = with_object_changes(msgs, 3, caveat=caveat)
    assert changed[0].startswith(NOT_RELIABLE) and "except 3 object(s)" in changed[0]
    assert "region(s)" not in changed[0] and changed[1:] == msgs[1:]
    both = with_object_changes(msgs, 3, 2, caveat=caveat)[0]
    assert "except 3 object(s)" in both and ", and 2 region(s) the masks left out" in both
    assert "except 1 region(s) the masks left out" in with_object_changes(msgs, 0, 1, caveat=caveat)[0]


def test_objects_smaller_than_a_speck_are_not_judged():
    given, truth = lesion_and_blob()
    given[2:4, 60:63] = 1  # 6 px, no trace of it in the model either
    p = np.where(truth == 1, 0.9, 0.01)
    out, removed = remove_unsupported_objects(given, given, probs_of(p))
    assert removed == 1 and out[2:4, 60:63].all() and MIN_OBJECT_SIZE > 6


def test_the_review_removes_the_blob_where_the_model_reads_the_image_and_says_so(drain, brightness_model):
    """A model that is not reliable for the class (it misses two of four lesions, which
    are dark) still removes a blob drawn beside a lesion it finds, and nothing else."""
    from ielstudio.core.cleaning import CleanConfig
    from ielstudio.core.dataset import Sample
    from ielstudio.core.imageio import MaskEncoding
    from ielstudio.core.review import review_samples

    enc = MaskEncoding.gray(2, 255)
    data = []
    for i in range(4):
        lesion = disk((64, 64), (24, 30), 12)
        given = (lesion | disk((64, 64), (50, 12), 4) | disk((64, 64), (8, 56), 4)).astype(np.int64)
        image = (lesion if i < 2 else np.zeros_like(lesion))[None].astype(np.float32)  # 2, 3: the model sees nothing
        data.append(Sample(f"img_{i}", image, given, enc))
    results, summary = drain(review_samples(brightness_model(), data, CleanConfig(), holdout=[s.name for s in data]))
    assert not summary.reliability.any_reliable
    by = {r.name: r for r in results}
    for i in (0, 1):
        assert by[f"img_{i}"].objects_removed == 2
        assert np.array_equal(by[f"img_{i}"].proposal, disk((64, 64), (24, 30), 12).astype(np.int64))
    for i in (2, 3):  # no evidence in these images: kept exactly
        assert by[f"img_{i}"].objects_removed == 0 and np.array_equal(by[f"img_{i}"].proposal, data[i].mask)
    assert summary.objects_removed == 4 and not summary.labels_kept_as_given
    assert summary.warnings[0].startswith(NOT_RELIABLE) and "except 4 object(s)" in summary.warnings[0]


def test_a_second_lesion_that_looks_like_the_first_is_kept_however_sure_the_model():
    """Given the image, rule 3 also asks it: the object must look like its unlabelled
    surroundings, not like the lesion the model finds. A missed satellite lesion (as bright
    as the main one) is kept; a blob drawn on the dark background is removed."""
    from ielstudio.core.review import looks_like_background

    lesion = disk((64, 64), (24, 30), 12)
    satellite = disk((64, 64), (50, 50), 4)
    blob = disk((64, 64), (50, 12), 4)
    image = np.full((1, 64, 64), 0.1, np.float32)
    image[0][lesion | satellite] = 0.9
    given = (lesion | satellite | blob).astype(np.int64)
    p = np.where(lesion, 0.9, 0.01)  # the model misses the satellite as it misses the blob
    assert looks_like_background(image, blob, lesion, given) and not looks_like_background(image, satellite, lesion,
                                                                                         given)
    out, removed = remove_unsupported_objects(given, given, probs_of(p), image=image)
    assert removed == 1 and np.array_equal(out, (lesion | satellite).astype(np.int64))
    # without the image only the model speaks: both go
    assert remove_unsupported_objects(given, given, probs_of(p))[1] == 2
    # volumes: (C,D,H,W) images, rings taken slice by slice
    vol = np.stack([given, given])
    out3, removed3 = remove_unsupported_objects(vol, vol, np.stack([probs_of(p)] * 2, axis=1),
                                                image=np.stack([image] * 2, axis=1))
    assert removed3 == 1 and np.array_equal(out3, np.stack([out, out]))


def test_a_blob_at_the_image_border_is_judged_on_the_ring_inside_the_image():
    lesion = disk((64, 64), (30, 30), 12)
    corner = disk((64, 64), (1, 1), 4)  # cut by the border
    image = np.where(lesion, 0.9, 0.1)[None].astype(np.float32)
    given = (lesion | corner).astype(np.int64)
    out, removed = remove_unsupported_objects(given, given, probs_of(np.where(lesion, 0.9, 0.01)), image=image)
    assert removed == 1 and np.array_equal(out, lesion.astype(np.int64))

