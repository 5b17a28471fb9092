"""The review project file: schema, migration, decisions with provenance, paging at 100k, export."""

import json
import os
import sqlite3
import time

import numpy as np
import pytest

from ielstudio.core import session as S
from ielstudio.core.errors import DataError
from ielstudio.core.session import Project, Provenance


def _project(tmp_path, n=3):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    p = Project.create(tmp_path / "review.ielproj", tmp_path / "images", tmp_path / "masks")
    p.add_images((f"img{i}", tmp_path / "images" / f"img{i}.png", tmp_path / "masks" / f"img{i}.png")
                 for i in range(n))
    return p


def test_create_open_meta_and_pragmas(tmp_path):
    p = _project(tmp_path)
    assert p.schema_version == S.SCHEMA_VERSION == 4
    assert p.images_dir == (tmp_path / "images").resolve()
    assert p.masks_dir == (tmp_path / "masks").resolve()
    assert p.app_version == "0.1.0" and p.created.endswith("+00:00")
    assert p._q("PRAGMA journal_mode")[0][0] == "wal"
    assert p._q("PRAGMA foreign_keys")[0][0] == 1
    assert p._q("PRAGMA application_id")[0][0] == S.APPLICATION_ID
    p.close()
    # no temp file left behind; creating over an existing project is refused
    assert sorted(f.name for f in tmp_path.iterdir()) == ["images", "masks", "review.ielproj"]
    with pytest.raises(DataError, match="already exists"):
        Project.create(tmp_path / "review.ielproj", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="closed"):
        p.count()
    with Project.open(tmp_path / "review.ielproj") as q:
        assert len(q) == 3 and q.counts() == {"unreviewed": 3, "accepted": 0, "kept": 0, "edited": 0,
                                              "skipped": 0}


def test_corrupt_foreign_newer_and_missing_files_raise_dataerror(tmp_path):
    bad = tmp_path / "junk.ielproj"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DataError) as e:
        Project.open(bad)
    assert str(e.value).startswith(str(bad)) and e.value.path == bad

    other = tmp_path / "other.ielproj"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE t(x)")
    c.commit()
    c.close()
    with pytest.raises(DataError, match="not an IEL Studio project"):
        Project.open(other)

    p = _project(tmp_path)
    p.close()
    c = sqlite3.connect(tmp_path / "review.ielproj")
    c.execute("PRAGMA user_version = 99")
    c.close()
    with pytest.raises(DataError, match="newer IEL Studio"):
        Project.open(tmp_path / "review.ielproj")

    (tmp_path / "empty.ielproj").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        Project.open(tmp_path / "empty.ielproj")
    with pytest.raises(DataError, match="no such project file"):
        Project.open(tmp_path / "missing.ielproj")


def test_v1_file_made_by_raw_sql_migrates_without_losing_data(tmp_path):
    path = tmp_path / "old.ielproj"
    c = sqlite3.connect(path, isolation_level=None)
    c.executescript(S.MIGRATIONS[0])
    c.execute("PRAGMA user_version = 1")
    c.executemany("INSERT INTO meta VALUES (?, ?)", [("images_dir", "/data/img"), ("masks_dir", "/data/msk"),
                                                      ("created", "2025-01-01T00:00:00+00:00"),
                                                      ("app_version", "0.0.9")])
    c.execute("INSERT INTO images(name, image_path, mask_path, score) VALUES ('a', '/data/img/a.png', "
              "'/data/msk/a.png', 0.25)")
    codec, data = S.encode_mask(np.array([[0, 1], [2, 1]]))
    c.execute("INSERT INTO masks(sha256, height, width, codec, data) VALUES ('h', 2, 2, ?, ?)", (codec, data))
    c.execute("INSERT INTO decisions(image_id, status, mask_id, who, at, settings) VALUES "
              "(1, 'edited', 1, 'ann', '2025-01-02T00:00:00+00:00', '{\"brush\": 3}')")
    c.execute("UPDATE images SET status = 'edited', decision_id = 1 WHERE id = 1")
    c.close()

    with Project.open(path) as p:
        assert p.schema_version == S.SCHEMA_VERSION
        assert p.app_version == "0.0.9" and p.images_dir.as_posix() == "/data/img"
        row = p.image("a")
        assert (row.status, row.score, row.decided_at) == ("edited", 0.25, "2025-01-02T00:00:00+00:00")
        d = p.decision("a")
        assert (d.who, d.settings) == ("ann", {"brush": 3})
        np.testing.assert_array_equal(p.final_mask("a"), [[0, 1], [2, 1]])
        # the v2 additions work: settings table and the status/score index
        p.set_setting("brush_radius", 5)
        assert p.get_setting("brush_radius") == 5
        idx = {r[1] for r in p._q("PRAGMA index_list(images)")}
        assert {"images_status_queue", "images_changed", "images_queue"} <= idx
    with Project.open(path) as p:  # reopening does not migrate twice
        assert p.get_setting("brush_radius") == 5 and p.schema_version == S.SCHEMA_VERSION
        assert p.proposal("a") is None and p._q("SELECT count(*) FROM proposals")[0][0] == 0  # v3: empty
        assert p.image("a").score_parts is None  # v4: an old score's parts are not known


