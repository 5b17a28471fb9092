"""The `ielstudio` command line, run in-process through `main([...])` on a tiny generated dataset."""

import csv
import dataclasses
import hashlib
import io
import json
import runpy
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from ielstudio import cli
from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.iel import IELConfig
from ielstudio.core.training import TrainConfig

# A very small network and a couple of steps: these tests check plumbing, not quality.
FAST = ["--steps", "2", "--device", "cpu", "--crop", "32", "--batch-size", "2", "--width", "4", "--depth", "2"]


def make_dataset(root: Path, n: int = 6, size: int = 48) -> tuple[Path, Path]:
    """n gray images with bright discs and their 0/255 PNG masks, same file names."""
    rng = np.random.default_rng(1)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        for _ in range(3):
            centre = (int(rng.integers(8, size - 8)), int(rng.integers(8, size - 8)))
            cv2.circle(m, centre, int(rng.integers(4, 8)), 255, -1)
        img = (m * 0.6 + 40 + rng.normal(0, 20, m.shape)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"cell_{i}.png"), img)
        cv2.imwrite(str(masks / f"cell_{i}.png"), m)
    return images, masks


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


def test_clean_writes_one_mask_per_input_and_a_report(dataset, tmp_path, capsys):
    images, masks = dataset
    before = digest(masks), digest(images)
    out, csv_path, model = tmp_path / "out", tmp_path / "table.csv", tmp_path / "m.pt"
    rc = cli.main(["clean", str(images), str(masks), "--out", str(out), "--csv", str(csv_path),
                   "--save-model", str(model), *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (digest(masks), digest(images)) == before  # originals untouched
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == [f"cell_{i}.png" for i in range(6)]
    for name in written:
        m = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.shape == (48, 48)
        assert set(np.unique(m).tolist()) <= {0, 255}  # same value convention as the input

    report = json.loads((out / "ielstudio-report.json").read_text())
    for key in ("settings", "model", "seed", "torch_version", "device", "training", "skipped", "images",
                "mask_encoding", "elapsed_s", "mean_score", "written"):
        assert key in report, key
    assert report["settings"]["train"]["max_steps"] == 2
    assert report["settings"]["train"]["width"] == 4
    assert report["settings"]["clean"] == CleanConfig().to_dict()
    thresholds = report["decision_thresholds"]  # one per class, foreground never above 0.5
    assert len(thresholds) == 2 and thresholds[0] == 0.5 and 0.2 <= thresholds[1] <= 0.5
    assert report["training"]["steps"] == 2
    assert report["training"]["stopped_because"] == "max-steps"
    assert report["model"]["arch"] == "unet" and report["model"]["n_parameters"] > 1000
    assert report["mask_encoding"]["values"] == [0, 255]
    assert report["class_names"] == {}  # no dataset.json: the classes are numbered
    assert report["n_images"] == 6 and len(report["images"]) == 6 and report["skipped"] == []
    scores = [d["score"] for d in report["images"]]
    assert scores == sorted(scores) and all(0.0 <= s <= 1.0 for s in scores)
    for d in report["images"]:
        given = cv2.imread(d["mask"], cv2.IMREAD_UNCHANGED) > 0
        cleaned = cv2.imread(d["output"], cv2.IMREAD_UNCHANGED) > 0
        assert d["added"][1] == int((cleaned & ~given).sum())
        assert d["removed"][1] == int((given & ~cleaned).sum())
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("name,score,changed_pixels") and len(rows) == 7
    assert rows[0].endswith(",objects_removed,regions_added,outline_smoothness,outline_fit,output")
    assert report["objects_removed"] == 0
    assert report["regions_added"] == 0 and all(d["regions_added"] == 0 for d in report["images"])
    # where the score includes what the mask and the image say (a 2-step model is far from reliable), each
    # image's report names both factors
    with_priors = report["reliability"]["score_includes_shape_prior"]
    by_name = {r["name"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    for d in report["images"]:
        assert ("outline_smoothness" in d) == ("outline_fit" in d) == with_priors
        assert not with_priors or (0.0 < d["outline_fit"] <= 1.0 and 0.0 <= d["outline_smoothness"] <= 1.0)
        row = by_name[d["name"]]  # report.csv says the same, empty where the score is the model's alone
        assert row["outline_fit"] == (str(d["outline_fit"]) if with_priors else "")
        assert row["outline_smoothness"] == (str(d["outline_smoothness"]) if with_priors else "")
    # one image of six held out: the verdict on the model rests on it, and the command says so
    assert report["reliability"]["n_images"] == 1 and report["reliability"]["out_of_sample"]
    assert "note: the model was checked on only 1 held-out image(s)" in err and "--folds 3" in err
    assert f"{report['model']['n_parameters']:,} parameters" in err
    assert "wrote 6 cleaned mask(s)" in err and "ielstudio-report.json" in err
    changed = sum(1 for d in report["images"] if d["changed_pixels"])
    assert f"changed {changed} of 6 mask(s)\n" in err  # no per-object rule acted: nothing in brackets
    assert f"model saved to {model}" in err and report["model"]["saved_to"] == str(model)

    # the saved model segments a folder of images
    pred = tmp_path / "pred"
    rc = cli.main(["predict", str(model), str(images), "--out", str(pred), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in pred.iterdir())
    assert names == [f"cell_{i}.png" for i in range(6)]
    m = cv2.imread(str(pred / names[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (48, 48) and set(np.unique(m).tolist()) <= {0, 255}


def test_the_report_names_the_classes_of_a_dataset_json_and_an_unreadable_one_is_said(dataset, tmp_path, capsys):
    """nnU-Net's layout: masks in labelsTr, dataset.json beside it; the 0/255 masks take the
    names of the description's 0/1. A broken description: one warning naming it, classes numbered."""
    import shutil

    images, masks = dataset
    root = tmp_path / "Dataset001"
    shutil.copytree(images, root / "imagesTr")
    shutil.copytree(masks, root / "labelsTr")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell": 1}}))
    assert cli.main(["clean", str(root / "imagesTr"), str(root / "labelsTr"), "--out", str(tmp_path / "a"),
                     *FAST]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "a" / "ielstudio-report.json").read_text())
    assert report["class_names"] == {"0": "background", "1": "cell"} and report["mask_encoding"]["values"] == [0, 255]
    about_the_class = [w for w in report["warnings"] if w.startswith("class 1")]  # a 2-step model: not reliable
    assert about_the_class and all(w.startswith("class 1, cell: ") for w in about_the_class)
    (root / "dataset.json").write_text('{"labels": ')
    capsys.readouterr()
    assert cli.main(["clean", str(root / "imagesTr"), str(root / "labelsTr"), "--out", str(tmp_path / "b"),
                     *FAST]) == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "b" / "ielstudio-report.json").read_text())
    assert report["class_names"] == {}
    assert f"warning: {root / 'dataset.json'}: cannot read its class names" in err
    assert any(str(root / "dataset.json") in w for w in report["warnings"])


def test_out_equal_to_masks_folder_is_refused(dataset, capsys):
    images, masks = dataset
    before = digest(masks)
    assert cli.main(["clean", str(images), str(masks), "--out", str(masks), *FAST]) == 2
    err = capsys.readouterr().err
    assert str(masks) in err and "masks folder" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert digest(masks) == before
    assert cli.main(["clean", str(images), str(masks), "--out", str(images), *FAST]) == 2


def test_missing_folder_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope"
    masks = tmp_path / "masks"
    masks.mkdir()
    rc = cli.main(["clean", str(missing), str(masks), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(missing) in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_corrupt_image_is_skipped_and_listed(dataset, tmp_path, capsys):
    images, masks = dataset
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    cv2.imwrite(str(masks / "broken.png"), np.zeros((48, 48), np.uint8))
    out = tmp_path / "out"
    rc = cli.main(["clean", str(images), str(masks), "--out", str(out), "--folds", "2", *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not (out / "broken.png").exists()
    assert len(list(out.glob("cell_*.png"))) == 6
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.png"]
    assert "broken.png" in err and "skipped 1 file(s)" in err
    # --folds 2: each image predicted by the model that did not train on it
    assert report["model"]["out_of_sample"] is True and len(report["training"]["folds"]) == 2


def test_nothing_usable_exits_2(tmp_path, capsys):
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    (images / "a.png").write_bytes(b"garbage")
    cv2.imwrite(str(masks / "a.png"), np.zeros((8, 8), np.uint8))
    rc = cli.main(["clean", str(images), str(masks), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "no usable image/mask pairs" in err and "a.png" in err and "Traceback" not in err


def test_ctrl_c_stops_cleanly_without_output(dataset, tmp_path, monkeypatch, capsys):
    import ielstudio.core.cleaning as cleaning

    real_train = cleaning.train

    def interrupted(*a, **kw):
        gen = real_train(*a, **kw)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(cleaning, "train", interrupted)
    images, masks = dataset
    out = tmp_path / "out"
    assert cli.main(["clean", str(images), str(masks), "--out", str(out), *FAST]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_bad_flag_values_exit_2(dataset, tmp_path, capsys):
    images, masks = dataset
    out = str(tmp_path / "o")
    assert cli.main(["clean", str(images), str(masks), "--out", out, "--iel", "wobble"]) == 2
    assert "--iel" in capsys.readouterr().err
    assert cli.main(["clean", str(images), str(masks), "--out", out, "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "threshold" in err and "Traceback" not in err
    assert not Path(out).exists()


def test_help_explains_every_flag(capsys):
    assert cli.main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in top
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert cli.main(["--version"]) == 0
    assert "ielstudio 0." in capsys.readouterr().out
    assert cli.main(["clean", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--iel", "--convex-classes", "--heat-dt", "--heat-steps", "--convex-dt", "--convex-steps", "--epochs",
                 "--steps", "--arch", "--width", "--device", "--seed", "--checkpoint", "--save-model", "--report",
                 "--folds", "--min-area", "--no-fill-holes", "--convex-hull", "--confident-only", "--lr"):
        assert flag in text, flag


def test_every_config_field_is_reachable_from_a_flag():
    """Flags and dataclasses cannot drift: each field has a flag (hand-written or generated)
    or an explicit exemption, and each mapped name is a real field."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    iel_fields = {f.name for f in dataclasses.fields(IELConfig)}
    clean_fields = {f.name for f in dataclasses.fields(CleanConfig)}
    generated = {f.name for f in cli.advanced_train_fields()}
    exempt = {k.split(".", 1)[1] for k in cli.EXEMPT if k.startswith("TrainConfig.")}
    assert set(cli.TRAIN_FLAGS.values()) <= train_fields
    assert set(cli.IEL_FLAGS.values()) <= iel_fields
    assert set(cli.CLEAN_FLAGS.values()) <= clean_fields
    assert set(cli.TRAIN_FLAGS.values()) | generated | exempt == train_fields
    assert set(cli.IEL_FLAGS.values()) == iel_fields
    assert set(cli.CLEAN_FLAGS.values()) == clean_fields
    # every flag's dest exists on the parser
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["clean"]._actions}
    assert set(cli.TRAIN_FLAGS) | set(cli.IEL_FLAGS) | set(cli.CLEAN_FLAGS) | generated <= dests


def test_flags_reach_the_configs():
    parser = cli.build_parser()
    args = parser.parse_args([
        "clean", "i", "m", "--out", "o", "--arch", "parabolic", "--width", "8", "--epochs", "3", "--steps", "40",
        "--device", "cpu", "--seed", "5", "--checkpoint", "c.pt", "--folds", "3", "--iel", "heat,convex",
        "--convex-classes", "1,2", "--heat-dt", "0.2", "--heat-steps", "10", "--convex-dt", "0.05", "--convex-steps", "7",
        "--convex-radii", "2,4", "--convex-band", "3", "--heat-classes", "0,1", "--lr", "0.01", "--no-augment",
        "--min-area", "4", "--no-fill-holes", "--convex-hull", "--confident-only", "--threshold", "0.8",
        "--edge-tolerance", "2", "--no-adaptive-threshold",
    ])
    train, clean = cli.configs_from_args(args)
    assert (train.arch, train.width, train.epochs, train.max_steps, train.min_steps) == ("parabolic", 8, 3.0, 40, 40)
    assert (train.device, train.seed, train.init_checkpoint, train.folds, train.lr, train.augment) == \
        ("cpu", 5, "c.pt", 3, 0.01, False)
    assert train.adaptive_threshold is False  # the budget judges held-out pixels as cleaning will
    assert train.iel == IELConfig(heat=True, heat_dt=0.2, heat_steps=10, heat_classes=(0, 1), convex_classes=(1, 2),
                                  convex_dt=0.05, convex_steps=7, convex_radii=(2, 4), convex_band=3)
    assert clean == CleanConfig(min_area=4, fill_holes=False, convex_hull_classes=(1, 2), confident_only=True,
                                threshold=0.8, edge_tolerance=2, adaptive_threshold=False)
    # nothing given: the dataclass defaults exactly
    train, clean = cli.configs_from_args(parser.parse_args(["clean", "i", "m", "--out", "o"]))
    assert train == TrainConfig() and clean == CleanConfig()
    train, _ = cli.configs_from_args(parser.parse_args(["clean", "i", "m", "--out", "o", "--iel", "none"]))
    assert train.iel.is_identity


def test_gui_and_demo_pass_through_to_run_app(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("ielstudio.gui.app")
    fake.run_app = lambda **kw: calls.append(kw) or 0
    monkeypatch.setitem(sys.modules, "ielstudio.gui.app", fake)
    assert cli.main([]) == 0
    assert cli.main([str(tmp_path / "imgs"), str(tmp_path / "masks")]) == 0
    assert cli.main(["gui", "review.ielproj"]) == 0
    assert cli.main(["demo", "--train-steps", "5", "--screenshot", "s.png"]) == 0
    assert calls == [
        {},
        {"images_dir": str(tmp_path / "imgs"), "masks_dir": str(tmp_path / "masks")},
        {"project": "review.ielproj"},
        {"demo": True, "train_steps": 5, "screenshot": "s.png"},
    ]


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    """`python -m ielstudio` (run in-process: a subprocess would re-import torch)."""
    monkeypatch.setattr(sys, "argv", ["ielstudio", "clean", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("ielstudio", run_name="__main__")
    assert e.value.code == 0 and "--out DIR" in capsys.readouterr().out


def test_install_and_uninstall_desktop(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cli.main(["install-desktop"]) == 0
    entry = tmp_path / "applications" / "io.github.ielstudio.IELStudio.desktop"
    assert entry.is_file() and "Exec=" in entry.read_text()
    assert str(tmp_path) in capsys.readouterr().err
    assert cli.main(["uninstall-desktop"]) == 0
    assert not entry.exists()


def test_train_saves_a_loadable_model(dataset, tmp_path, capsys):
    from ielstudio.core.training import load_checkpoint

    images, masks = dataset
    assert cli.main(["train", str(images), str(masks), *FAST]) == 2  # --save-model is required
    assert "--save-model" in capsys.readouterr().err
    model_path = tmp_path / "models" / "m.pt"
    assert cli.main(["train", str(images), str(masks), "--save-model", str(model_path), *FAST]) == 0
    assert "model saved to" in capsys.readouterr().err
    model, config, meta = load_checkpoint(model_path)
    assert config.max_steps == 2 and meta["n_classes"] == 2 and meta["encoding"]["values"] == [0, 255]
    assert cli.main(["clean", str(images), str(masks), "--out", str(tmp_path / "o"),
                     "--report", str(masks / "r.json"), *FAST]) == 2
    assert not (masks / "r.json").exists()


def test_progress_bar_text():
    import io

    stream = io.StringIO()
    bar = cli.ProgressBar(stream, width=10)
    for step in range(1, 11):
        bar.update("training", step, 10, f"loss {1 / step:.2f} ETA {cli._duration(10 - step)}")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "training [#.........] 1/10 loss 1.00 ETA 0:09"
    assert lines[-1] == "training [##########] 10/10 loss 0.10 ETA 0:00"
    assert len(lines) == 10  # not a terminal: one line per 10 %
    assert cli._duration(3725) == "1:02:05" and cli._duration(None) == "--:--"


def test_summary_prints_the_report_warnings(capsys, tmp_path):
    report = {"written": ["a.png"], "out_dir": str(tmp_path), "images": [{"score": 0.9}],
              "warnings": ["class 2: the given masks mark 300 pixels, the cleaned masks only 0 (0%); ..."]}
    cli._print_summary(report, tmp_path / "r.json")
    err = capsys.readouterr().err
    assert "warning: class 2: the given masks mark 300 pixels" in err
    cli._print_summary({**report, "warnings": []}, tmp_path / "r.json")
    assert "warning" not in capsys.readouterr().err


def test_output_files_that_would_replace_inputs_or_each_other_are_refused_before_training(dataset, tmp_path, capsys):
    images, masks = dataset
    before = digest(images), digest(masks)
    out = tmp_path / "out"
    cases = [
        (["--report", str(images / "cell_0.png")], "images folder"),       # would replace an input image
        (["--csv", str(images / "cell_1.png")], "images folder"),
        (["--save-model", str(out / "ielstudio-report.json")], "same file"),  # the default report's name
        (["--report", str(out / "cell_0.png")], "cleaned mask"),          # a cleaned mask's name
        (["--report", str(tmp_path / "x.txt"), "--csv", str(tmp_path / "x.txt")], "same file"),
        (["--save-model", str(tmp_path)], "folder"),                      # an existing folder
    ]
    for flags, why in cases:
        assert cli.main(["clean", str(images), str(masks), "--out", str(out), *flags, *FAST]) == 2, flags
        err = capsys.readouterr().err
        assert why in err and "training" not in err and "Traceback" not in err, (flags, err)
    assert (digest(images), digest(masks)) == before
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    assert cli.main(["train", str(images), str(masks), "--save-model", str(images / "cell_2.png"), *FAST]) == 2
    assert "images folder" in capsys.readouterr().err
    assert digest(images) == before[0]


def test_predict_refuses_a_file_as_out_skips_same_stem_images_and_fails_when_nothing_is_segmented(
        dataset, tmp_path, capsys):
    images, masks = dataset
    model = tmp_path / "m.pt"
    assert cli.main(["train", str(images), str(masks), "--save-model", str(model), *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(model), str(images), "--out", str(images / "cell_0.png")]) == 2
    assert "not a folder" in capsys.readouterr().err

    cv2.imwrite(str(images / "cell_0.tif"), cv2.imread(str(images / "cell_0.png")))  # same stem as cell_0.png
    pred = tmp_path / "pred"
    assert cli.main(["predict", str(model), str(images), "--out", str(pred), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "wrote 6 mask(s)" in err and "cell_0.tif: another image has the same name (cell_0.png)" in err
    assert sorted(p.name for p in pred.iterdir()) == [f"cell_{i}.png" for i in range(6)]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.png").write_text("not an image")
    assert cli.main(["predict", str(model), str(bad), "--out", str(tmp_path / "p2"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "wrote 0 mask(s)" in err and "no image" in err and "a.png" in err


def test_predict_never_replaces_masks_of_the_same_names(dataset, tmp_path, capsys):
    images, masks = dataset
    model = tmp_path / "m.pt"
    assert cli.main(["train", str(images), str(masks), "--save-model", str(model), *FAST]) == 0
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    capsys.readouterr()
    assert cli.main(["predict", str(model), str(images), "--out", str(masks), "--device", "cpu"]) == 2
    assert "predict never replaces a file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before


def test_a_run_cut_short_is_reported_by_the_next_run(dataset, tmp_path, capsys):
    from ielstudio.core.cleaning import RUN_MARKER

    images, masks = dataset
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"started": "2026-12-01T10:00:00+00:00"}')  # what a killed run leaves
    (out / "cell_0.png").write_bytes(b"half a mask")
    assert cli.main(["clean", str(images), str(masks), "--out", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "started 2026-12-01T10:00:00+00:00" in err and "ended before it wrote its report" in err
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert any("ended before it wrote its report" in w for w in report["warnings"])
    assert not (out / RUN_MARKER).exists()  # this run finished: no warning next time
    assert cv2.imread(str(out / "cell_0.png"), cv2.IMREAD_UNCHANGED).shape == (48, 48)  # rewritten
    assert cli.main(["clean", str(images), str(masks), "--out", str(out), *FAST]) == 0
    assert "ended before it wrote its report" not in capsys.readouterr().err


def test_nan_pixels_are_repaired_and_said_in_clean_and_predict(dataset, tmp_path, capsys):
    import tifffile

    images, masks = dataset
    bad = cv2.imread(str(images / "cell_1.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    bad[:3, :] = np.nan  # 3 rows of 48
    (images / "cell_1.png").unlink()
    tifffile.imwrite(images / "cell_1.tif", bad)
    out, model = tmp_path / "out", tmp_path / "m.pt"
    assert cli.main(["clean", str(images), str(masks), "--out", str(out), "--save-model", str(model), *FAST]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "cell_1.tif" in err and "144" in err
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert [w for w in report["warnings"] if "cell_1.tif" in w and "144" in w]
    assert cli.main(["predict", str(model), str(images), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("cell_1.tif") == 1 and "144" in err  # once, though calibration reads it twice


def test_sigterm_stops_clean_with_a_message_and_exit_143(dataset, tmp_path):
    """`kill PID` during training: one line, exit 128 + 15, no mask, report or temp file."""
    import signal
    import subprocess

    images, masks = dataset
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ielstudio", "clean", str(images), str(masks), "--out", str(out),
           *FAST[:1], "100000", *FAST[2:]]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until it is training
        lines.append(line)
        if line.startswith("network:"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, "".join(lines) + rest
    assert "stopped by SIGTERM" in rest and "Traceback" not in rest
    assert not out.exists() or not any(out.iterdir())


def test_a_second_sigterm_does_not_interrupt_the_stop_the_first_started():
    """torchrun sends SIGTERM to every rank when one fails; a rank already stopping (leaving
    its process group in `finally`) must not get a second Terminated there (a raw traceback)."""
    import signal

    previous = cli._stop_on_sigterm()
    try:
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(cli.Terminated):
            handler(signal.SIGTERM, None)
        assert handler(signal.SIGTERM, None) is None  # the second: ignored, the cleanup goes on
    finally:
        signal.signal(signal.SIGTERM, previous)
    fresh = cli._stop_on_sigterm()  # a new command gets a new handler that raises again
    try:
        with pytest.raises(cli.Terminated):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, fresh)


def test_a_sigterm_during_the_last_cleanup_goes_to_the_old_handler_not_a_traceback(monkeypatch, tmp_path):
    """`main`'s `finally` leaves the process group after the command has ended; a SIGTERM
    then (torchrun stopping the run) reaches the handler from before the command, and
    `main` returns its code instead of raising Terminated out of `finally`."""
    import os
    import signal

    from ielstudio.core import distributed

    def shutdown(finished):
        if not finished:
            os.kill(os.getpid(), signal.SIGTERM)

    got = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        monkeypatch.setattr(distributed, "shutdown", shutdown)
        missing = tmp_path / "nowhere"
        assert cli.main(["clean", str(missing), str(missing), "--out", str(tmp_path / "out")]) == 2
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_starting_exits_130_without_a_traceback(monkeypatch, capsys):
    """A KeyboardInterrupt while `ielstudio.cli` (and torch) is being imported."""
    from ielstudio import entry

    class InterruptImport:
        def find_spec(self, name, path=None, target=None):
            if name == "ielstudio.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "ielstudio.cli")
    monkeypatch.delattr(sys.modules["ielstudio"], "cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [InterruptImport(), *sys.meta_path])
    assert entry.main(["clean", "--help"]) == 130
    assert "interrupted while starting" in capsys.readouterr().err


def test_an_unreadable_masks_folder_is_named(dataset, tmp_path, monkeypatch, capsys):
    import os

    from ielstudio.core import cleaning

    images, masks = dataset
    real_access = os.access
    monkeypatch.setattr(cleaning.os, "access",  # as without read permission (tests may run as root)
                        lambda p, mode: False if Path(p) == masks.resolve() and mode & os.R_OK else real_access(p, mode))
    assert cli.main(["clean", str(images), str(masks), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{masks.resolve()}: masks folder cannot be read (permission denied)" in err
    assert "ielstudio-report.json" not in err


def test_old_heat_flag_names_still_work():
    parser = cli.build_parser()
    old, _ = cli.configs_from_args(parser.parse_args(["clean", "i", "m", "--out", "o", "--iel-dt", "0.2",
                                                      "--iel-steps", "7"]))
    new, _ = cli.configs_from_args(parser.parse_args(["clean", "i", "m", "--out", "o", "--heat-dt", "0.2",
                                                      "--heat-steps", "7"]))
    assert old == new and (new.iel.heat_dt, new.iel.heat_steps) == (0.2, 7)


def test_the_summary_says_how_many_masks_changed_and_what_the_per_object_rules_did(capsys):
    report = {"written": ["a", "b", "c"], "out_dir": "OUT", "objects_removed": 1, "regions_added": 2,
              "images": [{"score": 0.5, "changed_pixels": 40}, {"score": 0.9, "changed_pixels": 0},
                         {"score": 0.7, "changed_pixels": 3}]}
    cli._print_summary(report, "OUT/report.json")
    err = capsys.readouterr().err
    assert ("changed 2 of 3 mask(s) (1 object(s) removed and 2 region(s) added where the model and the image "
            "agree)") in err
