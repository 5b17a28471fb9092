"""Do no harm (core.review), the self-configured training recipe and the budget's plateau rule."""

import math

import cv2
import numpy as np
import pytest

from ielstudio.core import cleaning
from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.dataset import Sample
from ielstudio.core.decision import decision_thresholds
from ielstudio.core.iel import IELConfig
from ielstudio.core.imageio import MaskEncoding
from ielstudio.core.review import (
    CHANGE_CONFIDENCE,
    RELABEL_CONFIDENCE,
    RELIABLE_AGREEMENT,
    assess_reliability,
    gate_changes,
)
from ielstudio.core.patches import CropStream, patch_and_batch
from ielstudio.core.training import EvalEvent, TrainConfig, train

ENC = MaskEncoding.gray(2, 255)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (conftest)


def two_class_probs(p_object: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_object, p_object]).astype(np.float32)


def test_gate_applies_a_confident_change_and_keeps_an_unsure_one():
    given = np.zeros((20, 20), np.int64)
    given[2:8, 2:8] = 1
    proposal = given.copy()
    proposal[12:17, 12:17] = 1  # an object added ...
    proposal[2:8, 2:8] = 0  # ... and one removed
    p = np.full((20, 20), 0.02)
    p[12:17, 12:17] = 0.9  # sure of the added object
    p[2:8, 2:8] = 0.4  # unsure the labelled one is wrong: mean p(background) = 0.6 < CHANGE_CONFIDENCE
    out = gate_changes(proposal, given, two_class_probs(p), [True, True])
    assert out[12:17, 12:17].all() and out[2:8, 2:8].all()
    assert int(out.sum()) == 36 + 25
    # the whole change is reverted when the class is not reliable
    assert np.array_equal(gate_changes(proposal, given, two_class_probs(p), [True, False]), given)


def test_gate_threshold_is_the_mean_probability_of_the_region():
    given = np.zeros((10, 10), np.int64)
    proposal = given.copy()
    proposal[2:6, 2:6] = 1
    for p_in, kept in ((CHANGE_CONFIDENCE + 0.01, True), (CHANGE_CONFIDENCE - 0.01, False)):
        p = np.zeros((10, 10))
        p[2:6, 2:6] = p_in
        out = gate_changes(proposal, given, two_class_probs(p), [True, True])
        assert bool(out.any()) is kept


def test_moving_a_region_between_foreground_classes_needs_more_confidence():
    """Grey matter -> white matter (class 1 -> 2) needs RELABEL_CONFIDENCE; removing a
    region of the same confidence next to it needs only CHANGE_CONFIDENCE."""
    given = np.zeros((12, 20), np.int64)
    given[2:10, 2:10] = 1
    given[2:10, 12:18] = 1
    proposal = given.copy()
    proposal[2:10, 2:10] = 2  # relabelled
    proposal[2:10, 12:18] = 0  # removed
    for p_change, relabelled in ((RELABEL_CONFIDENCE + 0.01, True), (RELABEL_CONFIDENCE - 0.05, False)):
        probs = np.full((3, 12, 20), (1 - p_change) / 2, np.float32)
        probs[2][2:10, 2:10] = p_change
        probs[0][2:10, 12:18] = p_change
        probs[:, :, :2] = np.array([1, 0, 0], np.float32)[:, None, None]
        out = gate_changes(proposal, given, probs, [True, True, True])
        assert (out[2:10, 2:10] == (2 if relabelled else 1)).all()
        assert (out[2:10, 12:18] == 0).all()  # the removal is applied either way
    assert CHANGE_CONFIDENCE < RELABEL_CONFIDENCE


def test_reliability_per_class_from_held_out_agreement():
    truth = np.zeros((3, 16, 16), np.int64)
    truth[:, 2:10, 2:10] = 1
    truth[:, 11:15, 11:15] = 2
    probs = np.zeros((3, 3, 16, 16), np.float32)
    probs[:, 0] = 1.0
    probs[:, 0][truth == 1] = 0.0
    probs[:, 1][truth == 1] = 1.0  # class 1 found exactly; class 2 never
    rel = assess_reliability(list(zip(probs, truth)), 3, None, out_of_sample=True)
    assert rel.agreement[1] == pytest.approx(1.0) and rel.agreement[2] == pytest.approx(0.0)
    assert rel.reliable == [True, True, False] and rel.any_reliable
    assert len(rel.messages) == 1 and rel.messages[0].startswith("class 2:")
    none = assess_reliability(list(zip(probs[:, [0, 2, 1]], truth)), 3, None, out_of_sample=False)
    assert not none.any_reliable and none.messages[0].startswith("the model is not reliable for any class")
    assert RELIABLE_AGREEMENT > 0.5


