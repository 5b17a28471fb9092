"""Smoke tests of the benchmark harness (benchmarks/): exact small cases of its own
statistics and baselines, and one tiny end-to-end case so the scripts do not rot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common as C  # noqa: E402


def test_top_precision_counts_worst_images_exactly():
    truth = [0.9, 0.2, 0.8, 0.95, 0.5, 0.99, 0.7, 0.85, 0.6, 0.4, 0.97]  # 11 images -> k = 2 worst: 0.2, 0.4
    assert C.top_precision([0.1, 0.05, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], truth) == 0.5  # idx 1 yes, 0 no
    assert C.top_precision([0.9, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9], truth) == 1.0
    assert C.top_precision([0.0, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], truth) == 0.0


def test_spearman_is_rank_correlation_and_nan_when_constant():
    assert C.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert C.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(C.spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_pixel_flag_quality_against_truly_wrong_pixels():
    clean = np.zeros((4, 4), np.int64)
    given = clean.copy()
    given[0, :3] = 1  # 3 wrong pixels
    flags = np.zeros((4, 4), bool)
    flags[0, :2] = True  # 2 of them found
    flags[3, 3] = True  # 1 false alarm
    q = C.pixel_flag_quality([flags], [given], [clean])
    assert q == {"precision": 2 / 3, "recall": 2 / 3}


def test_morphology_baseline_removes_specks_and_fills_holes():
    mask = np.zeros((24, 24), np.int64)
    mask[4:16, 4:16] = 1
    mask[9, 9] = 0  # one-pixel hole
    mask[20, 20] = 1  # one-pixel speck
    out = C.Morphology(open_r=0, close_r=0, min_area=5)(mask, 2)
    expected = np.zeros_like(mask)
    expected[4:16, 4:16] = 1
    assert np.array_equal(out, expected)
    # an opening with r=1 removes a 1-px-wide spur that speck removal alone keeps (it is attached)
    spur = expected.copy()
    spur[10, 16:22] = 1
    assert int(C.Morphology(0, 0, 5)(spur, 2).sum()) == 144 + 6
    assert int(C.Morphology(1, 0, 5)(spur, 2)[10, 17:22].sum()) == 0


def test_md_table_formats_floats_and_missing_values():
    text = C.md_table(["a", "b"], [["x", 0.12345], ["y", float("nan")]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | – |"]


def test_cleanlab_run_flips_flagged_pixels_to_the_prediction():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    clean = [np.zeros((16, 16), np.int64) for _ in range(4)]
    for m in clean:
        m[4:12, 4:12] = 1
    given = [m.copy() for m in clean]
    given[0][0:3, 0:3] = 1  # 9 wrong pixels, contradicted by a confident model
    probs = []
    for m in clean:
        p = np.where(m == 1, 0.95, 0.05).astype(np.float32) + rng.uniform(-0.02, 0.02, m.shape).astype(np.float32)
        probs.append(np.stack([1 - p, p]))
    res = C.cleanlab_run(given, probs)
    wrong = given[0] != clean[0]
    flags = res["flags"][0]
    assert flags.any() and not (flags & ~wrong).any()  # cleanlab finds some (not all) of them, no false alarm
    assert sum(int(f.sum()) for f in res["flags"][1:]) == 0
    expected = given[0].copy()
    expected[flags] = 0  # flagged pixels take the model's argmax (background there)
    assert np.array_equal(res["fixed"][0], expected)
    assert len(res["scores"]) == 4 and res["scores"][0] < min(res["scores"][1:])


def test_quality_case_end_to_end_tiny():
    """One (data set, noise, level) through every method with a 3-step budget."""
    import quality

    s = quality.Settings(True, 3, 32, (1,), (1,), 3, 32, 2, 4, (3,), (2,), (3,), 32)
    noise = C.noise_types()[0]
    res = quality.run_case(s, "generated", "nuclei", noise, 1, C.Morphology())
    try:
        import cleanlab  # noqa: F401  (optional: the `bench` extra)
        methods = quality.METHODS
    except ImportError:
        methods = [m for m in quality.METHODS if m != "cleanlab"]
        assert "cleanlab" in res["missing"]
    assert set(methods) <= set(res["methods"])
    for m in methods:
        d = res["methods"][m]
        assert 0.0 <= d["dice"] <= 1.0 and len(d["iou_per_class"]) == 2 and "solidity" in d
    assert res["methods"]["clean"]["dice"] == 1.0
    assert len(res["true_dice"]) == 3 and len(res["scores"]["ours"]) == 3
    json.dumps(C._jsonable(res))
    text = quality.report(s, C.machine_facts(), C.Morphology(), 0.5, [res], [], [], 1.0, "cmd", "q")
    assert f"| nuclei | {noise} | 1 |" in text


def test_issue2_table_at_the_automatic_budget_summarises_seeds():
    import quality

    def row(seed, none, heat):
        return {"dataset": "sample-nuclei", "noise": "block", "level": 3, "seed": seed, "noisy_dice": 0.7,
                "methods": {"no-IEL": {"dice": none, "kept_step": 50, "steps_run": 150},
                            "heat": {"dice": heat, "kept_step": 150, "steps_run": 250}}}

    text = quality.auto_table([row(0, 0.98, 0.99), row(1, 0.99, 0.985)])
    # means 0.985 vs 0.9875, ranges, steps kept, all beat noisy, heat ahead on the mean, in 1 of 2 seeds
    assert "| sample-nuclei | block | 3 | 0.700 | 0.985 | 0.980-0.990 | 0.988 | 0.985-0.990 | 50 / 150 | yes | yes | 1/2 |" \
        in text
    s = quality.Settings.make(True)
    autos = [t for t in quality.plan(s) if t[0] == "auto"]
    # every noise type at both sample levels on the nuclei, plus both samples' own noise, per seed
    assert len(autos) == len(s.auto_seeds) * (2 + len(C.noise_types()) * len(s.sample_levels))


def test_speed_train_section_reports_ratios_tiny():
    import speed

    r = speed.section_train("cpu", rounds=1, steps=2, n=2, size=32, crop=32, batch_size=2, width=4, depth=1)
    assert set(r["ratio"]) == set(speed.TRAIN_CONFIGS) and r["ratio"]["plain"] == 1.0
    assert all(v > 0 for v in r["median_step_s"].values())


def test_architectures_run_reports_params_time_and_dice_tiny():
    import architectures as A

    ds = C.generated_set("nuclei", 2, 48, seed=1)
    ds.given = [m.copy() for m in ds.clean]
    row = A.run(ds, "unet", steps=2, crop=32, batch=2)
    from ielstudio.core.models import build_model, count_parameters

    assert row["params"] == count_parameters(build_model("unet", 1, 2))
    assert row["step_ms"] > 0 and 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["bf1"] <= 1.0


def test_realdata_pure_functions_without_data():
    """benchmarks/realdata.py: mixture noise, windowing, cropping, slicing helpers (no download)."""
    import cv2
    import realdata as R

    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (30, 34), (14, 10), 20, 0, 360, 1, -1)
    a, ops_a = R.mixture_noise(mask, 3, clean_share=0.0)
    b, ops_b = R.mixture_noise(mask, 3, clean_share=0.0)
    assert np.array_equal(a, b) and ops_a == ops_b and 1 <= len(ops_a) <= 2  # deterministic for a seed
    assert a.shape == mask.shape and a.dtype == mask.dtype and set(np.unique(a)) <= {0, 1}
    assert not np.array_equal(a, mask)
    for name, op in R.MIXTURE_OPS.items():  # every op changes the object, keeps the shape
        out = op(mask > 0, np.random.default_rng(1))
        assert out.shape == mask.shape and out.dtype == bool and (out != (mask > 0)).any(), name
    same, ops = R.mixture_noise(mask, 0, clean_share=1.0)
    assert ops == [] and np.array_equal(same, mask)
    # multi-class: relabelling keeps class indices in range
    multi = mask.astype(np.int64) * 2
    multi[30:38, 25:35] = 1
    out, ops = R.mixture_noise(multi, 5, n_classes=3, clean_share=0.0, relabel=True)
    assert out.dtype == multi.dtype and out.max() <= 2 and ops[-1] == "relabel"

    # windowing: soft tissue W 400 / L 40 maps -160 -> 0, 240 -> 255, clipped outside
    assert R.window(np.array([-1000, -160, 40, 240, 3000]), 40, 400).tolist() == [0, 0, 128, 255, 255]
    mr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    u8 = R.percentile_window(mr)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255

    # crop: square centred on the lesion, at least the minimum side, inside the plane
    m = np.zeros((200, 300), bool)
    m[90:110, 140:160] = True
    assert R.crop_box(m, 2.5, 96) == (52, 102, 96)
    m[20:180, 140:160] = True
    assert R.crop_box(m, 2.5, 96)[2] == 200  # capped by the plane
    assert R.spread(range(10), 3) == [0, 4, 9] and R.spread(range(10), 20, 3) == [0, 3, 6, 9]

    # orientation: a negative step flips that axis; axes reordered to S, P, L
    vol = np.arange(24).reshape(2, 3, 4)  # axes follow L, P, S in LPS space
    out, spacing = R.canonical(vol, np.diag([1.0, -2.0, 5.0]))
    assert out.shape == (4, 3, 2) and spacing.tolist() == [5.0, 2.0, 1.0]
    assert out[0, 0, 0] == vol[0, 2, 0]
    # shape-based label interpolation reproduces the label on the acquired planes
    lab = np.zeros((3, 20, 20), np.int64)
    lab[1, 5:15, 6:12] = 1
    sdf = R.lesion_sdf(lab, 0, (5.0, 1.0, 1.0))
    assert np.array_equal(sdf < 0, lab > 0)


def test_real_data_scripts_import_and_parse_their_variants():
    """realtable.py, recipe.py and harm_probe.py need the real-data cache to run (minutes);
    here they must at least import, and recipe's variant syntax maps onto TrainConfig."""
    import harm_probe
    import realtable
    import recipe

    from ielstudio.core.training import TrainConfig

    assert recipe.parse_variant("default") == {}
    v = recipe.parse_variant("lr=0.005,crop=96,foreground_crops=0.5")
    assert v == {"lr": 0.005, "crop": 96, "foreground_crops": 0.5}
    assert TrainConfig(**v).lr == 0.005
    assert set(realtable.TRAINED) == {"no-iel", "heat", "heat+convex"} and realtable.ORDER[-1] == "heat"
    assert harm_probe.THRESHOLDS[0] == 0.75 and callable(harm_probe.main)
    assert set(realtable.bundled_sets()) == {"nuclei-sample", "lesions-sample"}
    import realdata

    assert realdata.class_names_of("brain-sides-report", 7)[4] == "CSF L"
    assert realdata.class_names_of("dsb-nuclei", 2) == ("background", "nucleus")
    assert realdata.class_names_of("report", 2) == ("background", "lesion")


