"""Cleaning: proposals, post-processing, label-quality scores and change counts, with exact pixel numbers."""

import numpy as np
import pytest

import cv2

from ielstudio.core.cleaning import CleanConfig, change_summary, keep_given_edges, label_quality, postprocess, propose

NO_POST = CleanConfig(min_area=0, fill_holes=False, edge_tolerance=0)


def one_hot_probs(mask, n_classes, p=0.95):
    """Probabilities that put `p` on `mask`'s class and share the rest."""
    probs = np.full((n_classes,) + mask.shape, (1 - p) / (n_classes - 1), np.float32)
    for c in range(n_classes):
        probs[c][mask == c] = p
    return probs


def test_speck_below_min_area_is_removed_and_object_kept():
    m = np.zeros((20, 20), np.int64)
    m[2:7, 2:7] = 1  # 25 px object
    m[15, 10:15] = 1  # 5 px speck
    out = postprocess(m, CleanConfig(min_area=10, fill_holes=False))
    assert out[15, 10:15].tolist() == [0] * 5
    assert int((out == 1).sum()) == 25
    # min_area 5 keeps the 5 px speck (strictly smaller objects go)
    assert int((postprocess(m, CleanConfig(min_area=5, fill_holes=False)) == 1).sum()) == 30


def test_speck_takes_the_class_around_it():
    m = np.zeros((20, 20), np.int64)
    m[2:18, 2:18] = 1
    m[9:11, 9:11] = 2  # 4 px of class 2 inside class 1
    out = postprocess(m, CleanConfig(min_area=10, fill_holes=False))
    assert int((out == 2).sum()) == 0
    assert int((out == 1).sum()) == 256


def test_hole_filled_but_open_bay_kept():
    m = np.zeros((20, 20), np.int64)
    m[2:12, 2:12] = 1
    m[5:8, 5:8] = 0  # 9 px enclosed hole
    m[0:10, 15:18] = 1
    m[0:3, 16] = 0  # notch open to the image border: not a hole
    out = postprocess(m, CleanConfig(min_area=0, fill_holes=True))
    assert int((out == 1).sum()) == int((m == 1).sum()) + 9
    assert out[5:8, 5:8].min() == 1
    assert out[0:3, 16].tolist() == [0, 0, 0]


def test_hole_fill_never_overwrites_another_class():
    m = np.zeros((12, 12), np.int64)
    m[1:11, 1:11] = 1
    m[4:8, 4:8] = 0
    m[5:7, 5:7] = 2  # class-2 core inside a background ring inside class 1
    out = postprocess(m, CleanConfig(min_area=0, fill_holes=True))
    assert int((out == 2).sum()) == 4
    assert int((out == 1).sum()) == 100 - 4


def test_convex_hull_of_l_shape_is_its_triangle():
    m = np.zeros((10, 10), np.int64)
    m[2:7, 2] = 1  # vertical bar, 5 px
    m[6, 2:7] = 1  # bottom bar, 5 px (one shared) -> L of 9 px
    assert int((m == 1).sum()) == 9
    out = postprocess(m, CleanConfig(min_area=0, fill_holes=False, convex_hull_classes=(1,)))
    # hull = triangle with corners (2,2), (6,2), (6,6): rows 2..6 hold 1..5 px -> 15
    assert int((out == 1).sum()) == 15
    rr, cc = np.nonzero(out == 1)
    assert np.all(rr - 2 >= cc - 2)  # on or below the diagonal
    # classes not marked convex stay as they are
    assert int((postprocess(m, CleanConfig(min_area=0, fill_holes=False)) == 1).sum()) == 9


def test_propose_is_argmax_then_postprocess():
    target = np.zeros((16, 16), np.int64)
    target[3:10, 3:10] = 1
    probs = one_hot_probs(target, 2)
    probs[:, 14, 14] = [0.2, 0.8]  # single-pixel speck in the model's output
    given = np.zeros_like(target)
    assert int((propose(probs, given, NO_POST) == 1).sum()) == 49 + 1
    assert np.array_equal(propose(probs, given, CleanConfig(min_area=4)), target)


