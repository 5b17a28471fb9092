"""The GUI's background jobs decide proposals at the data set's thresholds (core.decision)."""

import math

import numpy as np
import torch
from torch import nn

from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.dataset import Sample
from ielstudio.core.imageio import MaskEncoding
from ielstudio.gui import jobs


class FixedOdds(nn.Module):
    """p(object) = 0.4 on bright pixels, 0.03 on dark ones: a model that learned that the
    annotators label an object only part of the time."""

    def __init__(self, p_object=0.4):
        super().__init__()
        self.device_marker = nn.Parameter(torch.zeros(1))  # the jobs read the device from it
        self.p_object = p_object

    def forward(self, x):
        lo, hi = math.log(0.03 / 0.97), math.log(self.p_object / (1 - self.p_object))
        fg = lo + (hi - lo) * (x[:, :1] > 0.5).float()
        return torch.cat([torch.zeros_like(fg), fg], 1)


def samples(n=4, size=32):
    out, enc = [], MaskEncoding.gray(2, 255)
    for i in range(n):
        truth = np.zeros((size, size), np.int64)
        truth[4:14, 4:14] = 1
        truth[18:28, 16:26] = 1
        image = truth[None].astype(np.float32)
        given = truth.copy()
        if i % 2:
            given[18:28, 16:26] = 0  # every other label misses the second object
        out.append(Sample(f"img_{i}", image, given, enc))
    return out, truth


def test_scoring_job_keeps_the_objects_the_labels_half_miss_and_adds_them_only_when_sure():
    data, truth = samples()
    reviews = list(jobs.scoring_job(FixedOdds(), data, CleanConfig(), cancel=lambda: False))
    items = {k: v for r in reviews for k, v in r.items.items()}
    assert sorted(items) == [s.name for s in data] and reviews[-1].done == reviews[-1].total == 4
    for s in data:  # p = 0.4 on every object: nothing deleted, and too unsure to add the missed one
        assert np.array_equal(items[s.name].proposal, s.mask)
    # the plain argmax would delete every object; the confidence gate keeps them
    argmax = list(jobs.scoring_job(FixedOdds(), data, CleanConfig(adaptive_threshold=False), cancel=lambda: False))
    assert all(np.array_equal(v.proposal, s.mask) for r in argmax for s, v in zip(data, r.items.values()))
    # a model that is sure of every object (p = 0.95) restores the missed ones
    sure = list(jobs.scoring_job(FixedOdds(0.95), data, CleanConfig(), cancel=lambda: False))
    for r in sure:
        for v in r.items.values():
            assert np.array_equal(v.proposal, truth)


def test_scoring_job_stops_on_cancel():
    data, _ = samples()
    assert list(jobs.scoring_job(FixedOdds(), data, CleanConfig(), cancel=lambda: True)) == []
    assert list(jobs.scoring_job(FixedOdds(), [], CleanConfig(), cancel=lambda: False)) == []


class NeverClassTwo(nn.Module):
    """Three classes; class 2 (labelled in the masks) is never the most likely one."""

    def __init__(self):
        super().__init__()
        self.device_marker = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bright = (x[:, :1] > 0.5).float()
        return torch.cat([2 * (1 - bright), 2 * bright, torch.full_like(bright, -3.0)], 1)


def test_scoring_job_names_a_class_the_model_did_not_learn():
    data, _ = samples()
    three = [Sample(s.name, s.image, np.where(s.mask == 1, 2, 0) * (np.arange(32) < 10)[None, :]
                    + (s.mask == 1) * (np.arange(32) >= 10)[None, :], MaskEncoding.gray(3, 127)) for s in data]
    reviews = list(jobs.scoring_job(NeverClassTwo(), three, CleanConfig(), cancel=lambda: False, chunk=3))
    assert [r.done for r in reviews] == [3, 4] and reviews[0].warnings == []
    class_two = [w for w in reviews[-1].warnings if w.startswith("class 2:")]
    assert len(class_two) == 1 and class_two[0].startswith("class 2: the model agrees")
    assert "not reliable for this class" in class_two[0]
    for r in reviews:  # ... so its labels are kept as given
        for s in three:
            if s.name in r.items:
                assert np.array_equal(r.items[s.name].proposal == 2, s.mask == 2)
    # a model that finds every labelled class: no warning
    ok = list(jobs.scoring_job(FixedOdds(), data, CleanConfig(), cancel=lambda: False))
    assert ok[-1].warnings == []