def test_realtable_rows_from_never_copies_a_method_this_run_trains():
    import realtable

    earlier = [{"set": s, "labels": "noisy", "method": m} for s in ("a", "b")
               for m in ("heat", "cleanlab", "no-iel", "heat+convex", "classical")]
    taken = realtable.rows_to_take(earlier, {("b", "noisy", "no-iel")}, ["heat"])
    assert sorted((r["set"], r["method"]) for r in taken) == [("a", "heat+convex"), ("a", "no-iel"),
                                                               ("b", "heat+convex")]
    taken = realtable.rows_to_take(earlier, set(), ["no-iel"])
    assert {r["method"] for r in taken} == {"heat", "cleanlab", "heat+convex"}


def test_learning_curve_tests_on_a_fixed_quarter_and_trains_on_nested_subsets_of_the_rest():
    import learning_curve as L

    names = [f"scan{i // 12}_axial{i:03d}" for i in range(24)]
    small, test = L.split(names, 6)
    large, test_again = L.split(names, 18)
    assert test == test_again == sorted(names)[::4] and len(test) == 6
    assert len(small) == 6 and len(large) == 18 and set(small) <= set(large)  # nested: size alone varies
    assert not set(large) & set(test)
    with pytest.raises(SystemExit):
        L.main(["--set", "report"])  # never on a report set