def test_confident_only_keeps_label_where_model_is_unsure():
    given = np.zeros((8, 8), np.int64)
    given[0:4] = 1
    probs = np.zeros((2, 8, 8), np.float32)
    probs[1] = 0.2  # model says background everywhere ...
    probs[1, 0:2] = 0.93  # ... except confident foreground on rows 0-1 (agrees with label)
    probs[1, 2] = 0.35  # row 2: disagrees, p(background) = 0.65 < 0.9 -> keep label 1
    probs[1, 3] = 0.05  # row 3: disagrees confidently (0.95) -> background
    probs[1, 6] = 0.95  # row 6: label 0, confident foreground -> 1
    probs[0] = 1 - probs[1]
    cfg = CleanConfig(min_area=0, fill_holes=False, confident_only=True, threshold=0.9, edge_tolerance=0)
    out = propose(probs, given, cfg)
    assert out[0:3].min() == 1 and out[3].max() == 0 and out[6].min() == 1
    assert int(out.sum()) == 8 * 4
    # plain argmax takes row 2 away as well
    assert int(propose(probs, given, NO_POST).sum()) == 8 * 3


def disc(radius, size=40, center=(20, 20)):
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, center, radius, 1, -1)
    return m.astype(np.int64)


def square(size=40, lo=10, hi=30, cls=1):
    m = np.zeros((size, size), np.int64)
    m[lo:hi, lo:hi] = cls
    return m


def test_edge_tolerance_keeps_short_stretches_of_the_given_outline():
    given = square()
    bump = given.copy()
    bump[9, 12:17] = 1  # the model draws 5 px of the top edge 1 px higher
    dent = given.copy()
    dent[10, 12:17] = 0  # ... or 1 px lower
    for proposal in (bump, dent):
        probs = one_hot_probs(proposal, 2)
        assert np.array_equal(propose(probs, given, CleanConfig(min_area=0, fill_holes=False)), given)
        assert np.array_equal(propose(probs, given, NO_POST), proposal)  # tolerance 0: applied
    # longer than 8 px per px of tolerance: a misdrawn stretch of outline, corrected
    long = given.copy()
    long[9, 12:21] = 1
    assert int((long != given).sum()) == 9
    assert np.array_equal(keep_given_edges(long, given, 1), long)
    assert np.array_equal(keep_given_edges(long, given, 2), given)
    # the whole outline 1 px out (an annotator who draws every object too wide): corrected
    grown = square(lo=9, hi=31)
    assert np.array_equal(keep_given_edges(grown, given, 1), grown)
    # 2 px deep: farther than tolerance 1 from the inside -> applied; tolerance 2 keeps it
    deep = given.copy()
    deep[8:10, 12:16] = 1
    assert np.array_equal(keep_given_edges(deep, given, 1), deep)
    assert np.array_equal(keep_given_edges(deep, given, 2), given)


def test_edge_tolerance_never_undoes_real_corrections():
    truth = disc(10)
    speck = truth.copy()
    speck[2:4, 2:4] = 1  # a 2x2 speck: all its pixels are within 1 px of its own edge
    hole = truth.copy()
    hole[20, 20] = 0  # a 1-px hole
    notch = truth.copy()
    notch[20, 22:31] = 0  # a 1-px wide crack, 9 px deep from the right edge
    block = truth.copy()
    block[8:16, 14:22] = 0  # a block of background over the top of the disc
    for given, changed in ((speck, 4), (hole, 1), (notch, 9), (block, int((block != truth).sum()))):
        out = keep_given_edges(truth, given, 1)
        assert np.array_equal(out, truth)
        assert int((out != given).sum()) == changed
    # a 1-px bump on the outline is a moved edge: left as annotated
    bump = truth.copy()
    bump[9, 20] = 1
    assert int((bump != truth).sum()) == 1
    assert np.array_equal(keep_given_edges(truth, bump, 1), bump)


def test_edge_tolerance_between_two_foreground_classes():
    given = square(cls=2)
    given[15:25, 15:25] = 1  # class 1 core inside a class 2 body
    proposal = given.copy()
    proposal[14, 17:21] = 1  # the model draws 4 px of the core's edge 1 px out
    assert np.array_equal(keep_given_edges(proposal, given, 1), given)
    proposal[12:14, 15:25] = 1  # 3 px out over its whole width: a real change
    assert np.array_equal(keep_given_edges(proposal, given, 1), proposal)


