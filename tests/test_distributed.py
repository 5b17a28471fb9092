"""Training on several processes (PyTorch DDP, gloo on CPU): the ranks take the same steps
and end with the same weights, which match one process with the same total batch; under
torchrun only rank 0 writes, prediction is shared out, a killed rank stops the run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ielstudio import cli
from ielstudio.core.dataset import load_samples, scan_pairs
from ielstudio.core.training import DoneEvent, TrainConfig, load_checkpoint, predict, train

from test_cli import make_dataset

TINY = dict(device="cpu", crop=32, batch_size=4, width=4, depth=2)
#: A fixed budget on whole images without augmentation: both runs see the same 4 images
#: at every step, one process as a batch of 4, two ranks as 2 each.
FIXED = TrainConfig(epochs=20, augment=False, foreground_crops=0.0, **TINY)
#: The automatic budget: rank 0's held-out verdict decides when every rank stops.
AUTO = TrainConfig(max_steps=30, min_steps=6, eval_every=3, patience=1, learned_agreement=0.0, **TINY)
#: Largest difference of a predicted probability between one process and two ranks after
#: FIXED; measured 0.031 (0.038 without the Dice term): each rank's BatchNorm normalises by
#: its own 2 images (no SyncBatchNorm on CPU) and the batch's soft Dice is pooled per rank.
PROB_TOLERANCE = 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(root: Path):
    return load_samples(scan_pairs(root / "images", root / "masks")).samples


def _train(samples, config) -> DoneEvent:
    return [e for e in train(samples, config) if isinstance(e, DoneEvent)][0]


def _rank(rank: int, world: int, port: int, root: Path, out: Path) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from ielstudio.core import distributed

    distributed.init_from_env("cpu")
    try:
        result = {}
        for name, config in (("fixed", FIXED), ("auto", AUTO)):
            done = _train(_samples(root), config)
            result[name] = {"steps": done.steps, "reason": done.reason, "state": done.model.state_dict(),
                            "world_size": done.history["world_size"],
                            "probs": [torch.from_numpy(predict(done.model, s.image)) for s in _samples(root)]}
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    images, _ = make_dataset(root / "data", n=4, size=32)
    data = images.parent
    mp.spawn(_rank, args=(2, _free_port(), data, root), nprocs=2)
    return data, [torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_both_ranks_take_the_same_steps_and_end_with_the_same_weights(two_ranks):
    _, (r0, r1) = two_ranks
    for name in ("fixed", "auto"):
        assert r0[name]["steps"] == r1[name]["steps"] > 0 and r0[name]["reason"] == r1[name]["reason"]
        assert r0[name]["world_size"] == r1[name]["world_size"] == 2
        assert r0[name]["state"].keys() == r1[name]["state"].keys()
        for key, value in r0[name]["state"].items():  # parameters and BatchNorm statistics
            assert torch.equal(value, r1[name]["state"][key]), key
    assert r0["fixed"]["steps"] == 20  # 20 epochs of 4 images, total batch 4


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_total_batch(two_ranks, one_torch_thread):
    data, (r0, _) = two_ranks
    single = _train(_samples(data), FIXED)
    assert single.steps == r0["fixed"]["steps"]
    ps = [predict(single.model, s.image) for s in _samples(data)]
    qs = [p.numpy() for p in r0["fixed"]["probs"]]
    diff = max(float(np.abs(p - q).max()) for p, q in zip(ps, qs))
    assert diff < PROB_TOLERANCE
    assert all(np.array_equal(p.argmax(0), q.argmax(0)) for p, q in zip(ps, qs))
    # the tolerance tells runs apart: half the steps move the probabilities by more than it
    half = _train(_samples(data), TrainConfig(**{**FIXED.to_dict(), "epochs": 10}))
    moved = max(float(np.abs(predict(half.model, s.image) - p).max()) for s, p in zip(_samples(data), ps))
    assert moved > PROB_TOLERANCE


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "ielstudio", *args]


FLAGS = ["--device", "cpu", "--crop", "32", "--batch-size", "4", "--width", "4", "--depth", "2"]


@pytest.mark.slow
def test_under_torchrun_rank_0_writes_and_prediction_is_shared(tmp_path):
    images, masks = make_dataset(tmp_path / "data", n=6, size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, model = tmp_path / "out", tmp_path / "m.pt"
    run = subprocess.run(_torchrun("clean", str(images), str(masks), "--out", str(out), "--save-model", str(model),
                                   "--steps", "6", "--eval-every", "3", *FLAGS),
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("wrote 6 cleaned mask(s)") == 1  # rank 0 speaks for both
    assert "predicting [############################] 3/3" in run.stderr  # ... and scored its half
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert report["n_images"] == 6 and len(report["written"]) == 6
    assert report["training"]["world_size"] == 2
    trained, _, meta = load_checkpoint(model)  # opens like a local model
    assert meta["world_size"] == 2
    # each rank scored and wrote its share; together they are what one process makes of the model
    from ielstudio.core.cleaning import CleanConfig, load_dataset
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.review import review_samples

    samples = load_dataset(images, masks).samples
    alone = {r.name: r for r in review_samples(trained, samples, CleanConfig(), meta["holdout"])}
    assert {row["name"]: row["score"] for row in report["images"]} == {n: round(r.score, 6) for n, r in alone.items()}
    for s in samples:
        np.testing.assert_array_equal(read_mask(out / s.mask_path.name)[0], alone[s.name].proposal)
    assert report["written"] == [str(out / s.mask_path.name) for s in samples]
    pred = tmp_path / "pred"
    run = subprocess.run(_torchrun("predict", str(model), str(images), "--out", str(pred), "--device", "cpu"),
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in pred.iterdir()) == sorted(p.name for p in images.iterdir())
    assert run.stderr.count("wrote 6 mask(s)") == 1  # each rank wrote 3, rank 0 counts all


def _children(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_killing_one_rank_stops_the_run_with_a_message(tmp_path):
    images, masks = make_dataset(tmp_path / "data", n=6, size=32)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(_torchrun("train", str(images), str(masks), "--save-model", str(tmp_path / "m.pt"),
                                          "--epochs", "100000", "--steps", "100000", *FLAGS),
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "training" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        victims = [p for p in _children(proc.pid) if _rank_of(p) == "1"]
        assert victims, f"no rank-1 process among {_children(proc.pid)}"
        victim = victims[0]
        os.kill(victim, signal.SIGKILL)
        rc = proc.wait(timeout=90)  # not a hang: the other rank is stopped too
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc != 0, text[-3000:]
    assert "rank      : 1" in text and "SIGKILL" in text, text[-3000:]  # torchrun names the rank that failed
    # rank 0 was stopped by torchrun, or found its peer gone first; either way it says so
    assert ("ielstudio train: stopped by SIGTERM" in text
            or "stopped because another process of this run failed" in text), text[-3000:]
    assert "[rank0]: Traceback" not in text  # a message, not a raw traceback
    assert not (tmp_path / "m.pt").exists()


def test_single_process_commands_refuse_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["merge", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "runs in one process; start it without torchrun" in capsys.readouterr().err