def test_evidence_probe_scores_rule_3_on_a_cached_case():
    """evidence_probe.py's `objects` row on a three-image cache: a lesion with a spurious blob
    the model does not see, a correct lesion it sees, one it misses (so the class misses the
    reliability bar and rules 1-2 change nothing); rule 3 removes exactly the blob."""
    import cv2
    import evidence_probe as P

    clean = np.zeros((3, 48, 48), np.uint8)
    for k in range(3):
        cv2.circle(clean[k], (20, 20), 9, 1, -1)
    given = clean.copy()
    cv2.circle(given[0], (40, 40), 4, 1, -1)
    p = np.where(clean == 1, 0.95, 0.01).astype(np.float32)
    p[2] = 0.01
    d = {"probs": np.stack([1 - p, p], axis=1), "given": given, "clean": clean, "thresholds": None,
         "oos": np.array([True, True, True]), "images": clean.astype(np.float32), "steps": 1, "train_s": 0.0,
         "names": np.array(["a", "b", "c"])}
    row = P.objects("tiny", d)
    assert row[0] == "tiny" and float(row[1]) < 1.0 and row[2] == row[1]  # rules 1-2: kept as given
    at_default = P.PROBABILITIES.index(0.05) * len(P.AGREEMENTS) + P.AGREEMENTS.index(0.8)
    assert row[3 + at_default] == "1.000 (1)"
    scores = P.image_scores(d, 0)
    assert scores["hard dice"] < 1.0 and P.image_scores(d, 1)["hard dice"] == 1.0