def test_label_quality_ranks_the_corrupted_label_lower():
    target = np.zeros((32, 32), np.int64)
    target[5:20, 5:20] = 1
    target[22:30, 22:30] = 2
    probs = one_hot_probs(target, 3, p=0.9)
    good_score, good_doubt = label_quality(probs, target)
    bad = target.copy()
    bad[5:20, 5:12] = 0  # half of an object missing
    bad_score, bad_doubt = label_quality(probs, bad)
    assert good_score == pytest.approx(0.9 * 1.0 + 0.1 * 0.9, abs=1e-6)
    assert bad_score < good_score
    # bad: Dice class 1 = 2*120/(120+225), class 2 = 1; p(given) = 0.9 on 184 + 0.05 on 105 of 289
    exp = 0.9 * (2 * 120 / 345 + 1) / 2 + 0.1 * (0.9 * 184 + 0.05 * 105) / 289
    assert bad_score == pytest.approx(exp, abs=1e-5)
    assert good_doubt.shape == (32, 32)
    assert good_doubt.max() == pytest.approx(0.1, abs=1e-6)
    assert bad_doubt[10, 8] == pytest.approx(0.95, abs=1e-6)  # p(background) there is 0.05
    assert 0.0 <= bad_score <= 1.0


def test_label_quality_empty_image_uses_mean_confidence():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0] = 0.8
    probs[1] = 0.2
    score, doubt = label_quality(probs, np.zeros((4, 4), np.int64))
    assert score == pytest.approx(0.8)
    assert np.allclose(doubt, 0.2)


def test_change_summary_counts_exactly():
    before = np.zeros((10, 10), np.int64)
    before[0:4, 0:4] = 1  # 16 px of 1
    after = before.copy()
    after[0, 0:4] = 0  # 4 px 1 -> 0
    after[8:10, 8:10] = 2  # 4 px 0 -> 2
    after[3, 0] = 2  # 1 px 1 -> 2
    s = change_summary(before, after, 3)
    assert s["added"] == [4, 0, 5]
    assert s["removed"] == [4, 5, 0]
    assert s["changed_pixels"] == 9
    assert s["changed_fraction"] == pytest.approx(0.09)


def test_clean_config_round_trip_and_validation():
    cfg = CleanConfig(min_area=7, fill_holes=False, convex_hull_classes=[1, 2], confident_only=True, threshold=0.8)
    d = cfg.to_dict()
    assert d["convex_hull_classes"] == [1, 2]
    assert CleanConfig.from_dict(d) == cfg
    with pytest.raises(ValueError):
        CleanConfig(threshold=0.0)
    with pytest.raises(ValueError):
        CleanConfig(min_area=-1)
    with pytest.raises(ValueError):
        CleanConfig(edge_tolerance=-1)


def test_label_quality_breaks_ties_by_confidence():
    target = np.zeros((16, 16), np.int64)
    target[4:12, 4:12] = 1
    sure, unsure = one_hot_probs(target, 2, p=0.99), one_hot_probs(target, 2, p=0.6)
    s_sure, _ = label_quality(sure, target)
    s_unsure, _ = label_quality(unsure, target)
    assert s_sure == pytest.approx(0.9 + 0.1 * 0.99, abs=1e-6)
    assert s_unsure == pytest.approx(0.9 + 0.1 * 0.6, abs=1e-6)


# ----------------------------------------------------------------------------- the clean-a-folder job

def _colour_dataset(root, n=4, size=40):
    """RGB masks with two foreground colours (red = class 1, green = class 2) and gray images."""
    import cv2

    rng = np.random.default_rng(3)
    images, masks = root / "img", root / "lab"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        m = np.zeros((size, size, 3), np.uint8)  # RGB
        cv2.circle(m, (12, 12), 6, (255, 0, 0), -1)
        cv2.rectangle(m, (22, 22), (34, 34), (0, 255, 0), -1)
        img = (m.sum(2) / 3 + rng.normal(0, 10, (size, size))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"p{i}.png"), img)
        cv2.imwrite(str(masks / f"p{i}_mask.png"), m[..., ::-1])  # cv2 writes BGR
    return images, masks


TINY = dict(max_steps=2, min_steps=0, crop=32, batch_size=2, width=4, depth=2, device="cpu")