@pytest.mark.parametrize("mask", [
    np.array([[0, 1, 1], [2, 0, 255]]),
    np.array([[0, 300], [65535, 7]]),
    np.array([[0, 70000], [1, 2]]),
    np.zeros((5, 3), dtype=bool),
])
def test_mask_blob_roundtrip_is_lossless(mask):
    codec, data = S.encode_mask(mask)
    assert codec == ("zlib" if mask.max() >= 65536 else "png")
    out = S.decode_mask(codec, data, *mask.shape)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, mask.astype(np.int64))


def test_encode_mask_rejects_bad_arrays():
    with pytest.raises(ValueError):
        S.encode_mask(np.array([[0, -1]]))
    with pytest.raises(ValueError):
        S.encode_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        S.encode_mask(np.zeros((2, 2), np.float32))


def test_decisions_provenance_history_and_undo(tmp_path):
    p = _project(tmp_path)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    ref = p.set_checkpoint(ckpt)
    import hashlib

    assert ref.sha256 == hashlib.sha256(b"weights").hexdigest() and p.checkpoint.path == ckpt.resolve()

    assert p.decision("img0").id is None and p.decision("img0").status == "unreviewed"
    assert p.final_mask("img0") is None
    proposal = np.zeros((8, 8), np.int64)
    proposal[2:6, 2:6] = 1
    d1 = p.record_decision("img0", "accepted", proposal,
                           Provenance(who="alice", settings={"iel": "heat,convex", "threshold": 0.5}))
    assert (d1.status, d1.who, d1.checkpoint_sha256) == ("accepted", "alice", ref.sha256)
    assert d1.settings == {"iel": "heat,convex", "threshold": 0.5}
    np.testing.assert_array_equal(p.final_mask("img0"), proposal)
    assert p.image("img0").status == "accepted" and p.image("img0").decided_at == d1.at

    edited = proposal.copy()
    edited[0, 0] = 2
    p.record_decision("img0", "edited", edited, Provenance(who="bob"))
    np.testing.assert_array_equal(p.final_mask("img0"), edited)
    # undo: restore the previous decision (no re-encoding, same mask row)
    prev = p.history("img0")[-2]
    d3 = p.restore("img0", prev)
    assert d3.mask_id == d1.mask_id and d3.status == "accepted" and d3.settings == d1.settings
    np.testing.assert_array_equal(p.final_mask("img0"), proposal)
    # re-recording an identical array dedups the blob too
    d4 = p.record_decision("img0", "accepted", proposal.copy())
    assert d4.mask_id == d1.mask_id
    assert p._q("SELECT count(*) FROM masks")[0][0] == 2
    assert [h.status for h in p.history("img0")] == ["accepted", "edited", "accepted", "accepted"]

    p.record_decision("img1", "skipped", reason="image unreadable")
    p.record_decision("img2", "kept")
    assert p.image("img1").skip_reason == "image unreadable" and p.final_mask("img2") is None
    p.record_decision("img1", "kept")
    assert p.image("img1").skip_reason is None
    assert p.counts() == {"unreviewed": 0, "accepted": 1, "kept": 2, "edited": 0, "skipped": 0}

    with pytest.raises(ValueError, match="needs mask"):
        p.record_decision("img0", "edited")
    with pytest.raises(ValueError, match="takes no mask"):
        p.record_decision("img0", "kept", proposal)
    with pytest.raises(ValueError, match="status"):
        p.record_decision("img0", "maybe")
    with pytest.raises(KeyError):
        p.record_decision("nope", "kept")
    p.close()


