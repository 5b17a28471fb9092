"""Data sets that do not fit in memory: pairs read when needed (LazySample), patches cut
by DataLoader workers, unreadable files found late skipped and reported, not fatal."""

import json

import numpy as np
import pytest

from ielstudio import cli
from ielstudio.core import cleaning, dataset
from ielstudio.core.dataset import LAZY_CACHE, LazySample, load_samples, load_samples_lazily, scan_pairs
from ielstudio.core.patches import patch_batches
from ielstudio.core.training import DoneEvent, TrainConfig, train

from test_cli import FAST, make_dataset


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", n=10, size=40)


def test_a_lazy_data_set_reads_only_its_probe_until_pixels_are_asked_for(data, monkeypatch):
    reads = []
    real = dataset.read_image
    monkeypatch.setattr(dataset, "read_image", lambda path, *a: reads.append(path.name) or real(path, *a))
    dataset._read_lazily.cache_clear()
    lazy = load_samples_lazily(scan_pairs(*data), probe=3)
    assert len(lazy.samples) == 10 and all(isinstance(s, LazySample) for s in lazy.samples)
    assert len(reads) == 3  # the probe, spread over the scan
    eager = load_samples(scan_pairs(*data))
    assert (lazy.n_classes, lazy.in_channels, lazy.encoding) == (eager.n_classes, eager.in_channels, eager.encoding)
    for a, b in zip(lazy.samples, eager.samples):  # the same pixels, when asked for
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.encoding == b.encoding


def test_training_on_a_lazy_data_set_holds_a_bounded_number_of_images(data):
    dataset._read_lazily.cache_clear()
    samples = load_samples_lazily(scan_pairs(*data)).samples
    config = TrainConfig(max_steps=6, min_steps=2, eval_every=3, crop=32, batch_size=4, width=4, depth=2, device="cpu")
    done = [e for e in train(samples, config) if isinstance(e, DoneEvent)][0]
    assert done.steps > 0 and np.isfinite(done.history["loss"]).all()
    assert dataset._read_lazily.cache_info().currsize <= LAZY_CACHE < len(samples) + LAZY_CACHE
    # foreground patches of a lazy set centre on a labelled pixel of the drawn image
    stream = patch_batches(samples, TrainConfig(foreground_crops=1.0), seed=0, crop=16, batch=8)
    _, y = next(stream)
    assert all((m == 1).any() for m in y)


def test_dataloader_workers_cut_the_batches(data):
    samples = load_samples(scan_pairs(*data)).samples
    stream = patch_batches(samples, TrainConfig(workers=2), seed=0, crop=32, batch=3)
    shapes = [tuple(x.shape) + tuple(y.shape) for x, y in (next(stream) for _ in range(4))]
    stream.close()
    assert shapes == [(3, 1, 32, 32, 3, 32, 32)] * 4
    config = TrainConfig(epochs=1, crop=32, batch_size=2, width=4, depth=2, device="cpu", workers=2)
    done = [e for e in train(samples, config) if isinstance(e, DoneEvent)][0]
    assert done.steps == 5  # 10 images, 2 per step


def test_a_file_found_unreadable_late_is_skipped_and_reported(data, tmp_path, monkeypatch, capsys):
    images, masks = data
    monkeypatch.setattr(cleaning, "LAZY_ABOVE", 0)  # this small set is read lazily too
    monkeypatch.setattr(dataset, "LAZY_PROBE", 2)  # cell_0 and cell_9
    dataset._read_lazily.cache_clear()
    (images / "cell_4.png").write_bytes(b"\x89PNG\r\n\x1a\n broken after the scan")
    out = tmp_path / "out"
    rc = cli.main(["clean", str(images), str(masks), "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "ielstudio-report.json").read_text())
    assert sorted(p.name for p in out.glob("cell_*.png")) == sorted(f"cell_{i}.png" for i in range(10) if i != 4)
    assert [s["path"].rsplit("/", 1)[-1] for s in report["skipped"]] == ["cell_4.png"]
    assert any("could not be read when their turn came" in w for w in report["warnings"])