def test_mirrored_prediction_undoes_each_flip_and_averages_probabilities():
    """tta_probe.mirrored: for a per-pixel model the mirrored copies agree pixel for pixel,
    so the mean softmax is the model's own; for a model that reads its left neighbour, the
    mean is over the left and right neighbours' readings (the flips are undone)."""
    import torch

    import tta_probe

    torch.manual_seed(0)
    pixelwise = torch.nn.Conv2d(1, 2, 1)
    x = torch.randn(1, 1, 8, 8)
    for k in (4, 8):
        got = tta_probe.mirrored(pixelwise, k)(x).softmax(1)
        torch.testing.assert_close(got, pixelwise(x).softmax(1), atol=1e-6, rtol=0)

    class Left(torch.nn.Module):  # logits (0, value of the left neighbour)
        def forward(self, t):
            shifted = torch.nn.functional.pad(t, (1, 0))[..., :-1]
            return torch.cat([torch.zeros_like(t), shifted], 1)

    x = torch.zeros(1, 1, 1, 5)
    x[..., 2] = 10.0  # one hot pixel: 1 and 3 see it in half of the 4 copies (2 read the left, 2 the right)
    p = tta_probe.mirrored(Left(), 4)(x).softmax(1)[0, 1, 0]
    seen = (0.5 + 1 / (1 + math.exp(-10))) / 2
    expect = torch.tensor([0.5, seen, 0.5, seen, 0.5])
    torch.testing.assert_close(p, expect, atol=1e-4, rtol=0)


def test_evidence_probe_adds_a_bite_back_and_its_per_class_prior_scores_ragged_masks_lower():
    """`adds` on a three-image cache: a lesion with a bite cut off its mask (the model and
    the image see the whole lesion), two correct ones, one missed by the model (so the
    class misses the bar): rule 4 at its defaults adds exactly the bite back.
    `mask_smoothness_per_class`: a disk scores near 1, the same disk with a ragged outline
    lower, as the foreground-as-one prior of the review (`core.mask_prior`) does."""
    import cv2
    import evidence_probe as P

    clean = np.zeros((3, 48, 48), np.uint8)
    for k in range(3):
        cv2.circle(clean[k], (22, 22), 12, 1, -1)
    given = clean.copy()
    given[0, 10:18, 26:36] = 0  # the bite
    p = np.where(clean == 1, 0.97, 0.01).astype(np.float32)
    p[2] = 0.01
    images = np.where(clean == 1, 0.9, 0.1).astype(np.float32)
    d = {"probs": np.stack([1 - p, p], axis=1), "given": given, "clean": clean, "thresholds": None,
         "oos": np.array([True, True, True]), "images": images}
    row = P.adds("tiny", d)
    at_default = P.ADD_GRID.index((0.9, 5, 0.15))
    assert float(row[1]) < 1.0 and row[2 + at_default] == f"{np.mean([1.0, 1.0, 1.0]):.3f} (1)"
    disk = clean[1]
    ragged = disk.copy()
    ragged[::2, :][cv2.dilate(disk, np.ones((3, 3), np.uint8))[::2, :] > disk[::2, :]] = 1
    from ielstudio.core.mask_prior import outline_smoothness

    smooth = P.mask_smoothness_per_class(disk, 2)
    assert smooth > 0.9 and P.mask_smoothness_per_class(ragged, 2) < smooth - 0.05
    assert smooth == pytest.approx(outline_smoothness(disk), abs=1e-6)  # one class: the same prior