def test_decision_survives_a_crash_of_the_process(tmp_path):
    """Each decision is committed on its own: another connection sees it before close()."""
    p = _project(tmp_path)
    m = np.eye(4, dtype=np.int64)
    p.record_decision("img1", "edited", m)
    other = Project.open(tmp_path / "review.ielproj")  # as if the app had died and restarted
    np.testing.assert_array_equal(other.final_mask("img1"), m)
    other.close()
    p.close()


def test_failed_decision_rolls_back_completely(tmp_path):
    p = _project(tmp_path)
    n_masks = p._q("SELECT count(*) FROM masks")[0][0]
    with pytest.raises(KeyError):
        p.record_decision("missing", "edited", np.ones((3, 3), np.int64))
    assert p._q("SELECT count(*) FROM masks")[0][0] == n_masks == 0
    assert p._q("SELECT count(*) FROM decisions")[0][0] == 0


def test_planned_decisions_record_in_one_transaction_all_or_none_and_undo_together(tmp_path):
    """Decisions made ready elsewhere (a worker) record together, refuse together when an
    image was decided after its plan was made, and restore together."""
    p = _project(tmp_path, n=4)
    p.record_decision("img3", "kept")
    proposal = {f"img{i}": np.full((4, 5), i, np.int64) for i in range(4)}
    plans, missing = S.plan_decisions(p, ["img0", "img1", "img2", "img3"], "accepted",
                                      lambda n: proposal[n] if n != "img2" else None)
    assert [q.name for q in plans] == ["img0", "img1"] and missing == ["img2"]  # img3 is decided: left alone
    assert p._q("SELECT count(*) FROM decisions")[0][0] == 1  # planning records nothing
    # img1 is decided after the plan: nothing of the plan is recorded
    p.record_decision("img1", "edited", np.ones((4, 5), np.int64))
    n_decisions = p._q("SELECT count(*) FROM decisions")[0][0]
    with pytest.raises(S.DecisionChanged, match="img1 was changed meanwhile"):
        p.record_planned(plans)
    assert p._q("SELECT count(*) FROM decisions")[0][0] == n_decisions and p.image("img0").status == "unreviewed"
    # planned again, it records both in one go, with what they replaced
    plans, _ = S.plan_decisions(p, ["img0", "img2"], "accepted", proposal.get)
    done = p.record_planned(plans, Provenance(who="carol"))
    assert [(b.status, a.status, a.who) for b, a in done] == [("unreviewed", "accepted", "carol")] * 2
    np.testing.assert_array_equal(p.final_mask("img2"), proposal["img2"])
    p.restore_all([b for b, _ in done])  # undo
    assert p.image("img0").status == p.image("img2").status == "unreviewed" and p.final_mask("img2") is None
    n_masks = p._q("SELECT count(*) FROM masks")[0][0]
    p.restore_all([a for _, a in done])  # redo: by reference, no new mask rows
    np.testing.assert_array_equal(p.final_mask("img0"), proposal["img0"])
    assert p._q("SELECT count(*) FROM masks")[0][0] == n_masks
    with pytest.raises(ValueError, match="takes no mask"):
        S.plan_decision("img0", "kept", np.zeros((2, 2), np.int64), None)
    p.close()


def test_paging_filters_and_orderings(tmp_path):
    p = _project(tmp_path, n=6)
    assert p.set_scores({"img0": 0.9, "img1": 0.1, "img2": 0.5}) == 3
    assert p.set_scores([("img3", 0.3, 0.2), ("img4", 0.7, 0.05), ("ghost", 0.0, 0.0)]) == 2
    assert [r.name for r in p.images()] == ["img1", "img3", "img2", "img4", "img0", "img5"]
    assert [r.name for r in p.images("-score", limit=2)] == ["img0", "img4"]
    assert [r.name for r in p.images("score", limit=2, offset=2)] == ["img2", "img4"]
    assert [r.name for r in p.images("changed", limit=2)] == ["img3", "img4"]
    p.record_decision("img3", "kept")
    assert [r.name for r in p.images(status="unreviewed", limit=2)] == ["img1", "img2"]
    assert [r.name for r in p.images(status=("kept", "accepted"))] == ["img3"]
    assert p.count(status="unreviewed") == 5 and p.count(search="IMG4") == 1
    with pytest.raises(ValueError):
        p.images(order_by="colour")
    p.close()