def test_review_job_scores_every_image_with_the_kept_model_not_the_last_snapshot(tmp_path, monkeypatch):
    """The automatic budget restores the weights of its best evaluation, which can be older than
    the last snapshot: after training every image is scored again with the model that was kept."""
    import cv2

    import ielstudio.core.training as training
    from ielstudio.core.dataset import scan_pairs
    from ielstudio.core.training import DoneEvent, SnapshotEvent, TrainConfig

    data, truth = samples()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for s in data:
        cv2.imwrite(str(tmp_path / "images" / f"{s.name}.png"), (s.image[0] * 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{s.name}.png"), (s.mask * 255).astype(np.uint8))
    nothing = np.stack([np.ones((32, 32), np.float32), np.zeros((32, 32), np.float32)])  # p(object) = 0

    stop = {"pressed": False}

    def scripted_train(samples, config, cancel, **kw):
        # the last snapshot (step 250) saw a model that finds no object; the kept one (step 175) finds both
        yield SnapshotEvent(250, {s.name: nothing for s in samples})
        yield DoneEvent(FixedOdds(0.95), 275, "cancelled" if cancel() else "early-stop", {"best_step": 175}, config)

    monkeypatch.setattr(training, "train", scripted_train)
    scan = scan_pairs(tmp_path / "images", tmp_path / "masks")
    events = list(jobs.review_job(scan, TrainConfig(), CleanConfig(), None, 50, None, cancel=lambda: stop["pressed"]))
    snap = {k: v for e in events if isinstance(e, jobs.Reviews) and e.step == 250 for k, v in e.items.items()}
    final = {k: v for e in events if isinstance(e, jobs.Reviews) and e.step is None for k, v in e.items.items()}
    assert sorted(snap) == sorted(final) == [s.name for s in data]
    assert all(int(r.proposal.sum()) == 0 for r in snap.values())  # the preview deleted every object
    for s in data:
        assert np.array_equal(final[s.name].proposal, truth)  # the kept model's proposal replaces it
    finished = [e for e in events if isinstance(e, jobs.TrainingFinished)]
    assert len(finished) == 1 and events.index(finished[0]) < events.index(
        next(e for e in events if isinstance(e, jobs.Reviews) and e.step is None))
    # stopped during training: the job ends with the saved model and scores nothing more (the window
    # then scores with the saved model, tests/test_gui_flow.py)
    stopped = []
    for e in jobs.review_job(scan, TrainConfig(), CleanConfig(), None, 50, None, cancel=lambda: stop["pressed"]):
        stopped.append(e)
        stop["pressed"] = stop["pressed"] or isinstance(e, jobs.Reviews)  # Stop pressed while the preview shows
    assert stopped[-1].reason == "cancelled"
    assert not [e for e in stopped if isinstance(e, jobs.Reviews) and e.step is None]


def test_the_window_job_and_the_command_give_the_same_masks_and_scores(tmp_path):
    """One review path: the window's job (jobs.review_job) and `ielstudio clean`
    (cleaning.clean_dataset), trained with the same settings and seed on CPU, give
    the same proposal and the same score for every image."""
    import json

    import cv2

    from ielstudio.core.cleaning import clean_dataset
    from ielstudio.core.dataset import scan_pairs
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.training import TrainConfig

    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        truth = np.zeros((32, 32), np.uint8)
        cv2.circle(truth, (10 + i, 12), 6, 1, -1)
        cv2.circle(truth, (22, 22 - i), 5, 1, -1)
        image = truth * 0.6 + 0.2 + rng.normal(0, 0.05, truth.shape)
        given = truth.copy()
        given[1:4, 1 + i:6 + i] = 1  # a speck on every label
        cv2.imwrite(str(tmp_path / "images" / f"c{i}.png"), np.clip(image * 255, 0, 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"c{i}.png"), given * 255)
    config = TrainConfig(width=8, depth=2, crop=32, batch_size=4, max_steps=80, min_steps=80, eval_every=20,
                         device="cpu", seed=5, iel=IELConfig(heat_steps=2))
    clean = CleanConfig(min_area=4)
    events = list(clean_dataset(tmp_path / "images", tmp_path / "masks", tmp_path / "out", config, clean))
    report = json.loads((tmp_path / "out" / "ielstudio-report.json").read_text())
    assert events[-1].report["images"] == report["images"]
    scan = scan_pairs(tmp_path / "images", tmp_path / "masks")
    window = [e for e in jobs.review_job(scan, config, clean, None, 4, str(tmp_path / "m.pt"), cancel=lambda: False)
              if isinstance(e, jobs.Reviews) and e.step is None]
    final = {k: v for r in window for k, v in r.items.items()}
    assert sorted(final) == sorted(d["name"] for d in report["images"]) == [f"c{i}" for i in range(6)]
    changed = 0
    for d in report["images"]:
        written = cv2.imread(str(tmp_path / "out" / f"{d['name']}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written // 255, final[d["name"]].proposal)
        assert abs(final[d["name"]].score - d["score"]) < 1e-6
        given = cv2.imread(str(tmp_path / "masks" / f"{d['name']}.png"), cv2.IMREAD_UNCHANGED)
        changed += int((written != given).sum())
    assert window[-1].warnings == report["warnings"] == []  # the model is reliable here: it changed labels
    assert changed > 0


def test_scoring_job_counts_the_objects_rule_3_removed_on_its_last_message():
    """Blobs on the dark background beside a bright object the model finds go (rule 3 of
    core.review), even though the model misses the (dark) objects of two other images and
    is not reliable for the class; the last message says how many, for the window's title."""
    enc = MaskEncoding.gray(2, 255)
    data = []
    for i in range(4):
        obj = np.zeros((32, 32), bool)
        obj[8:20, 8:20] = True
        given = obj.copy()
        given[26:30, 26:30] = True  # a spurious blob
        image = (obj if i < 2 else np.zeros_like(obj))[None].astype(np.float32)
        data.append(Sample(f"img_{i}", image, given.astype(np.int64), enc))
    reviews = list(jobs.scoring_job(FixedOdds(0.95), data, CleanConfig(), cancel=lambda: False,
                                    holdout=[s.name for s in data]))
    assert [r.objects_removed for r in reviews[:-1]] == [0] * (len(reviews) - 1)
    assert reviews[-1].objects_removed == 2 and reviews[-1].warnings[0].startswith("the model is not reliable")
    items = {k: v for r in reviews for k, v in r.items.items()}
    for i in (0, 1):
        assert not items[f"img_{i}"].proposal[26:30, 26:30].any() and items[f"img_{i}"].proposal[8:20, 8:20].all()
    for i in (2, 3):
        assert np.array_equal(items[f"img_{i}"].proposal, data[i].mask)