def test_evidence_probe_fits_moves_an_outline_drawn_too_wide_onto_the_edge_and_keeps_one_on_it():
    """`fits` on a two-image cache of a bright disk on a dark ground: a mask drawn 2 px too
    wide moves onto the disk's edge (the best-fitting outline, shrunk by 2 px), the
    correct mask stays exactly as it is at every gain; `largest_share` counts a blob."""
    import cv2
    import evidence_probe as P

    clean = np.zeros((2, 48, 48), np.uint8)
    for k in range(2):
        cv2.circle(clean[k], (24, 24), 10, 1, -1)
    given = clean.copy()
    given[0] = cv2.dilate(clean[0], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    p = np.where(clean == 1, 0.9, 0.1).astype(np.float32)
    d = {"probs": np.stack([1 - p, p], axis=1), "given": given, "clean": clean, "thresholds": None,
         "oos": np.array([True, True]), "images": np.where(clean == 1, 0.9, 0.1).astype(np.float32)}
    row = P.fits("tiny", d)
    given_dice = float(row[2])
    assert row[:2] == ["tiny", "2"] and given_dice < 0.95
    at_gain_1 = float(row[3].split()[0])
    assert at_gain_1 > given_dice + 0.04 and at_gain_1 > 0.99
    only_correct = {**d, "given": clean.copy()}
    assert all(cell == "1.000 (min 1.000; 0 px, 0%)" for cell in P.fits("tiny", only_correct)[3:])
    blob = clean[1].copy()
    blob[2:6, 2:6] = 1
    assert P.largest_share(blob) == pytest.approx(clean[1].sum() / blob.sum())
    assert P.largest_share(np.zeros((4, 4), np.uint8)) == 1.0


def test_evidence_probe_hulls_fills_a_bite_the_image_shows_and_leaves_a_true_concavity():
    """`hull_bites`: a disk whose mask lost a wedge, on an image that shows the whole disk,
    gets the wedge back (all of it inside the disk); the same wedge shown as background in
    the image (a true concavity) stays out."""
    import cv2
    import evidence_probe as P

    disk = np.zeros((64, 64), np.uint8)
    cv2.circle(disk, (32, 32), 16, 1, -1)
    bitten = disk.copy()
    cv2.ellipse(bitten, (32, 32), (17, 17), 0, -45, 45, 0, -1)  # a 90 deg wedge from the centre
    whole = np.where(disk == 1, 0.9, 0.1).astype(np.float32)
    filled, n = P.hull_bites(whole, bitten, 0.15)
    assert n == 1 and (filled[bitten == 1] == 1).all() and not (filled & (disk == 0)).any()
    # the hull's chord closes the bite: the triangle, r^2 / 2 of the wedge's pi r^2 / 4 (64 %)
    assert 0.55 < (filled != bitten).sum() / (disk != bitten).sum() < 0.7
    concave = np.where(bitten == 1, 0.9, 0.1).astype(np.float32)
    kept, n = P.hull_bites(concave, bitten, 0.15)
    assert n == 0 and (kept == bitten).all()


def test_realtable_marks_the_rows_it_took_from_an_earlier_run(tmp_path):
    """`write_table`: a row taken with `--rows-from` shows its run beside its time, and the
    header names the file it came from; a row of this run shows its time alone."""
    import realtable

    row = {"set": "report", "labels": "noisy", "dice": 0.8, "min": 0.6, "seconds": 91.2}
    data = {"seed": 0, "classical": {}, "rows": [{**row, "method": "no-iel"},
                                                  {**row, "method": "heat", "from": "stop36-final"}]}
    realtable.write_table(data, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "Rows marked (stop36-final) come from `realtable-stop36-final.json`" in text
    lines = [line for line in text.splitlines() if line.startswith("| report")]
    assert lines[0].endswith("| 91 |") and lines[1].endswith("| 91 (stop36-final) |")