def test_clean_dataset_keeps_colour_convention_and_event_order(tmp_path):
    import cv2

    from ielstudio.core import cleaning
    from ielstudio.core.training import DoneEvent, StepEvent, TrainConfig

    images, masks = _colour_dataset(tmp_path)
    out = tmp_path / "out"
    events = list(cleaning.clean_dataset(images, masks, out, TrainConfig(**TINY),
                                         CleanConfig(min_area=0, adaptive_threshold=False)))
    assert isinstance(events[0], cleaning.LoadedEvent) and events[0].n_classes == 3 and events[0].n_samples == 4
    assert isinstance(events[1], cleaning.ModelEvent) and events[1].n_parameters > 0
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2]
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("DoneEvent") < kinds.index("PredictEvent")
    assert kinds.count("PredictEvent") == 4 and isinstance(events[-1], cleaning.CleanDone)
    report = events[-1].report
    assert report["mask_encoding"]["kind"] == "color"
    assert report["mask_encoding"]["colors"] == [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
    # argmax decisions asked for: the training budget judged held-out pixels the same way
    assert report["settings"]["clean"]["adaptive_threshold"] is False
    assert report["settings"]["train"]["adaptive_threshold"] is False
    assert isinstance(report["warnings"], list)
    palette = {(0, 0, 0), (0, 255, 0), (255, 0, 0)}
    for i in range(4):
        rgb = cv2.imread(str(out / f"p{i}_mask.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert {tuple(c) for c in rgb.reshape(-1, 3).tolist()} <= palette
    assert len(report["images"][0]["added"]) == 3
    assert events[-1].report_path == out / cleaning.REPORT_NAME and events[-1].report_path.is_file()
    assert not any(isinstance(e, DoneEvent) and e.reason == "cancelled" for e in events)


def test_clean_dataset_cancel_writes_nothing(tmp_path):
    from ielstudio.core import cleaning
    from ielstudio.core.training import TrainConfig

    images, masks = _colour_dataset(tmp_path)
    out = tmp_path / "out"
    events = list(cleaning.clean_dataset(images, masks, out, TrainConfig(**TINY), cancel=lambda: True))
    assert not any(isinstance(e, cleaning.CleanDone) for e in events)
    assert list(out.iterdir()) == []


def test_clean_dataset_cancel_after_training_writes_nothing(tmp_path, monkeypatch):
    """Cancelled once training is done: not one image is predicted (not even to set the
    decision thresholds), no mask, no report."""
    from ielstudio.core import cleaning
    from ielstudio.core.training import DoneEvent, TrainConfig

    predicted = []
    real_predict = cleaning.predict
    monkeypatch.setattr(cleaning, "predict", lambda *a, **k: predicted.append(1) or real_predict(*a, **k))
    images, masks = _colour_dataset(tmp_path)
    out = tmp_path / "out"
    trained = []
    events = []
    for e in cleaning.clean_dataset(images, masks, out, TrainConfig(**TINY), cancel=lambda: bool(trained)):
        events.append(e)
        if isinstance(e, DoneEvent):
            trained.append(True)
    assert trained and predicted == []
    assert not any(isinstance(e, (cleaning.CleanDone, cleaning.PredictEvent)) for e in events)
    assert list(out.iterdir()) == []


def test_outputs_never_go_into_the_masks_folder(tmp_path):
    from ielstudio.core import cleaning
    from ielstudio.core.errors import DataError

    images, masks = tmp_path / "i", tmp_path / "m"
    with pytest.raises(DataError, match="masks folder"):
        cleaning.check_out_dir(masks, images, masks)
    with pytest.raises(DataError, match="masks folder"):
        cleaning.check_out_dir(masks / "cleaned", images, masks)
    with pytest.raises(DataError, match="images folder"):
        cleaning.check_out_dir(images, images, masks)
    assert cleaning.check_out_dir(tmp_path / "o", images, masks) == (tmp_path / "o").resolve()
    with pytest.raises(DataError, match="report"):
        list(cleaning.clean_dataset(images, masks, tmp_path / "o", report_path=masks / "r.json"))


def test_a_class_the_model_did_not_learn_is_named():
    from ielstudio.core.cleaning import LOST_CLASS_SHARE, lost_class_warnings

    labelled = np.array([9000, 800, 300])
    assert lost_class_warnings(labelled, np.array([9100, 690, 310])) == []  # both kept (86 %, 103 %)
    warnings = lost_class_warnings(labelled, np.array([9400, 870, 29]))  # the core: 29 of 300 px left
    assert len(warnings) == 1 and warnings[0].startswith("class 2: the given masks mark 300 pixels")
    assert "only 29 (10%)" in warnings[0] and "more epochs" in warnings[0]
    edge = int(LOST_CLASS_SHARE * 300)  # exactly the share is still kept
    assert lost_class_warnings(labelled, np.array([9000, 800, edge])) == []
    assert lost_class_warnings(np.array([100, 0]), np.array([100, 0])) == []  # an unlabelled class: nothing to lose