def test_100k_images_insert_score_and_page_fast(tmp_path):
    p = Project.create(tmp_path / "big.ielproj", tmp_path, tmp_path)
    n = 100_000
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    t0 = time.perf_counter()
    assert p.add_images((f"im{i:06d}", f"/d/img/im{i:06d}.png", f"/d/msk/im{i:06d}.png") for i in range(n)) == n
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert p.set_scores((f"im{i:06d}", float(scores[i]), 0.0) for i in range(n)) == n
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(10):
        page = p.images("score", status="unreviewed", limit=50, offset=k * 50)
    t_page = (time.perf_counter() - t0) / 10
    worst = np.argsort(scores)[450:500]
    assert [r.name for r in page] == [f"im{i:06d}" for i in worst]
    p.record_decision("im000123", "kept")
    assert p.count(status="unreviewed") == n - 1
    print(f"100k: add {t_add:.2f}s, scores {t_score:.2f}s, page {t_page * 1000:.1f} ms")
    assert t_add < 10 and t_score < 10 and t_page < 0.05
    p.close()
    assert (tmp_path / "big.ielproj").stat().st_size < 30e6


def test_settings_roundtrip(tmp_path):
    p = _project(tmp_path)
    assert p.get_setting("missing", 7) == 7
    p.set_setting("clean", {"min_area": 20, "classes": [1, 2]})
    p.set_setting("clean", {"min_area": 30})
    assert p.settings() == {"clean": {"min_area": 30}}
    p.close()


# --------------------------------------------------------------------------- export

def _dataset(tmp_path):
    """Three 16x16 binary PNG masks stored as 0/255, an untouched copy of their bytes."""
    import cv2

    pytest.importorskip("ielstudio.core.imageio")

    img_dir, msk_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    msk_dir.mkdir()
    originals = {}
    for i in range(3):
        image = np.full((16, 16), 40 * i, np.uint8)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:4 + 2 * (i + 1)] = 255
        cv2.imwrite(str(img_dir / f"s{i}.png"), image)
        cv2.imwrite(str(msk_dir / f"s{i}.png"), mask)
        originals[f"s{i}"] = (msk_dir / f"s{i}.png").read_bytes()
    p = Project.create(tmp_path / "r.ielproj", img_dir, msk_dir)
    p.add_images((f"s{i}", img_dir / f"s{i}.png", msk_dir / f"s{i}.png") for i in range(3))
    return p, originals


def test_export_writes_final_masks_in_input_format_and_reports(tmp_path):
    import cv2

    p, originals = _dataset(tmp_path)
    p.set_scores([("s0", 0.2, 0.1), ("s1", 0.8, 0.0)])
    accepted = np.zeros((16, 16), np.int64)
    accepted[2:14, 2:14] = 1  # 144 foreground pixels
    p.record_decision("s0", "accepted", accepted, Provenance(who="alice", settings={"iel": "heat"}))
    p.record_decision("s1", "kept")
    out = tmp_path / "out"
    events = list(S.iter_export(p, out))
    assert [e.done for e in events[:-1]] == [1, 2, 3] and isinstance(events[-1], S.ExportDone)
    report = events[-1].report
    assert (report.written, report.errors) == (3, 0)

    s0 = cv2.imread(str(out / "s0.png"), cv2.IMREAD_UNCHANGED)
    assert s0.dtype == np.uint8 and set(np.unique(s0)) == {0, 255}
    assert int((s0 == 255).sum()) == 144 and s0[2, 2] == 255 and s0[1, 1] == 0
    for name in ("s1", "s2"):  # kept / unreviewed: the original pixels, re-encoded
        np.testing.assert_array_equal(cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED),
                                      cv2.imread(str(tmp_path / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED))
    for name, data in originals.items():  # originals untouched
        assert (tmp_path / "masks" / f"{name}.png").read_bytes() == data

    doc = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in doc["images"]}
    assert doc["written"] == 3 and doc["finished"] is True
    assert doc["all_reviewed"] is False  # s2 was never reviewed
    assert rows["s0"]["pixels_before"] == {"0": 256 - 16, "1": 16}
    assert rows["s0"]["pixels_after"] == {"0": 112, "1": 144}
    assert rows["s0"]["changed_pixels"] == 128 and rows["s0"]["who"] == "alice"
    # the changed fraction is what was written (128 of 256 px), the proposal's own is kept beside it
    assert rows["s0"]["changed_fraction"] == 0.5 and rows["s0"]["proposal_changed_fraction"] == 0.1
    assert rows["s1"]["changed_fraction"] == 0.0  # kept: the proposal would have changed nothing here
    assert rows["s0"]["settings"] == {"iel": "heat"} and rows["s0"]["score"] == 0.2
    assert rows["s1"]["changed_pixels"] == 0 and rows["s1"]["status"] == "kept"
    assert rows["s2"]["pixels_after"] == {"0": 256 - 48, "1": 48}
    lines = (out / "report.csv").read_text().splitlines()
    head = lines[0].split(",")
    first = dict(zip(head, lines[1].split(",")))
    assert head[:7] == ["name", "status", "output", "score", "changed_fraction", "changed_pixels",
                        "proposal_changed_fraction"]
    assert (first["name"], first["before_1"], first["after_1"], first["changed_pixels"]) == ("s0", "16", "144", "128")
    assert (first["changed_fraction"], first["proposal_changed_fraction"]) == ("0.5", "0.1")
    p.record_decision("s2", "kept")
    S.export_project(p, tmp_path / "out2")
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["all_reviewed"] is True
    p.close()