def test_threshold_stays_at_half_for_a_confident_soft_edged_model():
    """A model of correct masks with soft edges: its histogram has a valley, but its objects
    sit near 1, so the argmax is right and the threshold must not drop (it fell to 0.38)."""
    yy, xx = np.mgrid[:64, :64]
    maps = []
    for cy, cx in ((20, 20), (40, 44)):
        r = np.hypot(yy - cy, xx - cx)
        p = 1 / (1 + np.exp((r - 10) / 1.5))  # interior ~1, a 3-4 px soft rim
        maps.append(two_class_probs(np.clip(p, 0.001, 0.999)))
    assert decision_thresholds(maps)[1] == 0.5
    # objects the model gives only 0.42 (labels that miss objects) still lower it
    low = [two_class_probs(np.where(m[1] > 0.5, 0.42, 0.03)) for m in maps]
    assert decision_thresholds(low)[1] < 0.45


def test_patch_and_batch_are_self_configured_from_the_images():
    def s(h, w):
        return Sample("x", np.zeros((1, h, w), np.float32), np.zeros((h, w), np.int64), ENC)

    assert patch_and_batch([s(192, 192)] * 3, TrainConfig()) == (192, 2)
    assert patch_and_batch([s(128, 100)] * 3, TrainConfig()) == (128, 4)
    assert patch_and_batch([s(1024, 1024)], TrainConfig()) == (256, 2)
    assert patch_and_batch([s(30, 30)], TrainConfig()) == (32, 8)
    assert patch_and_batch([s(192, 192)], TrainConfig(crop=64, batch_size=3)) == (64, 3)


def test_foreground_patches_show_a_tiny_class_in_a_third_of_the_patches():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        m = np.zeros((128, 128), np.int64)
        y, x = rng.integers(0, 124, 2)
        m[y:y + 4, x:x + 4] = 1  # 16 px: 0.1 % of the image
        samples.append(Sample(f"s{i}", rng.random((1, 128, 128), dtype=np.float32), m, ENC))
    shown = {}
    for share in (0.0, 0.33):
        stream = CropStream(samples, TrainConfig(foreground_crops=share), seed=1, crop=32, batch=8)
        hits = [bool((y == 1).any()) for _ in range(40) for y in stream.next()[1]]
        shown[share] = float(np.mean(hits))
    assert shown[0.0] < 0.15 and shown[0.33] > 0.25


def disks(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, cx = rng.integers(9, size - 9, 2)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 36).astype(np.int64)
        img = (np.where(m > 0, 0.8, 0.2) + 0.05 * rng.standard_normal((size, size))).astype(np.float32)
        out.append(Sample(f"d{i}", img[None], m, ENC))
    return out


def budget_run(**kw):
    cfg = TrainConfig(width=4, depth=2, crop=32, batch_size=2, max_steps=16, min_steps=0, eval_every=2, patience=1,
                      min_improvement=0.5, iel=IELConfig(heat_steps=2), device="cpu", **kw)
    events = list(train(disks(5), cfg))
    return events[-1], [e for e in events if isinstance(e, EvalEvent)]


def test_budget_does_not_stop_on_a_plateau_before_the_network_fitted_its_labels():
    """With an unreachable improvement (0.5) the budget would stop at its second evaluation;
    while the network agrees with its own training labels less than `learned_agreement`
    it goes on to max_steps."""
    stopped, _ = budget_run(learned_agreement=0.0)
    assert stopped.reason == "early-stop" and stopped.steps == 4
    kept_on, evals = budget_run(learned_agreement=1.0)
    assert kept_on.reason == "max-steps" and kept_on.steps == 16 and len(evals) == 8
    fitted = kept_on.history["train_agreement"]
    assert len(fitted) == 8 and all(0.0 <= f < 1.0 for f in fitted)


def write_set(folder, samples):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for s in samples:
        cv2.imwrite(str(folder / "images" / f"{s.name}.png"), (s.image[0] * 255).clip(0, 255).astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"{s.name}.png"), (s.mask * 255).astype(np.uint8))


