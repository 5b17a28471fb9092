"""Training generator, automatic budget, cross-fitting, prediction and checkpoints (tiny data, CPU)."""

import json
import math

import numpy as np
import pytest
import torch

from ielstudio.core.dataset import Sample
from ielstudio.core.decision import decide, decision_thresholds
from ielstudio.core.errors import DataError
from ielstudio.core.iel import IELConfig
from ielstudio.core.imageio import MaskEncoding
from ielstudio.core.metrics import dice
from ielstudio.core.models import build_model
from ielstudio.core.training import (
    CrossFitModel,
    DoneEvent,
    EvalEvent,
    SnapshotEvent,
    StepEvent,
    TrainConfig,
    TrainingError,
    fold_split,
    holdout_split,
    load_checkpoint,
    predict,
    predict_dataset,
    save_checkpoint,
    select_device,
    train,
)

ENC = MaskEncoding.gray(2, 255)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (conftest)


def disks(n: int, size: int = 48, seed: int = 0, spot: float | None = None) -> list[tuple]:
    """Images of bright disks on a dark noisy background; `spot`: darker square spots inside disks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        m = np.zeros((size, size), np.int64)
        spots = np.zeros((size, size), bool)
        for _ in range(2):
            cy, cx = rng.integers(10, size - 10, 2)
            r = int(rng.integers(7, 10))
            m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            for _ in range(2):
                y, x = cy + rng.integers(-r + 2, r - 5), cx + rng.integers(-r + 2, r - 5)
                spots[y : y + 5, x : x + 5] = True
        img = np.where(m > 0, 0.9, 0.1)
        if spot is not None:
            img[spots] = spot
        img = (img + 0.03 * rng.standard_normal((size, size))).astype(np.float32)
        out.append((f"im{i}", img, m, spots))
    return out


def samples_of(raw) -> list[Sample]:
    return [Sample(name, img[None], m, ENC) for name, img, m, _ in raw]


def tiny(**kw) -> TrainConfig:
    base = dict(width=8, depth=2, crop=32, batch_size=4, epochs=5, eval_every=10, min_steps=0, iel=IELConfig(heat_steps=5))
    base.update(kw)
    return TrainConfig(**base)


def run(samples, config, **kw) -> list:
    return list(train(samples, config, **kw))


def test_loss_decreases_and_model_fits_easy_case():
    samples = samples_of(disks(6))
    events = run(samples, tiny(epochs=20, lr=3e-3))  # 20 * 6 / 4 = 30 steps
    losses = [e.loss for e in events if isinstance(e, StepEvent)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.reason == "budget" and done.steps == 30
    probs = predict(done.model, samples[0].image)
    assert dice(probs.argmax(0), samples[0].mask, 2) > 0.9


def test_event_sequence_and_fields():
    samples = samples_of(disks(5))
    events = run(samples, tiny(epochs=4), snapshot_every=5, snapshot_names=["im1", "im3"])  # 4*5/4 = 5 steps
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["StepEvent"] * 5 + ["SnapshotEvent", "EvalEvent", "DoneEvent"]
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5]
    assert all(e.total_steps == 5 and e.eta_s >= 0 and e.lr > 0 and math.isfinite(e.loss) for e in steps)
    assert [e.epoch for e in steps] == [0, 1, 2, 3, 4]  # 4 crops per step over 5 images
    assert steps[-1].eta_s == 0
    snap = events[5]
    assert isinstance(snap, SnapshotEvent) and snap.step == 5 and sorted(snap.probs) == ["im1", "im3"]
    p = snap.probs["im1"]
    assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.shape == (2, 48, 48)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    ev = events[6]
    assert isinstance(ev, EvalEvent) and ev.step == 5 and 0.0 <= ev.agreement <= 1.0
    done = events[-1]
    assert done.history["loss"] == [e.loss for e in steps]
    assert done.history["eval_in_sample"] is True and done.history["holdout"] == []
    assert done.history["budget"].startswith("fixed: 4 epochs = 5 steps")
    assert not done.model.training and done.config.width == 8


def test_cancel_stops_within_one_step():
    samples = samples_of(disks(4))
    seen = []

    def cancel():
        return len(seen) >= 3

    for ev in train(samples, tiny(epochs=50), cancel=cancel):
        if isinstance(ev, StepEvent):
            seen.append(ev.step)
    assert seen == [1, 2, 3]
    assert isinstance(ev, DoneEvent) and ev.reason == "cancelled" and ev.steps == 3


def test_same_seed_same_losses_other_seed_differs():
    samples = samples_of(disks(4))

    def losses(seed):
        return [e.loss for e in train(samples, tiny(epochs=6, seed=seed)) if isinstance(e, StepEvent)]

    a, b, c = losses(3), losses(3), losses(4)
    assert len(a) == 6 and a == b
    assert a != c


def test_iel_and_no_iel_both_train_with_different_losses():
    samples = samples_of(disks(4))
    with_iel = [e.loss for e in train(samples, tiny(epochs=3, iel=IELConfig(heat_steps=20))) if isinstance(e, StepEvent)]
    without = [e.loss for e in train(samples, tiny(epochs=3, iel=IELConfig.none())) if isinstance(e, StepEvent)]
    assert len(with_iel) == len(without) == 3
    assert all(map(math.isfinite, with_iel + without))
    # Same seed, same first batch and weights: only the IEL in the loss differs; it amplifies the logits.
    assert with_iel[0] != pytest.approx(without[0], rel=1e-3)
    dice_run = run(samples, tiny(epochs=2, dice_weight=1.0))
    assert math.isfinite(dice_run[-1].history["loss"][-1])


def test_nan_loss_raises_training_error():
    raw = disks(3)
    samples = [Sample(n, np.full_like(img[None], np.nan), m, ENC) for n, img, m, _ in raw]
    with pytest.raises(TrainingError, match="diverged at step 1.*learning rate"):
        run(samples, tiny(epochs=2, augment=False))


def test_auto_budget_stops_when_held_out_agreement_falls():
    # Training labels mark darker spots inside the disks as background (a systematic,
    # learnable label error); held-out labels do not. The network first learns
    # bright = object (held-out agreement rises), then learns the spots from the training
    # labels (held-out agreement falls): the automatic budget must stop and keep the peak.
    raw = disks(8, size=40, spot=0.7)
    names = [r[0] for r in raw]
    held = set(holdout_split(names, 0.2, seed=0))
    assert len(held) == 2
    samples = []
    for name, img, m, spots in raw:
        label = m.copy()
        if name not in held:
            label[spots] = 0
        samples.append(Sample(name, img[None], label, ENC))
    cfg = tiny(epochs=None, iel=IELConfig.none(), lr=3e-3, schedule="constant", max_steps=200, min_steps=20,
               patience=3)
    events = run(samples, cfg)
    done = events[-1]
    h = done.history
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert done.reason == "early-stop" and done.steps < 200
    assert sorted(h["holdout"]) == sorted(held) and h["n_train"] == 6
    assert h["budget"].startswith("auto: held-out agreement")
    best = int(np.argmax(h["agreement"]))
    assert h["best_step"] == h["eval_steps"][best] == evals[best].step and evals[best].best
    assert done.steps == h["best_step"] + cfg.patience * cfg.eval_every
    assert max(h["agreement"]) - min(h["agreement"][best + 1:]) > 0.03  # it really fell after the peak
    # The returned model holds the best weights: its held-out agreement is the peak
    # (pixels decided as cleaning decides them, at the held-out images' valley).
    held_samples = [s for s in samples if s.name in held]
    probs = [predict(done.model, s.image) for s in held_samples]
    thresholds = decision_thresholds(probs)
    pred = np.concatenate([decide(p, thresholds) for p in probs])
    target = np.concatenate([s.mask for s in held_samples])
    assert dice(pred, target, 2) == pytest.approx(h["best_agreement"], abs=1e-9)


class _FixedProbabilities(torch.nn.Module):
    """A 'model' whose foreground probability is p_object inside the disk and 0.03 outside."""

    def __init__(self, inside: np.ndarray, p_object: float):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        p = np.where(inside, p_object, 0.03)
        self.logits = torch.from_numpy(np.log(np.stack([1 - p, p])).astype(np.float32))

    def forward(self, x):
        return self.logits[None].expand(x.shape[0], -1, -1, -1) + 0 * self.dummy


def test_budget_agreement_decides_pixels_as_cleaning_does():
    # A model that learned from labels missing half of the objects says 0.4 on every object:
    # the argmax finds none of them, cleaning (the valley) finds all. The budget must judge
    # the model by what cleaning makes of it, unless the adaptive threshold is off.
    from ielstudio.core.training import _agreement

    name, img, m, _ = disks(1, size=40)[0]
    sample = Sample(name, img[None], m, ENC)
    model = _FixedProbabilities(m == 1, 0.4)
    adaptive = _agreement(model, [sample], torch.device("cpu"), 2, None)
    plain = _agreement(model, [sample], torch.device("cpu"), 2, None, adaptive_threshold=False)
    assert adaptive == pytest.approx(1.0) and plain == pytest.approx(0.0)
    assert _agreement(model, [sample], torch.device("cpu"), 2, lambda: True) is None  # cancelled


def test_auto_budget_single_image_falls_back_to_fixed_steps():
    samples = samples_of(disks(1))
    events = run(samples, tiny(epochs=None, max_steps=7))
    assert events[-1].history["budget"].startswith("fixed fallback: 7 steps")
    assert events[-1].steps == 7 and events[-1].reason == "budget"


def test_splits_are_seeded_and_disjoint():
    names = [f"n{i}" for i in range(10)]
    assert holdout_split(names, 0.2, 1) == holdout_split(list(reversed(names)), 0.2, 1)
    assert len(holdout_split(names, 0.2, 1)) == 2 and holdout_split(["a"], 0.5) == []
    assert len(holdout_split([f"n{i}" for i in range(1000)], 0.2)) == 32
    folds = fold_split(names, 3, seed=2)
    assert sorted(len(f) for f in folds) == [3, 3, 4] and sorted(sum(folds, [])) == sorted(names)
    with pytest.raises(ValueError, match="3 folds need at least 3 images"):
        fold_split(["a", "b"], 3)


def test_folds_give_out_of_sample_predictions(tmp_path):
    samples = samples_of(disks(4))
    events = run(samples, tiny(epochs=2, folds=2))
    done = events[-1]
    model = done.model
    assert isinstance(model, CrossFitModel) and len(model.models) == 2
    assert {e.fold for e in events if isinstance(e, StepEvent)} == {0, 1}
    fold_of = done.history["fold_of"]
    assert sorted(fold_of) == [s.name for s in samples] and sorted(set(fold_of.values())) == [0, 1]
    for f, h in enumerate(done.history["folds"]):
        assert sorted(h["holdout"]) == sorted(n for n, k in fold_of.items() if k == f)
    oos = predict_dataset(model, samples)
    ins = predict_dataset(model, samples, out_of_sample=False)
    for s in samples:
        np.testing.assert_array_equal(oos[s.name], predict(model.models[fold_of[s.name]], s.image))
        np.testing.assert_allclose(ins[s.name], predict(model, s.image))
        assert not np.allclose(oos[s.name], ins[s.name])
    path = tmp_path / "folds.pt"
    save_checkpoint(path, model, done.config, {"note": "2 folds"})
    loaded, cfg, meta = load_checkpoint(path)
    assert isinstance(loaded, CrossFitModel) and loaded.fold_of == fold_of and cfg.folds == 2
    np.testing.assert_array_equal(predict_dataset(loaded, samples)["im2"], oos["im2"])


def test_predict_tiled_matches_whole_image():
    torch.manual_seed(0)
    model = build_model("unet", 1, 3, width=8, depth=2)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(2, 1, 64, 64))
    image = np.random.default_rng(1).random((1, 300, 200), dtype=np.float32)
    whole = predict(model, image, tile=512)
    tiled = predict(model, image, tile=96, overlap=32)
    assert whole.shape == tiled.shape == (3, 300, 200) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    assert np.abs(tiled - whole).mean() < 0.01
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.98
    assert model.training  # mode restored


class Evil:
    """Stands for any pickled Python object that is not plain weights."""


def test_checkpoint_round_trip_and_refusals(tmp_path):
    samples = samples_of(disks(3))
    done = run(samples, tiny(epochs=2))[-1]
    path = tmp_path / "model.pt"
    save_checkpoint(path, done.model, done.config, {"dataset": "disks", "steps": done.steps})
    assert not [p for p in tmp_path.iterdir() if p.name != "model.pt"]  # no temp file left
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ielstudio-checkpoint" and payload["model"]["arch"] == "unet"
    json.dumps(payload["config"]) and json.dumps(payload["meta"])
    model, cfg, meta = load_checkpoint(path)
    assert cfg == done.config and meta == {"dataset": "disks", "steps": done.steps}
    for s in samples:
        np.testing.assert_array_equal(predict(model, s.image), predict(done.model, s.image))

    pickled = tmp_path / "evil.pt"
    torch.save({"format": "ielstudio-checkpoint", "x": Evil()}, pickled)
    with pytest.raises(DataError, match="evil.pt: not an IEL Studio checkpoint.*refused to unpickle"):
        load_checkpoint(pickled)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(DataError, match="garbage.pt: unreadable or corrupt checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(DataError, match="not an IEL Studio checkpoint"):
        load_checkpoint(foreign)
    payload["model"]["kw"]["width"] = 16
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(DataError, match="weights do not fit architecture 'unet'"):
        load_checkpoint(wrong)
    for folds in (0, 10**9):  # a crafted fold count is refused before any network is built
        payload["model"]["folds"] = folds
        torch.save(payload, wrong)
        with pytest.raises(DataError, match=f"cannot build .{folds} fold models .at most 32"):
            load_checkpoint(wrong)
    with pytest.raises(DataError, match="missing.pt: checkpoint file does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "x.pt", done.model, done.config, {"bad": object()})


def test_fine_tune_from_checkpoint(tmp_path):
    samples = samples_of(disks(3))
    done = run(samples, tiny(epochs=2))[-1]
    path = tmp_path / "base.pt"
    save_checkpoint(path, done.model, done.config, {})
    tuned = run(samples, tiny(epochs=2, init_checkpoint=str(path), iel=IELConfig.none()))[-1]
    assert tuned.history["init_checkpoint"] == str(path)
    # It started from the saved weights, not from scratch: first loss equals the base model's loss.
    scratch = run(samples, tiny(epochs=2, iel=IELConfig.none()))[-1]
    assert tuned.history["loss"][0] < scratch.history["loss"][0]
    three = [Sample(s.name, s.image, np.where(s.mask > 0, 2, 0), MaskEncoding.gray(3, 1)) for s in samples]
    with pytest.raises(DataError, match="base.pt: was trained for 2 classes but this dataset has 3"):
        run(three, tiny(epochs=1, init_checkpoint=str(path)))


def test_config_validation_and_dict_round_trip():
    cfg = TrainConfig(iel=IELConfig(heat_steps=7, convex_classes=(1,)), epochs=3, folds=2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig().epochs is None and TrainConfig().iel.heat
    with pytest.raises(ValueError, match="unknown training settings: colour"):
        TrainConfig.from_dict({"colour": 1})
    for bad, match in [
        (dict(arch="resnet"), "arch='resnet'"), (dict(batch_size=0), "batch_size=0"),
        (dict(min_steps=900), "min_steps=900"), (dict(device="tpu"), "device='tpu'"),
        (dict(epochs=0), "epochs=0"), (dict(schedule="step"), "schedule='step'"), (dict(holdout=1.0), "holdout"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_pde_architecture_training_keeps_weights_in_unit_box():
    """Parabolic U-Net training projects its PDE kernels to [-1, 1] after each step."""
    import numpy as np
    import torch

    from ielstudio.core.dataset import Sample
    from ielstudio.core.models.pde_blocks import SymmetricLayer
    from ielstudio.core.training import DoneEvent, TrainConfig, train

    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        mask = np.zeros((32, 32), np.int64)
        mask[8:24, 8:24] = 1
        img = (mask + 0.1 * rng.standard_normal((32, 32))).astype(np.float32)[None]
        samples.append(Sample(name=f"s{i}", image=img, mask=mask, encoding=None,
                              image_path=None, mask_path=None))
    cfg = TrainConfig(arch="parabolic", width=8, depth=2, epochs=1, max_steps=3, min_steps=1,
                      crop=32, batch_size=2, lr=5.0, seed=0)
    done = [e for e in train(samples, cfg) if isinstance(e, DoneEvent)][0]
    layers = [m for m in done.model.modules() if isinstance(m, SymmetricLayer)]
    assert layers
    w = torch.cat([m.weight.detach().flatten() for m in layers])
    assert float(w.abs().max()) <= 1.0 + 1e-6


def test_eta_counts_steps_evaluations_snapshots_later_folds_and_the_scoring_pass():
    """Step 1 s, evaluation 4 s of 2 images (2 s per image), snapshot 3 s: the seconds left
    are exactly what the remaining work costs at those rates; a pause costs nothing."""
    from ielstudio.core.training import _EtaClock

    clock = _EtaClock(total=10, eval_every=5, snapshot_every=5, folds_after=0, predictions_after=0)
    for _ in range(3):
        clock.step_done(1.0)
    clock.eval_done(4.0, images=2)
    clock.snapshot_done(3.0)
    # at step 3: 7 steps, evaluations at 5 and 10, snapshots at 5 and 10
    assert clock.eta(3) == 7 * 1.0 + 2 * 4.0 + 2 * 3.0
    assert clock.eta(5) == 5 + 2 * 4.0 + 2 * 3.0  # step 5's evaluation follows its StepEvent
    assert clock.eta(10) == 0 + 4.0 + 3.0
    scored = _EtaClock(total=10, eval_every=5, snapshot_every=0, folds_after=1, predictions_after=6)
    scored.step_done(1.0)
    scored.eval_done(4.0, images=2)
    # 9 steps + 2 evaluations, one more fold (10 steps + 2 evaluations), 6 images to score at 2 s each
    assert scored.eta(1) == (9 + 8) + (10 + 8) + 6 * 2.0
    odd = _EtaClock(total=12, eval_every=5, snapshot_every=0, folds_after=0, predictions_after=0)
    odd.eval_done(1.0, 1)
    assert odd.eta(11) == 1.0  # the last step (12) is evaluated too


def test_the_eta_does_not_grow_while_training_is_paused():
    import time as _time

    samples = [Sample(f"s{i}", np.random.default_rng(i).random((1, 16, 16), dtype=np.float32),
                      (np.random.default_rng(i).random((16, 16)) > 0.5).astype(np.int64), ENC) for i in range(2)]
    config = TrainConfig(width=4, depth=1, crop=16, batch_size=2, max_steps=6, min_steps=0, epochs=6, device="cpu")
    etas = []
    for ev in train(samples, config):
        if isinstance(ev, StepEvent):
            etas.append(ev.eta_s)
            if ev.step == 2:
                _time.sleep(1.0)  # suspended at the yield: a paused run
    assert len(etas) == 6 and max(etas[2:]) < 0.9  # a wall-clock estimate would add the second


def test_training_runs_channels_last_where_it_can_and_returns_a_model_in_the_checkpoints_layout():
    """`fast_layout`: channels-last for convolutional nets on CPU (and CUDA), contiguous for
    the PDE-G-CNN (5-D weights) and on MPS; the model `train` returns is contiguous again,
    so it predicts exactly what its saved checkpoint predicts."""
    import torch

    from ielstudio.core.models import build_model
    from ielstudio.core.training import fast_layout

    cpu = torch.device("cpu")
    assert fast_layout(build_model("unet", 1, 2, width=4, depth=2), cpu) == torch.channels_last
    assert fast_layout(build_model("pdegcnn", 1, 2), cpu) == torch.contiguous_format
    assert fast_layout(build_model("unet", 1, 2, width=4, depth=2), torch.device("mps")) == torch.contiguous_format
    samples = [Sample(n, img[None], m, ENC) for n, img, m, _ in disks(4, size=32)]
    done = run(samples, tiny(max_steps=3, epochs=None, min_steps=0))[-1]
    weights = [p for p in done.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous() for p in weights)
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights)
