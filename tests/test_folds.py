"""k-fold cleaning as K jobs and a merge (`clean --folds K --fold i`, `ielstudio merge`):
the same masks, scores and report as one `clean --folds K` run with the same seed."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ielstudio import cli
from ielstudio.core.folds import FOLD_MANIFEST, fold_model_name
from ielstudio.core.training import CrossFitModel, load_checkpoint

from test_cli import digest, make_dataset

K = 3
TRAIN = ["--steps", "6", "--eval-every", "3", "--device", "cpu", "--crop", "32", "--batch-size", "2",
         "--width", "4", "--depth", "2", "--seed", "3", "--folds", str(K)]
#: what may differ between two runs of the same work: when and where it ran
RUN_FIELDS = ("created", "elapsed_s", "out_dir", "written")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One `clean --folds 3` run, and the same as 3 fold jobs + merge."""
    root = tmp_path_factory.mktemp("folds")
    images, masks = make_dataset(root / "data", n=7)
    one = root / "one"
    assert cli.main(["clean", str(images), str(masks), "--out", str(one), "--save-model", str(root / "one.pt"),
                     "--csv", str(root / "one.csv"), *TRAIN]) == 0
    fold_dirs = [root / f"fold{i}" for i in range(K)]
    for i in (2, 0, 1):  # the jobs of an array finish in any order
        assert cli.main(["clean", str(images), str(masks), "--out", str(fold_dirs[i]), "--fold", str(i), *TRAIN]) == 0
    merged = root / "merged"
    assert cli.main(["merge", *map(str, fold_dirs), "--out", str(merged), "--save-model", str(root / "merged.pt"),
                     "--csv", str(root / "merged.csv")]) == 0
    return root, images, masks, one, fold_dirs, merged


def comparable(report: dict, out: Path) -> dict:
    report = {k: v for k, v in report.items() if k not in RUN_FIELDS}
    report["model"] = {k: v for k, v in report["model"].items() if k != "saved_to"}
    report["images"] = [{**d, "output": Path(d["output"]).relative_to(out).as_posix()} for d in report["images"]]
    return report


def test_fold_jobs_and_merge_give_the_masks_and_report_of_one_run(runs):
    root, images, masks, one, fold_dirs, merged = runs
    masks_of = lambda d: {k: v for k, v in digest(d).items() if k.endswith(".png")}  # noqa: E731
    assert masks_of(merged) == masks_of(one) and len(masks_of(one)) == 7  # byte for byte
    a = json.loads((one / "ielstudio-report.json").read_text())
    b = json.loads((merged / "ielstudio-report.json").read_text())
    assert comparable(b, merged) == comparable(a, one)
    # the scores come from the models: equal scores mean equal fold models, not just masks kept as given
    assert len({d["score"] for d in a["images"]}) > 1 and all(d["out_of_sample"] for d in b["images"])
    assert len(b["training"]["folds"]) == K and b["training"]["steps"] == a["training"]["steps"] > 0
    rows = lambda p, out: (root / p).read_text().replace(str(out), "OUT")  # noqa: E731
    assert rows("merged.csv", merged) == rows("one.csv", one)


def test_a_fold_job_leaves_only_its_model_and_manifest(runs):
    _, images, _, _, fold_dirs, _ = runs
    for i, d in enumerate(fold_dirs):
        assert sorted(p.name for p in d.iterdir()) == sorted([FOLD_MANIFEST, fold_model_name(i, K)])
        manifest = json.loads((d / FOLD_MANIFEST).read_text())
        assert (manifest["fold"], manifest["folds"], manifest["seed"]) == (i, K, 3)
        assert manifest["images_dir"] == str(images.resolve()) and manifest["n_images"] == 7
        model, config, meta = load_checkpoint(d / fold_model_name(i, K))
        assert not isinstance(model, CrossFitModel) and meta["fold"] == i and config.folds == K
        assert sorted(meta["holdout"]) == sorted(manifest["history"]["holdout"])  # the fold's own images


def test_the_merged_model_equals_the_one_run_model(runs):
    root = runs[0]
    a, _, meta_a = load_checkpoint(root / "one.pt")
    b, _, meta_b = load_checkpoint(root / "merged.pt")
    assert isinstance(b, CrossFitModel) and b.fold_of == a.fold_of and len(b.models) == K
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    assert meta_a == meta_b


def _merge(capsys, *args) -> tuple[int, str]:
    rc = cli.main(["merge", *map(str, args)])
    return rc, capsys.readouterr().err


def test_merge_refuses_folders_that_do_not_belong_together(runs, tmp_path, capsys):
    root, images, masks, _, fold_dirs, _ = runs
    rc, err = _merge(capsys, fold_dirs[0], fold_dirs[1], "--out", tmp_path / "o")
    assert rc == 2 and "fold(s) 2 of 3 are missing" in err
    rc, err = _merge(capsys, fold_dirs[0], fold_dirs[1], fold_dirs[1], "--out", tmp_path / "o")
    assert rc == 2 and "holds fold 1" in err and str(fold_dirs[1]) in err
    rc, err = _merge(capsys, fold_dirs[0], fold_dirs[1], images, "--out", tmp_path / "o")
    assert rc == 2 and f"{images}: not a finished fold folder" in err
    # another seed: a fold of another run
    other = tmp_path / "other"
    seed = TRAIN.index("--seed") + 1
    assert cli.main(["clean", str(images), str(masks), "--out", str(other), "--fold", "2",
                     *TRAIN[:seed], "4", *TRAIN[seed + 1:]]) == 0
    rc, err = _merge(capsys, fold_dirs[0], fold_dirs[1], other, "--out", tmp_path / "o")
    assert rc == 2 and "does not belong with" in err and "another seed" in err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_merge_refuses_edited_masks_and_a_replaced_model(runs, tmp_path, capsys):
    root, images, masks, _, fold_dirs, _ = runs
    edited = tmp_path / "masks"
    shutil.copytree(masks, edited)
    m = cv2.imread(str(edited / "cell_0.png"), cv2.IMREAD_GRAYSCALE)
    m[:5, :5] = 255
    cv2.imwrite(str(edited / "cell_0.png"), m)
    rc, err = _merge(capsys, *fold_dirs, "--masks", edited, "--out", tmp_path / "o")
    assert rc == 2 and "not the ones the fold jobs trained on" in err
    swapped = [tmp_path / f"f{i}" for i in range(K)]
    for d, s in zip(fold_dirs, swapped):
        shutil.copytree(d, s)
    shutil.copy(fold_dirs[0] / fold_model_name(0, K), swapped[1] / fold_model_name(1, K))
    rc, err = _merge(capsys, *swapped, "--out", tmp_path / "o")
    assert rc == 2 and "is not the model its fold job wrote" in err and fold_model_name(1, K) in err


def test_fold_flags_are_checked(runs, tmp_path, capsys):
    _, images, masks, _, _, _ = runs
    base = ["clean", str(images), str(masks), "--out", str(tmp_path / "o")]
    assert cli.main([*base, "--fold", "0", "--steps", "2"]) == 2
    assert "--fold needs --folds K" in capsys.readouterr().err
    assert cli.main([*base, *TRAIN, "--fold", "3"]) == 2
    assert "--fold 3 does not exist: with --folds 3 the folds are 0..2" in capsys.readouterr().err
    assert cli.main([*base, *TRAIN, "--fold", "0", "--report", str(tmp_path / "r.json")]) == 2
    assert "--report belong to `ielstudio merge`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