def test_export_refuses_the_masks_folder_and_reports_bad_files(tmp_path):
    p, originals = _dataset(tmp_path)
    with pytest.raises(DataError, match="original masks folder"):
        S.export_project(p, tmp_path / "masks")
    (tmp_path / "masks" / "s1.png").write_bytes(b"broken")
    p.record_decision("s2", "edited", np.ones((5, 5), np.int64))  # wrong size
    report = S.export_project(p, tmp_path / "out")
    by = {r["name"]: r for r in report.rows}
    assert report.written == 1 and report.errors == 2
    assert "s1.png" in by["s1"]["error"] and "5x5" in by["s2"]["error"]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["report.csv", "report.json", "s0.png"]
    assert (tmp_path / "masks" / "s0.png").read_bytes() == originals["s0"]
    p.close()


def test_export_can_be_cancelled(tmp_path):
    p, _ = _dataset(tmp_path)
    seen = []
    for ev in S.iter_export(p, tmp_path / "out", cancel=lambda: len(seen) >= 1):
        seen.append(ev)
    assert isinstance(seen[-1], S.ExportDone) and len(seen[-1].report.rows) == 1
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["finished"] is False and doc["all_reviewed"] is False
    p.close()


# ------------------------------------------------------------------ hostile input (issue 19)

def test_a_copy_of_the_project_file_alone_holds_every_committed_decision(tmp_path):
    import shutil

    p = _project(tmp_path)
    m = np.zeros((6, 6), np.int64)
    m[1:3, 1:3] = 1
    p.record_decision("img1", "edited", m)
    p.record_decision("img2", "kept")
    copy = tmp_path / "copy.ielproj"
    shutil.copyfile(tmp_path / "review.ielproj", copy)  # no -wal: what a file manager copies
    with Project.open(copy) as c:
        assert c.decision("img2").status == "kept"
        np.testing.assert_array_equal(c.final_mask("img1"), m)
    p.close()
    wal = tmp_path / "review.ielproj-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # close checkpoints and truncates


def _damaged_project(tmp_path):
    p = _project(tmp_path, n=40)
    rng = np.random.default_rng(0)
    for i in range(40):  # incompressible masks: their blobs span many pages
        p.record_decision(f"img{i}", "edited", rng.integers(0, 200, (64, 64)))
    p.close()
    path = tmp_path / "review.ielproj"
    data = bytearray(path.read_bytes())
    page = 4096
    n_pages = len(data) // page
    assert n_pages > 20
    for k in range(n_pages - 8, n_pages - 2):  # damage past the first pages
        data[k * page:(k + 1) * page] = b"\xff" * page
    path.write_bytes(bytes(data))
    return path


def test_damage_past_the_first_pages_is_found_on_open(tmp_path):
    path = _damaged_project(tmp_path)
    with pytest.raises(S.DamagedProjectError, match="damaged") as e:  # was: opened, failed later
        Project.open(path)
    assert isinstance(e.value, DataError) and e.value.path == path and "read-only" in str(e.value)
    with Project.open(path, read_only=True) as p:  # salvage what is readable
        assert p.damage and p.read_only
        assert len(p) == 40
        with pytest.raises(DataError, match="read-only"):
            p.record_decision("img0", "kept")
        errors = 0
        for i in range(40):
            try:
                p.final_mask(f"img{i}")
            except S.DamagedProjectError:
                errors += 1
        assert errors > 0  # damaged parts raise the project's own error, never sqlite3's


