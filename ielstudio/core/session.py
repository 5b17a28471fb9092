"""The review project: one SQLite file (`*.ielproj`) holding the review state of a dataset.

What it stores: the dataset folders, one row per image (paths, review status,
label-quality score, changed fraction, skip reason), an append-only log of every
decision with its provenance (who, when, which checkpoint, which settings), the
accepted/edited masks and the model's proposals as lossless PNG (or zlib) blobs
deduplicated by content, the model checkpoint reference (path + sha256), the last
training's curves and free-form settings.

Why SQLite: one file, crash-safe (WAL journal, one transaction per decision, so a
crash loses at most the action in flight), indexed (100,000 images page fast) and
never rewritten whole. After every committed write the WAL is checkpointed into the
.ielproj file (PASSIVE, a few ms) and on close it is truncated, so a copy of the
.ielproj alone, taken between two actions, holds every decision made so far. The
file is checked on open (`PRAGMA quick_check`); damage raises `DamagedProjectError`,
and `Project.open(path, read_only=True)` opens it anyway to salvage what is readable. The schema is versioned with `PRAGMA user_version` and the
`MIGRATIONS` list; opening an older file migrates it in place.

`export_project` / `iter_export` write the final masks (decided mask, or the
original re-encoded) in the input format into a new folder, with report.csv and
report.json. Originals are never overwritten.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import json
import os
import socket
import sqlite3
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ielstudio import __version__
from ielstudio.core.errors import DamagedProjectError, DataError
from ielstudio.core.imageio import TEMP_SUFFIX, atomic_write_text, temp_name_prefix
from ielstudio.core.review import PROPOSAL_RULES

PROJECT_SUFFIX = ".ielproj"
APPLICATION_ID = 0x49454C53  # "IELS": marks a SQLite file as an IEL Studio project
STATUSES = ("unreviewed", "accepted", "kept", "edited", "skipped")
STATUSES_WITH_MASK = ("accepted", "edited")

_STATUS_CHECK = "CHECK (status IN ('unreviewed','accepted','kept','edited','skipped'))"

# Each entry brings the schema from version i to i + 1 (user_version is set by the runner).
MIGRATIONS: list[str] = [
    # v1: the project itself.
    f"""
    PRAGMA application_id = {APPLICATION_ID};
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE masks (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        codec TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        image_path TEXT NOT NULL,
        mask_path TEXT,
        status TEXT NOT NULL DEFAULT 'unreviewed' {_STATUS_CHECK},
        score REAL,
        changed_fraction REAL,
        skip_reason TEXT,
        decision_id INTEGER REFERENCES decisions(id)
    );
    CREATE INDEX images_queue ON images((score IS NULL), score, name);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        status TEXT NOT NULL {_STATUS_CHECK},
        mask_id INTEGER REFERENCES masks(id),
        reason TEXT,
        who TEXT NOT NULL,
        at TEXT NOT NULL,
        checkpoint_sha256 TEXT,
        settings TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX decisions_image ON decisions(image_id, id);
    """,
    # v2: user settings (JSON values) and indexes for the filtered, sorted review queue.
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX images_status_queue ON images(status, (score IS NULL), score, name);
    CREATE INDEX images_changed ON images((changed_fraction IS NULL), changed_fraction DESC, name);
    """,
    # v3: the model's proposal per image (deduplicated in `masks`) and what made it, so a
    # reopened project shows its proposals at once instead of running the model again.
    """
    CREATE TABLE proposals (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        mask_id INTEGER NOT NULL REFERENCES masks(id),
        source TEXT NOT NULL
    );
    CREATE INDEX proposals_source ON proposals(source);
    """,
    # v4: what each score is made of (JSON, `review.score_parts`), for the queue's tooltip.
    """
    ALTER TABLE images ADD COLUMN score_parts TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Review-queue orderings: key -> SQL ORDER BY (unscored images always come last).
# "score", "changed" and "name" match an index term for term, so a page is read, not sorted.
ORDERINGS = {
    "score": "i.score IS NULL, i.score, i.name",  # worst label first (1 = good)
    "-score": "i.score IS NULL, i.score DESC, i.name",
    "changed": "i.changed_fraction IS NULL, i.changed_fraction DESC, i.name",  # most change first
    "-changed": "i.changed_fraction IS NULL, i.changed_fraction, i.name",
    "name": "i.name",
    "-name": "i.name DESC",
    "status": "i.status, i.score IS NULL, i.score, i.name",
}


def _db_text(s: str | None) -> str | bytes | None:
    """A name or path for the database: text when it is valid Unicode; the raw file-system
    bytes (a BLOB) for names that are not UTF-8 (Python holds them surrogate-escaped)."""
    if s is None:
        return None
    s = str(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s)


def _py_text(v: str | bytes | None) -> str | None:
    """Inverse of `_db_text`."""
    if isinstance(v, (bytes, memoryview)):
        return os.fsdecode(bytes(v))
    return v


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still record something
        return "unknown"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- mask blobs

def encode_mask(mask: np.ndarray) -> tuple[str, bytes]:
    """Lossless blob of a class-index mask: ("png", bytes) for indices < 65536, else ("zlib", bytes)."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0 or not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
        raise ValueError(f"mask must be a non-empty 2-D integer array, got {m.dtype} {m.shape}")
    lo, hi = int(m.min()), int(m.max())
    if lo < 0:
        raise ValueError(f"mask has negative class index {lo}")
    if hi < 65536:
        ok, buf = cv2.imencode(".png", m.astype(np.uint8 if hi < 256 else np.uint16),
                               [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:  # pragma: no cover - cv2 encodes any 2-D uint8/uint16 array
            raise ValueError("PNG encoding failed")
        return "png", buf.tobytes()
    return "zlib", zlib.compress(np.ascontiguousarray(m, dtype="<i8").tobytes(), 6)


def decode_mask(codec: str, data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode_mask`: int64 (height, width)."""
    if codec == "png":
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError("stored PNG mask could not be decoded")
        out = arr.astype(np.int64)
    elif codec == "zlib":
        out = np.frombuffer(zlib.decompress(data), dtype="<i8").astype(np.int64)
    else:
        raise ValueError(f"unknown mask codec {codec!r}")
    return out.reshape(height, width)


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Provenance:
    """Who made a decision with which model: checkpoint None = the project's current one."""

    who: str = field(default_factory=_current_user)
    checkpoint_sha256: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """One entry of the decision log (the current one, or any from `history`)."""

    id: int | None  # None: never decided (status "unreviewed" by default)
    name: str
    status: str
    mask_id: int | None
    reason: str | None
    who: str | None
    at: str | None  # ISO 8601 UTC
    checkpoint_sha256: str | None
    settings: dict

    @property
    def has_mask(self) -> bool:
        return self.mask_id is not None


@dataclass(frozen=True)
class PlannedDecision:
    """A decision made ready to record (`plan_decision`): its mask encoded, and the image's
    decision it was planned against (``seen``: its id, None when never decided), so that
    `Project.record_planned` refuses it once the image has been decided otherwise since."""

    name: str
    status: str
    blob: tuple | None  # a `masks` row (`_mask_blob`); None for decisions without a mask
    seen: int | None


class DecisionChanged(Exception):
    """`Project.record_planned`: an image was decided otherwise after its plan was made."""

    def __init__(self, name: str):
        super().__init__(f"{name} was changed meanwhile; nothing was recorded")
        self.name = name


def plan_decision(name: str, status: str, mask: np.ndarray | None, seen: int | None) -> PlannedDecision:
    """A `PlannedDecision` (the slow part of recording, encoding the mask, done here: any thread)."""
    return PlannedDecision(name, status, _checked_blob(status, mask), seen)


def plan_decisions(project: "Project", names: Iterable[str], status: str,
                   proposal: Callable[[str], np.ndarray | None] | None = None
                   ) -> tuple[list[PlannedDecision], list[str]]:
    """Plans deciding each of ``names`` that is still unreviewed in ``project`` as
    ``status`` (accepted: with its proposal, ``proposal(name)``), and the names left out
    for want of a proposal. Reads the project only, so it runs in a worker thread."""
    plans, missing = [], []
    for name in names:
        decided = project.decision(name)
        if decided.status != "unreviewed":
            continue
        mask = None
        if status in STATUSES_WITH_MASK:
            mask = None if proposal is None else proposal(name)
            if mask is None:
                missing.append(name)
                continue
        plans.append(plan_decision(name, status, mask, decided.id))
    return plans, missing


@dataclass(frozen=True)
class ImageRow:
    """One image of the review queue."""

    name: str
    image_path: Path
    mask_path: Path | None
    status: str
    score: float | None
    changed_fraction: float | None
    skip_reason: str | None
    decided_at: str | None
    score_parts: dict | None = None  # what the score is made of (`review.score_parts`); None: not known


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    sha256: str
    set_at: str


# --------------------------------------------------------------------------- who has it open

#: Next to an open project, ``<name>.ielproj.lock`` says who holds it open (JSON: pid,
#: host, user, since). It is advice, not a lock: SQLite keeps the file consistent
#: either way, but two windows on one project would interleave their decisions.
LOCK_SUFFIX = ".lock"


def lock_path(project_path: str | Path) -> Path:
    project_path = Path(project_path)
    return project_path.with_name(project_path.name + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there; assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _is_this_process(holder: dict) -> bool:
    return holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()


def project_holder(project_path: str | Path) -> dict | None:
    """Who else holds the project open, from its lock file: ``{"pid", "host", "user", "since"}``.

    None when there is no lock file, when it is unreadable, or when it was left by a
    process of this machine that no longer runs (a crash). A lock from another machine
    (a shared drive) cannot be checked and is reported."""
    try:
        info = json.loads(lock_path(project_path).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname() and not _pid_alive(pid):
        return None
    return {"pid": pid, "host": host, "user": str(info.get("user", "?")), "since": str(info.get("since", "?"))}


# --------------------------------------------------------------------------- project

class Project:
    """An open `.ielproj` file. Thread-safe (one lock around one connection); use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        """Use `Project.create` or `Project.open`."""
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        #: opened with ``read_only=True``: nothing is written
        self.read_only = False
        #: problems `PRAGMA quick_check` found (only a read-only project opens with any)
        self.damage: list[str] = []
        #: checkpoint the WAL after every committed write (see `checkpoint_wal`)
        self.checkpoint_after_commit = True
        #: this process wrote the project's lock file (`hold`) and removes it on close
        self._holding = False

    # ----- opening

    @classmethod
    def create(cls, path: str | Path, images_dir: str | Path, masks_dir: str | Path) -> "Project":
        """Make a new project file (refuses to overwrite one) and open it."""
        path = Path(path)

        def fill(conn: sqlite3.Connection, tmp: Path) -> None:
            _migrate(conn, tmp)
            meta = {
                "images_dir": _db_text(str(Path(images_dir).resolve())),
                "masks_dir": _db_text(str(Path(masks_dir).resolve())),
                "created": _now(),
                "app_version": __version__,
            }
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")

        _write_new_database(path, fill, "already exists; open it or choose another name")
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False) -> "Project":
        """Open (and migrate to the current schema) an existing project file.

        The file's structure is checked (``PRAGMA quick_check``, a few ms per MB):
        a damaged file raises `DamagedProjectError`. With ``read_only=True`` nothing is
        written (no migration, no checkpoint) and damage does not stop the opening:
        it is listed in ``project.damage`` so that what is still readable can be
        salvaged (reads of damaged parts then raise `DamagedProjectError`).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "no such project file")
        if path.stat().st_size == 0:
            raise DataError(path, "empty file, not an IEL Studio project")
        try:
            conn = sqlite3.connect(path.resolve().as_uri() + ("?mode=ro" if read_only else "?mode=rw"), uri=True,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise DataError(path, f"cannot open project ({e})") from None
        damage: list[str] = []
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise DataError(path, "not an IEL Studio project (SQLite file of another program)")
            if version > SCHEMA_VERSION:
                raise DataError(path, f"made by a newer IEL Studio (schema {version} > {SCHEMA_VERSION}); update the app")
            if read_only and version < SCHEMA_VERSION:
                raise DataError(path, f"made by an older IEL Studio (schema {version}); open it writable once to upgrade it")
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            damage = _quick_check(conn)
            if damage and not read_only:
                raise DamagedProjectError(path, _damage_message(damage))
            if not read_only:
                _migrate(conn, path)
            try:
                conn.execute("SELECT count(*) FROM images").fetchone()
            except sqlite3.DatabaseError as e:
                if not (read_only and damage):
                    raise
                damage.append(f"the image list cannot be counted ({e})")
        except DataError:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            if "not a database" in str(e):
                raise DataError(path, f"not a readable IEL Studio project ({e})") from None
            raise _project_error(path, e) from None
        project = cls(path, conn)
        project.read_only = read_only
        project.damage = damage
        return project

    def holder(self) -> dict | None:
        """Who else (another process) holds this project open (see `project_holder`); None when nobody."""
        other = project_holder(self.path)
        return None if other and _is_this_process(other) else other

    def hold(self) -> None:
        """Say in the project's lock file that this process has it open (the window does this;
        `close` removes it). A later `holder()` in another process then names us."""
        if self.read_only:
            return
        atomic_write_text(lock_path(self.path), json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "user": _current_user(), "since": _now()}))
        self._holding = True

    def _release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        mine = project_holder(self.path)
        if mine and _is_this_process(mine):
            lock_path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file; the WAL is checkpointed into the .ielproj and truncated first."""
        self._release()
        with self._lock:
            if self._conn is not None:
                try:
                    if not self.read_only:
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # closing still checkpoints what it can
                self._conn.close()
                self._conn = None

    def copy_to(self, path: str | Path) -> Path:
        """Write a consistent copy of the whole project (every committed decision, the WAL
        included) to a new file ``path`` (SQLite's online backup; temp file + rename).
        Refuses to replace an existing file. The copy is a project on its own."""
        path = Path(path)
        if self._conn is None:
            raise ValueError("project is closed")

        def fill(dst: sqlite3.Connection, tmp: Path) -> None:
            # its own read connection: the backup reads one snapshot (WAL readers never block
            # writers), so decisions recorded meanwhile do not wait for a large copy
            src = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
            try:
                self._run(lambda: src.backup(dst))
            finally:
                src.close()
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file

        _write_new_database(path, fill, "already exists; choose another name")
        return path

    def checkpoint_wal(self, mode: str = "PASSIVE") -> None:
        """Copy committed transactions from the ``-wal`` file into the .ielproj file itself.

        Done after every committed write (PASSIVE: never waits for readers), so that a
        copy of the .ielproj alone holds every decision made up to that moment.
        """
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        if self.read_only:
            return
        with self._lock:
            if self._conn is not None:
                self._run(lambda: self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall())

    def _run(self, fn):
        """Call ``fn()``, turning SQLite's damage reports into `DamagedProjectError`."""
        try:
            return fn()
        except sqlite3.DatabaseError as e:
            raise _project_error(self.path, e) from None

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        if self.read_only:
            raise DataError(self.path, "project was opened read-only; nothing can be changed")
        return _Transaction(self)

    def _q(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            if self._conn is None:
                raise ValueError("project is closed")
            return self._run(lambda: self._conn.execute(sql, tuple(args)).fetchall())

    # ----- meta

    def _meta(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return _py_text(rows[0][0]) if rows else None

    def _required_meta(self, key: str) -> str:
        value = self._meta(key)
        if not isinstance(value, str):
            raise DamagedProjectError(self.path, f"project file is damaged (its {key!r} entry is missing)")
        return value

    def _set_meta(self, items: Mapping[str, str]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO meta(key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", items.items())

    def relocate(self, images_dir: str | Path, masks_dir: str | Path, names: Iterable[str]) -> int:
        """Point a project whose folders moved at their new place; ``names``: the image names
        found there. Refused when none of them is an image of this project (a wrong folder).
        Each image's paths are updated by the next `add_images`. Returns how many names match."""
        known = {r[0] for r in self._q("SELECT name FROM images")}
        matched = len(known & {_db_text(str(n)) for n in names})
        if known and not matched:
            raise DataError(images_dir, f"holds none of the {len(known)} images of project {self.path.name}; "
                                        "choose the folder the project's images moved to")
        self._set_meta({"images_dir": _db_text(str(Path(images_dir).resolve())),
                        "masks_dir": _db_text(str(Path(masks_dir).resolve()))})
        return matched

    @property
    def images_dir(self) -> Path:
        return Path(self._required_meta("images_dir"))

    @property
    def masks_dir(self) -> Path:
        return Path(self._required_meta("masks_dir"))

    @property
    def created(self) -> str:
        return self._meta("created")

    @property
    def app_version(self) -> str:
        """Version of IEL Studio that created the file."""
        return self._meta("app_version")

    @property
    def schema_version(self) -> int:
        return self._q("PRAGMA user_version")[0][0]

    def set_mask_encoding(self, encoding: Any) -> None:
        """Remember the dataset's mask encoding (an `imageio.MaskEncoding` or its `to_dict()`), used by export."""
        d = encoding if isinstance(encoding, Mapping) else encoding.to_dict()
        self._set_meta({"mask_encoding": json.dumps(d)})

    def mask_encoding(self):
        """The stored `imageio.MaskEncoding`, or None (export then reads each file's own)."""
        raw = self._meta("mask_encoding")
        if raw is None:
            return None
        from ielstudio.core.imageio import MaskEncoding

        return MaskEncoding.from_dict(json.loads(raw))

    # ----- checkpoint and settings

    def set_checkpoint(self, path: str | Path) -> CheckpointRef:
        """Reference the model checkpoint used for proposals (path + sha256 of its bytes)."""
        path = Path(path)
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise DataError(path, f"cannot read checkpoint ({e.strerror or e})") from None
        ref = CheckpointRef(path.resolve(), digest, _now())
        self._set_meta({"checkpoint_path": _db_text(str(ref.path)), "checkpoint_sha256": digest,
                        "checkpoint_set_at": ref.set_at})
        return ref

    @property
    def checkpoint(self) -> CheckpointRef | None:
        digest = self._meta("checkpoint_sha256")
        if digest is None:
            return None
        return CheckpointRef(Path(self._required_meta("checkpoint_path")), digest, self._meta("checkpoint_set_at"))

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._q("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under `key`."""
        text = json.dumps(value)
        with self._tx() as c:
            c.execute("INSERT INTO settings(key, value) VALUES (?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, text))

    def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._q("SELECT key, value FROM settings ORDER BY key")}

    # ----- images

    def add_images(self, pairs: Iterable[Any]) -> int:
        """Add `dataset.Pair`s or (name, image_path, mask_path) tuples in one transaction.

        Known names keep their review state (their paths are updated). Returns how many are new.
        Names and paths that are not valid UTF-8 (surrogate-escaped by Python) are stored as
        their file-system bytes and come back as the same `str`.
        """
        rows = []
        for p in pairs:
            name, image_path, mask_path = (p.name, p.image_path, p.mask_path) if hasattr(p, "name") else p
            rows.append((_db_text(str(name)), _db_text(str(image_path)),
                         None if mask_path is None else _db_text(str(mask_path))))
        with self._tx() as c:
            before = c.execute("SELECT count(*) FROM images").fetchone()[0]
            c.executemany("INSERT INTO images(name, image_path, mask_path) VALUES (?, ?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET image_path = excluded.image_path, "
                          "mask_path = excluded.mask_path", rows)
            after = c.execute("SELECT count(*) FROM images").fetchone()[0]
        return after - before

    def set_scores(self, scores: Mapping[str, float] | Iterable[tuple]) -> int:
        """Bulk-set label-quality scores in one transaction.

        `scores`: {name: score} or an iterable of (name, score) / (name, score,
        changed_fraction) / (name, score, changed_fraction, score_parts), score_parts a
        JSON-able dict (`review.score_parts`) or None. A score set without its parts
        forgets the old parts. Unknown names are ignored; returns how many rows were updated.
        """
        items = scores.items() if isinstance(scores, Mapping) else scores
        plain, with_changed = [], []
        for item in items:
            if len(item) == 2:
                plain.append((_opt_float(item[1]), _db_text(item[0])))
            else:
                parts = item[3] if len(item) > 3 else None
                with_changed.append((_opt_float(item[1]), _opt_float(item[2]),
                                     None if parts is None else json.dumps(parts), _db_text(item[0])))
        with self._tx() as c:
            start = self._conn.total_changes
            c.executemany("UPDATE images SET score = ?, score_parts = NULL WHERE name = ?", plain)
            c.executemany("UPDATE images SET score = ?, changed_fraction = ?, score_parts = ? WHERE name = ?",
                          with_changed)
            return self._conn.total_changes - start

    def image(self, name: str) -> ImageRow:
        rows = self._q(_IMAGE_SELECT + " WHERE i.name = ?", (_db_text(name),))
        if not rows:
            raise KeyError(name)
        return _image_row(rows[0])

    def images(self, order_by: str = "score", status: str | Iterable[str] | None = None,
               search: str | None = None, limit: int | None = None, offset: int = 0) -> list[ImageRow]:
        """A page of the review queue.

        order_by: one of `ORDERINGS` ("score" = worst first, "-score", "changed", "-changed",
        "name", "-name", "status"). status: one status or several. search: substring of the name.
        """
        if order_by not in ORDERINGS:
            raise ValueError(f"order_by must be one of {sorted(ORDERINGS)}, got {order_by!r}")
        where, args = _filter_sql(status, search)
        sql = f"{_IMAGE_SELECT}{where} ORDER BY {ORDERINGS[order_by]} LIMIT ? OFFSET ?"
        rows = self._q(sql, [*args, -1 if limit is None else int(limit), int(offset)])
        return [_image_row(r) for r in rows]

    def count(self, status: str | Iterable[str] | None = None, search: str | None = None) -> int:
        where, args = _filter_sql(status, search)
        return self._q(f"SELECT count(*) FROM images i{where}", args)[0][0]

    def counts(self) -> dict[str, int]:
        """Number of images per status (every status present, zeros included)."""
        out = dict.fromkeys(STATUSES, 0)
        out.update(dict(self._q("SELECT status, count(*) FROM images GROUP BY status")))
        return out

    def __len__(self) -> int:
        return self.count()

    # ----- decisions

    def record_decision(self, name: str, status: str, mask: np.ndarray | None = None,
                        provenance: Provenance | None = None, reason: str | None = None) -> Decision:
        """Record one review decision in ONE transaction and make it the image's current state.

        accepted/edited need `mask` (class indices, stored losslessly and deduplicated, so
        re-recording an earlier state for undo/redo costs one small row). kept/unreviewed/skipped
        take no mask. `reason`: why it was skipped (kept as the image's skip_reason) or a note.
        """
        blob = _checked_blob(status, mask)
        with self._tx() as c:
            return self._insert_decision(c, name, status, blob, None, provenance, reason)

    def record_planned(self, plans: Iterable[PlannedDecision], provenance: Provenance | None = None
                       ) -> list[tuple[Decision, Decision]]:
        """Record decisions prepared by `plan_decision` (their masks encoded already, e.g. in
        a worker thread) in ONE transaction: all of them or, on any error, none. Refused
        (`DecisionChanged`, nothing recorded) when an image's decision is no longer the one
        its plan was made against. Returns (before, after) for each, in order."""
        done = []
        with self._tx() as c:
            for plan in plans:
                before = self.decision(plan.name)
                if before.id != plan.seen:
                    raise DecisionChanged(plan.name)
                done.append((before, self._insert_decision(c, plan.name, plan.status, plan.blob, None,
                                                           provenance, None)))
        return done

    def restore(self, name: str, decision: Decision, provenance: Provenance | None = None) -> Decision:
        """Re-record an earlier decision (undo/redo) by reference to its stored mask: no re-encoding."""
        return self.restore_all([replace(decision, name=name)], provenance)[0]

    def restore_all(self, decisions: Iterable[Decision], provenance: Provenance | None = None) -> list[Decision]:
        """`restore` for several images (each `Decision` names its image) in ONE transaction."""
        with self._tx() as c:
            return [self._insert_decision(c, d.name, d.status, None, d.mask_id,
                                          provenance or Provenance(checkpoint_sha256=d.checkpoint_sha256,
                                                                   settings=d.settings), d.reason)
                    for d in decisions]

    def _insert_decision(self, c: sqlite3.Connection, name, status, blob, mask_id, provenance, reason) -> Decision:
        """Append a decision inside the open transaction ``c`` and make it the image's current one."""
        prov = provenance or Provenance()
        ckpt = prov.checkpoint_sha256 or self._meta("checkpoint_sha256")
        settings = json.dumps(dict(prov.settings), sort_keys=True)
        at = _now()
        row = c.execute("SELECT id FROM images WHERE name = ?", (_db_text(name),)).fetchone()
        if row is None:
            raise KeyError(name)
        if blob is not None:
            mask_id = _store_mask(c, blob)
        cur = c.execute("INSERT INTO decisions(image_id, status, mask_id, reason, who, at, "
                        "checkpoint_sha256, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (row[0], status, mask_id, reason, prov.who, at, ckpt, settings))
        did = cur.lastrowid
        c.execute("UPDATE images SET status = ?, decision_id = ?, skip_reason = ? WHERE id = ?",
                  (status, did, reason if status == "skipped" else None, row[0]))
        return Decision(did, name, status, mask_id, reason, prov.who, at, ckpt, json.loads(settings))

    def decision(self, name: str) -> Decision:
        """The image's current decision (id None and status "unreviewed" when never decided)."""
        rows = self._q(_DECISION_SELECT + " FROM images i LEFT JOIN decisions d ON d.id = i.decision_id "
                       "WHERE i.name = ?", (_db_text(name),))
        if not rows:
            raise KeyError(name)
        return _decision(name, rows[0], rows[0][-1])

    def history(self, name: str) -> list[Decision]:
        """Every decision recorded for the image, oldest first."""
        rows = self._q(_DECISION_SELECT + " FROM decisions d JOIN images i ON i.id = d.image_id "
                       "WHERE i.name = ? ORDER BY d.id", (_db_text(name),))
        if not rows and not self._q("SELECT 1 FROM images WHERE name = ?", (_db_text(name),)):
            raise KeyError(name)
        return [_decision(name, r, r[1]) for r in rows]

    def mask(self, mask_id: int) -> np.ndarray:
        """A stored mask by id (int64 class indices)."""
        rows = self._q("SELECT codec, data, height, width FROM masks WHERE id = ?", (mask_id,))
        if not rows:
            raise KeyError(mask_id)
        codec, data, h, w = rows[0]
        try:
            return decode_mask(codec, data, h, w)
        except (ValueError, TypeError, zlib.error, cv2.error) as e:
            raise DamagedProjectError(self.path, f"project file is damaged (stored mask {mask_id} "
                                                 f"cannot be decoded: {e})") from None

    # ----- proposals

    def set_proposals(self, items: Iterable[tuple[str, np.ndarray]], source: str) -> int:
        """Store the model's proposal for some images in one transaction, replacing older ones.

        `source`: what made them (`proposal_source`: the model's sha256 and the clean settings);
        `proposal(name, source)` returns a proposal only for the source asked for. Unknown
        names are ignored; returns how many were stored."""
        blobs = [(_db_text(name), _mask_blob(mask)) for name, mask in items]
        stored = 0
        with self._tx() as c:
            for name, blob in blobs:
                row = c.execute("SELECT id FROM images WHERE name = ?", (name,)).fetchone()
                if row is None:
                    continue
                c.execute("INSERT INTO proposals(image_id, mask_id, source) VALUES (?, ?, ?) "
                          "ON CONFLICT(image_id) DO UPDATE SET mask_id = excluded.mask_id, source = excluded.source",
                          (row[0], _store_mask(c, blob), source))
                stored += 1
        return stored

    def proposal(self, name: str, source: str | None = None) -> np.ndarray | None:
        """The stored proposal of an image (int64 class indices), or None when there is none,
        or (with `source`) when it was made by another model or other settings."""
        rows = self._q("SELECT p.mask_id, p.source FROM proposals p JOIN images i ON i.id = p.image_id "
                       "WHERE i.name = ?", (_db_text(name),))
        if not rows or (source is not None and rows[0][1] != source):
            return None
        return self.mask(rows[0][0])

    def proposal_names(self, source: str) -> list[str]:
        """The images with a stored proposal from `source`."""
        return [_py_text(r[0]) for r in self._q("SELECT i.name FROM proposals p JOIN images i ON i.id = p.image_id "
                                                "WHERE p.source = ? ORDER BY i.name", (source,))]

    def final_mask(self, name: str) -> np.ndarray | None:
        """The mask to export: the accepted/edited mask, or None = keep the original file's mask."""
        d = self.decision(name)
        return self.mask(d.mask_id) if d.mask_id is not None else None


def proposal_source(checkpoint_sha256: str, clean_settings: Mapping[str, Any], rules: str | None = None) -> str:
    """The key stored with proposals: the model's bytes, the settings that turn its
    probabilities into proposals and the review rules that do (`rules`, by default this
    version's `review.PROPOSAL_RULES`). A reopened project reuses its proposals only when
    all three match."""
    rules = PROPOSAL_RULES if rules is None else rules
    text = json.dumps({"checkpoint": checkpoint_sha256, "clean": dict(clean_settings), "rules": rules},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _checked_blob(status: str, mask: np.ndarray | None) -> tuple | None:
    """The stored form of a decision's mask (None: a status without one); ValueError on a wrong pairing."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if (mask is not None) != (status in STATUSES_WITH_MASK):
        raise ValueError(f"status {status!r} {'needs' if status in STATUSES_WITH_MASK else 'takes no'} mask")
    return None if mask is None else _mask_blob(mask)


def _mask_blob(mask: np.ndarray) -> tuple[str, int, int, str, bytes]:
    """(sha256, height, width, codec, data): a row of the `masks` table."""
    m = np.asarray(mask)
    codec, data = encode_mask(m)
    return (hashlib.sha256(f"{codec}:{m.shape[0]}x{m.shape[1]}:".encode() + data).hexdigest(),
            m.shape[0], m.shape[1], codec, data)


def _store_mask(c: sqlite3.Connection, blob: tuple) -> int:
    """Insert a mask blob unless its content is stored already; its id."""
    c.execute("INSERT INTO masks(sha256, height, width, codec, data) VALUES (?, ?, ?, ?, ?) "
              "ON CONFLICT(sha256) DO NOTHING", blob)
    return c.execute("SELECT id FROM masks WHERE sha256 = ?", (blob[0],)).fetchone()[0]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) under the project lock; then a WAL checkpoint."""

    def __init__(self, project: Project):
        self.project = project
        self.conn, self.lock = project._conn, project._lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.conn = self.project._conn
        if self.conn is None:
            self.lock.release()
            raise ValueError("project is closed")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            self.lock.release()
            raise _project_error(self.project.path, e) from None
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            except sqlite3.DatabaseError as e:
                if exc_type is None:
                    raise _project_error(self.project.path, e) from None
                return  # the original error is the one to report
            if exc_type is None and self.project.checkpoint_after_commit:
                try:  # best effort: the decision is committed (in the WAL) either way
                    self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.DatabaseError:
                    pass
        finally:
            self.lock.release()
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
            raise _project_error(self.project.path, exc) from None


def _write_new_database(path: Path, fill: Callable[[sqlite3.Connection, Path], None], exists: str) -> None:
    """Create the SQLite file ``path`` atomically: ``fill(conn, tmp)`` writes a temp file in
    the same folder, which is renamed into place; refused (DataError ``exists``) when
    ``path`` exists. Nothing is left behind on failure."""
    if path.exists():
        raise DataError(path, exists)
    if not path.parent.is_dir():
        raise DataError(path, "folder does not exist")
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            fill(conn, Path(tmp))
        finally:
            conn.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _project_error(path: Path, e: sqlite3.DatabaseError) -> DataError:
    """The project's own error for an SQLite failure: in use, damaged, or unusable."""
    if _is_busy(e):
        return DataError(path, f"project is in use by another program ({e}); try again")
    text = str(e).lower()
    if ("malformed" in text or "not a database" in text or "corrupt" in text
            or not isinstance(e, sqlite3.OperationalError)):
        return DamagedProjectError(path, f"project file is damaged ({e}); open it read-only to "
                                         "salvage what is readable, or use a backup")
    return DataError(path, f"project file cannot be used ({e})")


def _quick_check(conn: sqlite3.Connection) -> list[str]:
    """Problems `PRAGMA quick_check` reports (empty when the file is sound)."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
    except sqlite3.DatabaseError as e:
        if _is_busy(e):
            raise
        return [str(e)]  # too damaged to even list the problems
    return [] if rows == ["ok"] else [str(r) for r in rows]


def _damage_message(damage: list[str]) -> str:
    first = damage[0].splitlines()[0][:160] if damage else "unknown damage"
    more = f" (and {len(damage) - 1} more problem(s))" if len(damage) > 1 else ""
    return (f"project file is damaged: {first}{more}; open it read-only (Project.open(path, read_only=True)) "
            "to salvage what is readable, or use a backup")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for target in range(version + 1, SCHEMA_VERSION + 1):
        statements = [s.strip() for s in MIGRATIONS[target - 1].split(";") if s.strip()]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for s in statements:
                conn.execute(s)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise DataError(path, f"cannot upgrade project to schema {target} ({e})") from None


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


_IMAGE_SELECT = ("SELECT i.name, i.image_path, i.mask_path, i.status, i.score, i.changed_fraction, "
                 "i.skip_reason, (SELECT at FROM decisions WHERE id = i.decision_id), i.score_parts FROM images i")
_DECISION_SELECT = ("SELECT d.id, d.status, d.mask_id, d.reason, d.who, d.at, d.checkpoint_sha256, "
                    "d.settings, i.status")


def _image_row(r: tuple) -> ImageRow:
    return ImageRow(_py_text(r[0]), Path(_py_text(r[1])), None if r[2] is None else Path(_py_text(r[2])),
                    r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else None)


def _decision(name: str, r: tuple, status: str) -> Decision:
    return Decision(r[0], name, status, r[2], r[3], r[4], r[5], r[6], json.loads(r[7]) if r[7] else {})


def _filter_sql(status, search) -> tuple[str, list]:
    clauses, args = [], []
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        bad = [s for s in wanted if s not in STATUSES]
        if bad:
            raise ValueError(f"unknown status {bad}; expected {STATUSES}")
        clauses.append(f"i.status IN ({','.join('?' * len(wanted))})")
        args += wanted
    if search:
        clauses.append("instr(lower(i.name), lower(?)) > 0")
        args.append(search)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


# --------------------------------------------------------------------------- export

@dataclass(frozen=True)
class ExportProgress:
    done: int
    total: int
    name: str


@dataclass
class ExportReport:
    """What `export_project` wrote: one row per image (see report.csv / report.json)."""

    out_dir: Path
    rows: list[dict]
    written: int
    errors: int
    csv_path: Path
    json_path: Path


@dataclass(frozen=True)
class ExportDone:
    report: ExportReport


def iter_export(project: Project, out_dir: str | Path,
                cancel: Callable[[], bool] | None = None) -> Iterator[ExportProgress | ExportDone]:
    """Write every image's final mask into `out_dir` (same file name and format as the original).

    accepted/edited: the stored mask; kept/unreviewed/skipped: the original re-encoded.
    Files that cannot be read or written become report rows with an `error`, never a crash.
    Yields `ExportProgress` per image, then `ExportDone(report)` (also after a cancel, with
    the rows done so far). Refuses `out_dir` == the masks folder: originals are never touched.
    """
    from ielstudio.core.imageio import atomic_write_text, read_mask, write_mask

    out_dir = Path(out_dir)
    masks_dir = project.masks_dir
    if out_dir.resolve() == masks_dir.resolve():
        raise DataError(out_dir, "is the original masks folder; export into another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    encoding = project.mask_encoding()
    total = project.count()
    rows: list[dict] = []
    used: set[str] = set()
    written = 0
    page = 1000
    cancelled = False
    for start in range(0, total, page):
        for img in project.images(order_by="name", limit=page, offset=start):
            if cancel is not None and cancel():
                cancelled = True
                break
            d = project.decision(img.name)
            row = {"name": img.name, "status": img.status, "output": None, "score": img.score,
                   "changed_fraction": None, "proposal_changed_fraction": img.changed_fraction,
                   "skip_reason": img.skip_reason,
                   "decided_at": d.at, "who": d.who, "checkpoint_sha256": d.checkpoint_sha256,
                   "settings": d.settings, "history_length": None, "pixels_before": None,
                   "pixels_after": None, "changed_pixels": None, "error": None}
            try:
                if img.mask_path is None:
                    raise DataError(img.image_path, "has no mask to export")
                target = out_dir / img.mask_path.name
                if target.name in used:
                    raise DataError(target, "another image already exports a mask with this file name")
                before, file_encoding = read_mask(img.mask_path, encoding)
                after = project.mask(d.mask_id) if d.mask_id is not None else before
                if after.shape != before.shape:
                    raise DataError(img.mask_path, f"decided mask is {after.shape[1]}x{after.shape[0]} "
                                                   f"but the original is {before.shape[1]}x{before.shape[0]}")
                write_mask(target, after, file_encoding, protect=[img.mask_path])
                used.add(target.name)
                written += 1
                changed = int((before != after).sum())  # what was written, not what was proposed
                row.update(output=target.name, pixels_before=_class_counts(before), pixels_after=_class_counts(after),
                           changed_pixels=changed, changed_fraction=changed / max(1, before.size))
            except (DataError, ValueError, OSError) as e:
                row["error"] = str(e)
            rows.append(row)
            yield ExportProgress(len(rows), total, img.name)
        if cancelled:
            break
    history = {_py_text(k): v for k, v in project._q("SELECT i.name, count(d.id) FROM images i "
                                                     "LEFT JOIN decisions d ON d.image_id = i.id GROUP BY i.id")}
    for row in rows:
        row["history_length"] = history.get(row["name"], 0)
    report = ExportReport(out_dir, rows, written, sum(r["error"] is not None for r in rows),
                          out_dir / "report.csv", out_dir / "report.json")
    summary = {
        "project": str(project.path), "exported_at": _now(), "app_version": __version__,
        "images_dir": str(project.images_dir), "masks_dir": str(masks_dir),
        "checkpoint": None if project.checkpoint is None else
        {"path": str(project.checkpoint.path), "sha256": project.checkpoint.sha256},
        # finished: the export went through every image (not cancelled); all_reviewed: every
        # image has a decision (none left unreviewed), so the export is the reviewed data set
        "finished": not cancelled, "all_reviewed": not cancelled and all(r["status"] != "unreviewed" for r in rows),
        "total": total, "written": written, "errors": report.errors,
        "statuses": dict(Counter(r["status"] for r in rows)), "images": rows,
    }
    atomic_write_text(report.json_path, json.dumps(summary, indent=1))
    atomic_write_text(report.csv_path, _report_csv(rows))
    yield ExportDone(report)


def export_project(project: Project, out_dir: str | Path,
                   cancel: Callable[[], bool] | None = None) -> ExportReport:
    """Run `iter_export` to the end and return its report."""
    report = None
    for event in iter_export(project, out_dir, cancel):
        if isinstance(event, ExportDone):
            report = event.report
    return report


def _class_counts(mask: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(mask, return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values, counts)}


def _report_csv(rows: list[dict]) -> str:
    classes = sorted({int(k) for r in rows for key in ("pixels_before", "pixels_after")
                      for k in (r[key] or {})})
    head = ["name", "status", "output", "score", "changed_fraction", "changed_pixels", "proposal_changed_fraction"]
    head += [f"before_{c}" for c in classes] + [f"after_{c}" for c in classes]
    head += ["decided_at", "who", "checkpoint_sha256", "settings", "history_length", "skip_reason", "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        b, a = r["pixels_before"] or {}, r["pixels_after"] or {}
        w.writerow([r["name"], r["status"], r["output"] or "", _fmt(r["score"]), _fmt(r["changed_fraction"]),
                    _fmt(r["changed_pixels"]), _fmt(r["proposal_changed_fraction"])]
                   + [b.get(str(c), 0) if r["pixels_before"] else "" for c in classes]
                   + [a.get(str(c), 0) if r["pixels_after"] else "" for c in classes]
                   + [r["decided_at"] or "", r["who"] or "", r["checkpoint_sha256"] or "",
                      json.dumps(r["settings"], sort_keys=True) if r["settings"] else "",
                      r["history_length"], r["skip_reason"] or "", r["error"] or ""])
    return buf.getvalue()


def _fmt(x) -> str:
    return "" if x is None else str(x)