def test_correct_labels_in_the_same_labels_out_when_the_model_is_not_reliable(tmp_path):
    """Two training steps learn nothing: the report says the model is not reliable and
    every written mask equals the given one, pixel for pixel."""
    data = disks(6)
    write_set(tmp_path, data)
    cfg = TrainConfig(width=4, depth=2, crop=32, batch_size=2, max_steps=2, min_steps=0, eval_every=1,
                      iel=IELConfig(heat_steps=2), device="cpu")
    events = list(cleaning.clean_dataset(tmp_path / "images", tmp_path / "masks", tmp_path / "out", cfg, CleanConfig()))
    report = events[-1].report
    assert report["labels_kept_as_given"] is True and report["reliability"]["out_of_sample"] is True
    assert report["warnings"][0].startswith("the model is not reliable for any class")
    for s in data:
        out = cv2.imread(str(tmp_path / "out" / f"{s.name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(out, (s.mask * 255).astype(np.uint8))
    held = {d["name"]: d["out_of_sample"] for d in report["images"]}
    assert sum(held.values()) == len(report["training"]["holdout"]) >= 1
    assert all(math.isfinite(d["score"]) for d in report["images"])


def test_fill_holes_fills_a_hole_in_a_blob_but_not_the_loop_of_a_vessel():
    blob = np.zeros((40, 40), np.uint8)
    cv2.circle(blob, (20, 20), 12, 1, -1)
    blob = blob.astype(np.int64)
    blob[18:22, 18:22] = 0  # a 4 px hole
    filled = cleaning.postprocess(blob, CleanConfig(min_area=0))
    assert filled[18:22, 18:22].all()
    vessels = np.zeros((60, 60), np.uint8)
    cv2.rectangle(vessels, (10, 10), (50, 50), 1, 2)  # a loop of 2 px vessels around 38 x 38 px of background
    cv2.line(vessels, (0, 30), (10, 30), 1, 2)
    out = cleaning.postprocess(vessels.astype(np.int64), CleanConfig(min_area=0))
    assert np.array_equal(out, vessels)


def test_a_verdict_on_few_held_out_images_gets_a_note():
    from ielstudio.core.review import FEW_HELD_OUT, few_held_out_note

    assert "only 2 held-out image(s)" in few_held_out_note(2, every_image=False)
    assert few_held_out_note(FEW_HELD_OUT, every_image=False) is None  # enough images
    assert few_held_out_note(2, every_image=True) is None  # folds: every image judged out of sample
    # a volume's slices are held out together: 96 slices of two volumes are two held-out volumes
    from ielstudio.core.review import held_out_units

    assert held_out_units([f"case{v}/{k:04d}" for v in (1, 7) for k in range(48)]) == (2, "volume(s)")
    assert held_out_units(["a", "b", "c"]) == (3, "image(s)")
    assert "only 2 held-out volume(s)" in few_held_out_note(2, False, "volume(s)")


def squares(n_classes, with_class_2):
    enc = MaskEncoding.gray(n_classes, 255)
    out = []
    for i in range(4):
        mask = np.zeros((32, 32), np.int64)
        mask[6:16, 6:16] = 1
        image = (mask == 1)[None].astype(np.float32)
        if i in with_class_2:
            mask[20:28, 20:28] = 2  # a dark region the model never marks
        out.append(Sample(f"sq{i}", image, mask, enc))
    return out


def test_a_class_no_held_out_image_has_is_named_and_kept_as_given(drain, brightness_model):
    """Class 2 is only in images the model trained on: the review cannot check it, says so,
    keeps its labels, and does not claim the written masks lost it."""
    from ielstudio.core.review import review_samples

    data = squares(3, with_class_2=(2, 3))
    results, summary = drain(review_samples(brightness_model(3), data, CleanConfig(), holdout=["sq0", "sq1"]))
    assert summary.reliability.agreement[1] == pytest.approx(1.0) and summary.reliability.agreement[2] is None
    assert summary.reliability.reliable == [True, True, False]
    for r, s in zip(results, data):
        np.testing.assert_array_equal(r.proposal, s.mask)  # class 2's 64 px kept in sq2, sq3
    assert summary.warnings == ["class 2: none of the 2 image(s) the model was checked on has it, so it could "
                                "not be checked for this class; its labels are kept as given"]
    assert summary.labelled[2] == summary.proposed[2] == 128


def test_an_unreliable_model_keeps_the_masks_and_does_not_say_the_class_was_lost(drain, brightness_model):
    """A model that finds nothing: every mask is kept as given, so the warnings are the
    reliability verdict alone (the lost-class warning counts the masks written, not the
    model's raw proposals, which would have dropped all 400 px)."""
    from ielstudio.core.review import NOT_RELIABLE, review_samples

    data = squares(2, with_class_2=())
    results, summary = drain(review_samples(brightness_model(2, sees=False), data, CleanConfig(), holdout=["sq0", "sq1"]))
    assert all(np.array_equal(r.proposal, s.mask) for r, s in zip(results, data))
    assert summary.warnings == summary.reliability.messages and summary.warnings[0].startswith(NOT_RELIABLE)
    assert not any("did not learn" in w for w in summary.warnings)
    assert summary.labelled[1] == summary.proposed[1] == 400


def test_an_agreement_just_under_the_bar_is_not_shown_as_the_bar():
    """0.8468 would read "0.85 ... (needs 0.85)" at two decimals: it is given to three."""
    from ielstudio.core.review import RELIABLE_AGREEMENT, assess_reliability

    given = np.zeros((40, 40), np.int64)
    given[10:30, 10:30] = 1  # 400 px
    decided = given.copy()
    decided[10:30, 10:13] = 0  # 60 px missed
    decided[30:33, 10:31] = 1  # 63 px more: Dice 2 * 340 / (400 + 403) = 0.8468
    probs = np.stack([1.0 - decided, decided]).astype(np.float32)
    rel = assess_reliability([(probs, given)], 2, None, True)
    assert rel.agreement[1] == pytest.approx(0.8468, abs=5e-4) and not rel.reliable[1]
    text = " ".join(rel.messages)
    assert "only at Dice 0.847 " in text and f"(needs {RELIABLE_AGREEMENT:.2f})" in text