def test_sqlite_errors_in_use_become_the_projects_own_error(tmp_path):
    p = _project(tmp_path)

    class Broken:
        def execute(self, *a):
            raise sqlite3.DatabaseError("database disk image is malformed")

        def close(self):
            pass

    real = p._conn
    p._conn = Broken()
    with pytest.raises(S.DamagedProjectError):
        p.images()
    with pytest.raises(S.DamagedProjectError):
        p.record_decision("img0", "kept")
    p._conn = real
    p.close()


def test_names_and_paths_that_are_not_utf8_are_stored_and_exported(tmp_path):
    import sys

    from ielstudio.core.imageio import atomic_write_image

    if not sys.platform.startswith("linux"):
        pytest.skip("non-UTF-8 file names are a Linux matter")
    name = os.fsdecode(b"\xff")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((5, 5), np.uint8)
    mask[1:3, 1:3] = 255
    atomic_write_image(tmp_path / "masks" / f"{name}.png", mask)
    p = Project.create(tmp_path / "review.ielproj", tmp_path / "images", tmp_path / "masks")
    assert p.add_images([(name, tmp_path / "images" / f"{name}.png", tmp_path / "masks" / f"{name}.png"),
                         ("plain", tmp_path / "images" / "plain.png", tmp_path / "masks" / "plain.png")]) == 2
    assert p.image(name).mask_path == tmp_path / "masks" / f"{name}.png"
    assert {r.name for r in p.images()} == {name, "plain"}
    p.set_scores({name: 0.5})
    p.record_decision(name, "edited", (mask > 0).astype(np.int64))
    assert p.decision(name).status == "edited" and len(p.history(name)) == 1
    report = S.export_project(p, tmp_path / "out")
    assert report.written == 1 and os.path.exists(tmp_path / "out" / f"{name}.png")
    assert "\\udcff" in report.csv_path.read_text("utf-8")
    assert name in {r["name"] for r in json.loads(report.json_path.read_text("utf-8"))["images"]}
    p.close()
    with Project.open(tmp_path / "review.ielproj") as again:
        assert again.decision(name).status == "edited"


def test_project_creation_leaves_a_recognisable_temp_name(tmp_path, monkeypatch):
    from ielstudio.core import imageio

    seen = []
    real = S.os.replace
    monkeypatch.setattr(S.os, "replace", lambda a, b: (seen.append(a), real(a, b)))
    _project(tmp_path).close()
    assert imageio.is_temp_file_name(os.path.basename(seen[0]))


def test_lock_file_names_another_holder_and_ignores_a_crashed_one(tmp_path):
    import socket
    import subprocess
    import sys

    p = _project(tmp_path)
    lock = S.lock_path(p.path)
    assert lock.name == "review.ielproj.lock" and p.holder() is None and not lock.exists()
    p.hold()
    info = json.loads(lock.read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert p.holder() is None  # this process is not "another IEL Studio"
    assert S.project_holder(p.path)["pid"] == os.getpid()
    p.close()
    assert not lock.exists()  # released on close

    here = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": here, "user": "ann", "since": "2026-12-03T09:00:00+00:00"}))
    q = Project.open(p.path)
    assert q.holder() == {"pid": os.getppid(), "host": here, "user": "ann", "since": "2026-12-03T09:00:00+00:00"}
    q.close()
    assert lock.exists()  # not ours: closing never removes another holder's lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": here, "user": "bob", "since": "x"}))
    assert S.project_holder(p.path) is None  # left by a process that no longer runs (a crash)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "other-machine", "user": "bob", "since": "x"}))
    assert S.project_holder(p.path)["host"] == "other-machine"  # cannot be checked from here: reported
    lock.write_text("{not json")
    assert S.project_holder(p.path) is None


def test_relocate_points_a_moved_project_at_its_new_folders(tmp_path):
    p = _project(tmp_path)
    p.record_decision("img1", "kept")
    new_images, new_masks = tmp_path / "moved" / "images", tmp_path / "moved" / "masks"
    new_images.mkdir(parents=True)
    new_masks.mkdir()
    with pytest.raises(DataError, match="holds none of the 3 images of project review.ielproj"):
        p.relocate(new_images, new_masks, ["other0", "other1"])
    assert p.images_dir == (tmp_path / "images").resolve()  # unchanged after a refusal
    assert p.relocate(new_images, new_masks, ["img0", "img1", "new"]) == 2
    assert (p.images_dir, p.masks_dir) == (new_images.resolve(), new_masks.resolve())
    p.add_images([("img1", new_images / "img1.png", new_masks / "img1.png")])
    assert p.image("img1").image_path == new_images / "img1.png" and p.decision("img1").status == "kept"
    p.close()


def test_copy_to_writes_a_self_contained_project_and_never_replaces_a_file(tmp_path):
    p = _project(tmp_path)
    p.record_decision("img0", "edited", np.eye(4, dtype=np.int64))
    p.record_decision("img1", "kept")
    copy = p.copy_to(tmp_path / "copy.ielproj")
    assert not (tmp_path / "copy.ielproj-wal").exists()  # one file: a copy holds everything
    with Project.open(copy) as q:
        assert q.decision("img1").status == "kept" and q.images_dir == p.images_dir
        np.testing.assert_array_equal(q.final_mask("img0"), np.eye(4, dtype=np.int64))
    with pytest.raises(DataError, match="already exists"):
        p.copy_to(copy)
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".ielstudio-tmp")] == []
    p.close()


def test_proposals_are_stored_per_source_deduplicated_and_replaced(tmp_path):
    p = _project(tmp_path)
    a = np.zeros((6, 7), np.int64)
    a[1:4, 2:5] = 2
    src = S.proposal_source("abc", {"min_area": 16})
    assert src == S.proposal_source("abc", {"min_area": 16}) != S.proposal_source("abd", {"min_area": 16})
    assert src != S.proposal_source("abc", {"min_area": 8})
    # other review rules (an upgrade): the stored proposals are not reused
    assert src != S.proposal_source("abc", {"min_area": 16}, rules=S.PROPOSAL_RULES + " and more")
    masks_before = p._q("SELECT count(*) FROM masks")[0][0]
    assert p.set_proposals([("img0", a), ("img1", a), ("nope", a)], src) == 2
    assert p._q("SELECT count(*) FROM masks")[0][0] == masks_before + 1  # one blob for two equal proposals
    np.testing.assert_array_equal(p.proposal("img0", src), a)
    assert p.proposal("img0", "another model") is None and p.proposal("img2") is None
    assert (p.proposal_names(src), p.proposal_names("x")) == (["img0", "img1"], [])
    b = np.ones((6, 7), np.int64)
    p.set_proposals([("img0", b)], "new")
    np.testing.assert_array_equal(p.proposal("img0"), b)  # replaced, not added
    assert (p.proposal_names("new"), p.proposal_names(src)) == (["img0"], ["img1"])  # replaced, not added
    p.close()
    with Project.open(tmp_path / "review.ielproj") as q:  # survives a reopen
        np.testing.assert_array_equal(q.proposal("img1", src), a)


def test_copy_to_does_not_wait_for_the_project_lock(tmp_path):
    """Save As copies from its own read connection: a decision being written meanwhile (the
    project lock held) neither blocks the copy nor is blocked by it."""
    import threading

    p = _project(tmp_path)
    p.record_decision("img1", "kept")
    held, release = threading.Event(), threading.Event()

    def writer_holding_the_lock():
        with p._lock:
            held.set()
            release.wait(20)

    t = threading.Thread(target=writer_holding_the_lock)
    t.start()
    held.wait(5)
    try:
        copy = p.copy_to(tmp_path / "copy.ielproj")
        assert not release.is_set()  # it finished while the lock was held
    finally:
        release.set()
        t.join()
    with Project.open(copy) as q:
        assert q.decision("img1").status == "kept"
    p.close()


def test_a_score_keeps_its_parts_until_a_score_without_them_replaces_it(tmp_path):
    p = _project(tmp_path)
    parts = {"model": 0.8, "out_of_sample": True, "outline_smoothness": 0.9, "outline_fit": 0.75}
    assert p.set_scores([("img0", 0.486, 0.01, parts), ("img1", 0.7, 0.02)]) == 2
    assert p.image("img0").score_parts == parts and p.image("img0").score == pytest.approx(0.486)
    assert p.image("img1").score_parts is None
    assert [r.score_parts for r in p.images(order_by="name")] == [parts, None, None]
    p.set_scores({"img0": 0.5})  # a score alone (an older caller): its parts would be stale
    assert p.image("img0").score_parts is None
    p.close()
