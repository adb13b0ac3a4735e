"""The trajectory store: the only code that writes to SQLite.

One SQLite file (WAL mode) holds every run. Stages write their rows inside one transaction together
with the stage's completion marker in `rounds`, so after a crash a stage is either fully recorded or
not at all. Row ids are deterministic, and inserts ignore rows that already exist, so re-running a
stage never duplicates anything. Plugins never get a handle on the database except through the
`prepare_db` hook (for tables of their own).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import sqlite3
import sys
import time
from array import array
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlite_utils import Database

from loop.migrations import apply_migrations, unknown_migrations
from loop.schema import Attempt, Critique, Task, ToolCall, Turn, Verdict, stable_id
from loop.wal import BACKSTOP_PAGES, DEFAULT_AUTOCHECKPOINT, BackgroundCheckpoints

STATUSES = ("running", "finished", "failed", "interrupted")


ATTEMPT_COLUMNS = ("id", "run_id", "round_idx", "task_id", "purpose", "sample_index", "parent_id",
                   "depth", "messages_json", "completion", "completion_raw", "token_ids_json",
                   "prompt_tokens", "completion_tokens", "finish_reason", "logprobs_f32",
                   "model_ref", "seed", "created", "prompt_ids_json", "environment",
                   "tools_json", "env_reward", "env_error", "end_reason")

TURN_COLUMNS = ("id", "attempt_id", "idx", "role", "text", "token_ids_json", "logprobs_f32",
                "trained", "tool_calls_json", "name", "arguments_json", "error", "seconds",
                "reward", "finish_reason")


class StoreError(Exception):
    """A lookup that found nothing (or too much); the message is for the user."""


class StoreUnusable(StoreError):
    """The store cannot be used as it is: corrupt or truncated, written by a newer loop, read-only,
    out of space, locked for too long. The message is one line saying what is wrong and what to
    do; nothing was written. `code` is the CLI's exit status."""

    code = 2


class DiskFull(StoreUnusable):
    """A write that failed for lack of space (ENOSPC, EDQUOT, SQLITE_FULL). `what` names what
    could not be written: the store file, or a checkpoint folder."""

    code = 1

    def __init__(self, what: str):
        super().__init__(f"no space left on the device to write {what}")
        self.what = what


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

# How long a write waits for another process's write transaction (SQLite's busy handler), and
# how long `Store.transaction` keeps trying to begin one after that: several `loop run`s, `loop
# show` caching its counts and Datasette share one store.
BUSY_TIMEOUT_MS = 30_000
LOCK_WAIT_S = 300.0

# Each connection's page cache, in KiB (SQLite's default is 2 MiB). A stage's rows land all over
# the indexes of a large store (ids are hashes): with the default, pages were read again within
# one insert and written to the WAL before the commit as well as at it. Memory is taken only as
# pages are read, so a small store costs no more than before.
CACHE_KIB = 65_536

# The page size of a store this loop creates (SQLite's default is 4 KiB; a store that exists keeps
# the size it was made with: SQLite fixes it when the first table is written). A stage's rows go
# into large B-trees whose keys are hashes: with larger pages the trees are shallower and commits
# and checkpoints write fewer, larger pages. In a store of a million attempts a round's rows took
# a seventh less CPU time to write than with 4 KiB pages (8 KiB: half that gain); the queries
# that look up rows one by one (Datasette's canned queries at 1,000 rows) took up to 45 % longer,
# the slowest 49 ms, still half their goal (bench/store.py).
PAGE_SIZE = 16_384

# Rows built at a time by Store._insert_many before SQLite inserts them.
ROWS_PER_INSERT = 10_000


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# json.dumps(value, ensure_ascii=False), built once: json.dumps makes a new encoder on every call
# with non-default options, which cost as much as encoding a row's small values.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
# ... and the C encoder that JSONEncoder.encode builds again on every call, built once too (half
# the time of encoding an answer's messages). Same text: the encoder's own settings, in
# `JSONEncoder.iterencode`'s order. Without the check for circular values (it keeps state across
# a call that raised): a circular value raises RecursionError instead of ValueError; store values
# are JSON data and model outputs, never circular.
_C_ENCODE = (json.encoder.c_make_encoder(
    None, _JSON_ENCODER.default, json.encoder.encode_basestring, None,
    _JSON_ENCODER.key_separator, _JSON_ENCODER.item_separator, False, False, True)
    if json.encoder.c_make_encoder is not None else None)


def _json_text(value: Any) -> str:
    """json.dumps(value, ensure_ascii=False), the same text."""
    if _C_ENCODE is None:
        return _JSON_ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def _json(value: Any) -> str | None:
    """`value` as JSON text that SQLite can store: UTF-8 as it is, or with \\u escapes when it
    holds lone surrogates (which UTF-8 cannot carry; the escapes keep them, losslessly)."""
    if value is None:
        return None
    if type(value) is dict and not value:  # most details and metadata
        return "{}"
    text = _json_text(value)
    if not _encodable(text):
        text = json.dumps(value, ensure_ascii=True)
    return text


def _json_ints(values: list | None) -> str | None:
    """Token ids as JSON. For a list of plain ints, Python's own list repr is the same text as
    JSON's (", " between decimal ints) and faster to make; anything else (a tuple, bools, int
    subclasses, other values) goes through `_json`."""
    if values is None:
        return None
    if type(values) is list and {*map(type, values)} <= {int}:
        return str(values)
    return _json(values)


def pack_logprobs(values: list[float] | None) -> bytes | None:
    """Log-probabilities as little-endian float32, the `attempts.logprobs_f32` format (exact for
    what fp32/bf16/fp16 models compute; a float64 value keeps float32 precision)."""
    if values is None:
        return None
    packed = array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_logprobs(blob: bytes) -> list[float]:
    """The inverse of `pack_logprobs`."""
    values = array("f")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _encodable(text: str) -> bool:
    """Whether `text` is valid UTF-8 once encoded (no lone surrogates)."""
    if text.isascii():  # constant time in CPython: nothing to encode
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _text_and_raw(text: str) -> tuple[str, bytes | None]:
    """(TEXT-safe copy, raw bytes or None): raw only when the string is not valid UTF-8."""
    if _encodable(text):
        return text, None
    raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace"), raw


def open_db(path: str | Path | None = None, pm: Any = None, memory: bool = False) -> Database:
    """Open (creating if needed) and migrate a store. Always go through here, never Database().

    A store that cannot be used as it is (see `check_store_file`; a migration this loop does not
    know; SQLite finding it corrupt, read-only or out of space) is a StoreUnusable with one line
    for the user, raised before anything is written."""
    if memory:
        db = Database(memory=True)
        db.execute("pragma foreign_keys = on")
        apply_migrations(db)
    else:
        path = Path(path)  # type: ignore[arg-type]
        check_store_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnusable(f"cannot create the store's folder {path.parent} "
                                f"({exc.strerror}): pass --db with a writable location") from None
        try:
            db = Database(path)
            # First: every later statement (WAL switch, migrations) waits for other writers.
            db.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute(f"pragma page_size = {PAGE_SIZE}")  # a new store's; before its first write
            db.enable_wal()
            # WAL + NORMAL: a commit is not fsynced until the next checkpoint. A killed process
            # loses nothing (the WAL is in the OS's hands); a power cut may lose the last commits,
            # never consistency, and `loop resume` redoes those stages. FULL cost an fsync per
            # stage.
            db.execute("pragma synchronous = normal")
            db.execute(f"pragma cache_size = -{CACHE_KIB}")
            db.execute("pragma foreign_keys = on")
            db.execute("select count(*) from sqlite_master").fetchone()  # reads the schema
            newer = unknown_migrations(db)
            if newer:
                raise StoreUnusable(
                    f"the store {path} was written by a newer loop (its migration {newer[0]} is "
                    f"unknown to loop {_loop_version()}): upgrade loop to use it, or pass --db "
                    "for another store")
            apply_migrations(db)
        except sqlite3.DatabaseError as exc:
            raise unusable(exc, path) from None
    if pm is not None:
        pm.hook.prepare_db(db=db)
    return db


SQLITE_HEADER = b"SQLite format 3\x00"


def check_store_file(path: Path) -> None:
    """Raise StoreUnusable for a store file that SQLite must not open (or write): not a regular
    file, not readable, read-only (the file, or its folder, where SQLite keeps the -wal and -shm
    files), not a SQLite database, or shorter than its header says (truncated). Reads only the
    first 100 bytes: cheap on every open."""
    if not path.exists():
        if path.parent.exists() and not _writable(path.parent):
            raise StoreUnusable(f"cannot create the store {path}: its folder {path.parent} is "
                                "read-only (pass --db with a writable location)")
        return
    if not path.is_file():
        raise StoreUnusable(f"the store {path} is not a file: pass --db with a store file")
    if not os.access(path, os.R_OK):
        raise StoreUnusable(f"cannot read the store {path} (permission denied): make it readable "
                            f"(chmod u+r {path})")
    if not _writable(path):
        raise StoreUnusable(f"the store {path} is read-only: make it writable (chmod u+w "
                            f"{path}) or work on a writable copy (cp {path} COPY; --db COPY)")
    if not _writable(path.parent):
        raise StoreUnusable(f"the store's folder {path.parent} is read-only (SQLite keeps the "
                            "store's -wal and -shm files beside it): make it writable, or work "
                            "on a copy in a writable folder (--db COPY)")
    size = path.stat().st_size
    if size == 0:
        return  # an empty file is an empty store to SQLite (a `touch`ed --db)
    if open_in_this_process(path):
        # Closing any descriptor of a database file drops every POSIX lock this process holds
        # on it, its SQLite connections' locks included: a store this process already has
        # open was checked when it was first opened, and is not read again here.
        return
    with open(path, "rb") as fh:
        header = fh.read(100)
    restore = "restore it from a backup, or pass --db for another store"
    if not header.startswith(SQLITE_HEADER):
        raise StoreUnusable(f"the store {path} is not a SQLite database (corrupt, or another "
                            f"kind of file): {restore}")
    if len(header) < 100:
        raise StoreUnusable(f"the store {path} is truncated ({size} bytes): {restore}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid when its version-valid-for number matches the change
    # counter. With a -wal holding frames the file may lag its header (a checkpoint in progress
    # when a process died): SQLite completes it, so only a store without one is judged here.
    wal = path.with_name(path.name + "-wal")
    settled = not wal.exists() or wal.stat().st_size == 0
    if settled and header[24:28] == header[92:96] and size < pages * page_size:
        raise StoreUnusable(f"the store {path} is truncated ({size} of {pages * page_size} "
                            f"bytes): {restore}")


def open_in_this_process(path: Path) -> bool:
    """Whether a descriptor of this process already refers to `path` (Linux: /proc/self/fd;
    elsewhere assumed so, which only skips the header check)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return True
    try:
        target = path.stat()
    except OSError:
        return False
    for fd in fds.iterdir():
        try:
            st = os.stat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _writable(path: Path) -> bool:
    """Writable by this process, and not marked read-only: root may write anything, but a file
    (or folder) without write permission bits was made read-only on purpose."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _loop_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("loop")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def sqlite_error_name(exc: BaseException) -> str:
    return getattr(exc, "sqlite_errorname", "") or ""


def is_disk_full(exc: BaseException) -> bool:
    """A SQLite or OS error that says the disk (or the quota) is full."""
    if isinstance(exc, sqlite3.DatabaseError):
        return sqlite_error_name(exc).startswith("SQLITE_FULL") or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def unusable(exc: sqlite3.DatabaseError, path: Path | str) -> StoreUnusable:
    """The one-line StoreUnusable for what SQLite said about the store at `path`; an error that
    is not about the store file itself is re-raised."""
    name = sqlite_error_name(exc)
    restore = "restore it from a backup, or pass --db for another store"
    if is_disk_full(exc):
        return DiskFull(f"the store {path}")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StoreUnusable(f"the store {path} is corrupt ({exc}): {restore}")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
        return StoreUnusable(f"cannot write the store {path} ({exc}): make it and its folder "
                             "writable, or pass --db with a writable location")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreUnusable(f"the store {path} stayed locked by another process ({exc}): try "
                             "again when its write is done")
    if name.startswith("SQLITE_IOERR"):
        return StoreUnusable(f"cannot read or write the store {path} ({exc}): check the disk "
                             "(space, quota, errors), then try again")
    raise exc


def begin_immediate(db: Database, path: str | Path = "") -> None:
    """`BEGIN IMMEDIATE`: take the write lock now. SQLite's busy handler waits BUSY_TIMEOUT_MS for
    another process's write to end; past that, try again until LOCK_WAIT_S, then a StoreUnusable
    (another writer holding the store that long is stuck, not busy)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = sqlite_error_name(exc).startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if busy and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if busy or is_disk_full(exc):
                raise unusable(exc, path) from exc
            raise


class Store:
    """Typed reads and writes over one store database."""

    def __init__(self, db: Database):
        self.db = db
        self._checkpoints: BackgroundCheckpoints | None = None

    @classmethod
    def open(cls, path: str | Path, pm: Any = None) -> "Store":
        """The store at `path`, migrated; StoreUnusable (one line for the user) when it cannot
        be used as it is."""
        return cls(open_db(path, pm))

    @property
    def path(self) -> str:
        """The store's file ("" for an in-memory store)."""
        row = self.db.execute("pragma database_list").fetchone()
        return row[2] if row else ""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside lands together or not at all.

        `BEGIN IMMEDIATE` takes the write lock up front (waiting up to the busy timeout) instead of
        failing with SQLITE_BUSY when a deferred transaction tries to upgrade; writes inside run
        as savepoints of this transaction (sqlite-utils nests `atomic()` that way)."""
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        begin_immediate(self.db, self.path)
        try:
            yield
            self.db.conn.commit()
        except BaseException as exc:
            self.db.conn.rollback()
            if is_disk_full(exc):  # rolled back: what was committed before stays
                raise DiskFull(f"the store {self.path}") from exc
            raise
        if self._checkpoints is not None:
            self._checkpoints.poke()

    @contextlib.contextmanager
    def checkpoints_in_background(self) -> Iterator[BackgroundCheckpoints | None]:
        """Inside, each transaction's commit leaves the copy of its pages from the write-ahead
        log into the database file to a thread (`loop.wal`), instead of doing it before it
        returns once the log holds 1,000 pages; on the way out the thread copies the rest and
        stops. Yields the BackgroundCheckpoints, or None for an in-memory store (no log)."""
        if not self.path or self._checkpoints is not None:  # in memory, or already on
            yield self._checkpoints
            return
        self.db.execute(f"pragma wal_autocheckpoint = {BACKSTOP_PAGES}")
        self._checkpoints = BackgroundCheckpoints(self.path)
        try:
            yield self._checkpoints
        finally:
            checkpoints, self._checkpoints = self._checkpoints, None
            checkpoints.close()
            self.db.execute(f"pragma wal_autocheckpoint = {DEFAULT_AUTOCHECKPOINT}")

    def integrity_problems(self) -> list[str]:
        """`PRAGMA integrity_check` and `foreign_key_check` findings; empty when healthy."""
        rows = [r[0] for r in self.db.execute("pragma integrity_check").fetchall()]
        problems = [] if rows == ["ok"] else rows
        problems += [f"foreign key: {tuple(r)}"
                     for r in self.db.execute("pragma foreign_key_check").fetchall()]
        return problems

    # ----- runs ---------------------------------------------------------------------------------

    def create_run(self, *, run_id: str, name: str, task: str, model: str, config: dict,
                   seed: int, rounds_planned: int, versions: dict, git_sha: str | None,
                   run_dir: str) -> dict:
        if self.db["runs"].count_where("name = ?", [name]):
            raise StoreError(f"a run named {name!r} already exists: choose another --name")
        row = {
            "id": run_id, "name": name, "task": task, "model": model, "status": "running",
            "config_json": _json(config), "seed": seed, "rounds_planned": rounds_planned,
            "versions_json": _json(versions), "git_sha": git_sha, "run_dir": run_dir,
            "error": None, "created": utcnow(), "finished": None,
        }
        self.db["runs"].insert(row)
        return row

    def get_run(self, ref: str) -> dict:
        """A run by id, id prefix or unique name."""
        rows = list(self.db["runs"].rows_where("id = ? or name = ?", [ref, ref]))
        if not rows and len(ref) >= 4:
            rows = list(self.db["runs"].rows_where("id like ?", [ref + "%"]))
        if not rows:
            raise StoreError(f"no run {ref!r} in this store (see `loop runs`)")
        if len(rows) > 1:
            raise StoreError(f"{ref!r} matches {len(rows)} runs: give the full id")
        return rows[0]

    def list_runs(self) -> list[dict]:
        return list(self.db["runs"].rows_where(order_by="created"))

    def note_resume(self, run_id: str) -> None:
        """Count one more `loop resume` of the run (its wall-clock span is no longer its own)."""
        self.db.execute("update runs set resumes = resumes + 1 where id = ?", [run_id])

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        assert status in STATUSES, status
        finished = utcnow() if status != "running" else None
        self.db["runs"].update(run_id, {"status": status, "error": error, "finished": finished})

    # ----- rounds -------------------------------------------------------------------------------

    @staticmethod
    def round_id(run_id: str, idx: int) -> str:
        return stable_id(run_id, "round", idx)

    def ensure_round(self, run_id: str, idx: int, model_in: str | None) -> dict:
        rid = self.round_id(run_id, idx)
        self.db["rounds"].insert(
            {"id": rid, "run_id": run_id, "idx": idx, "stage": "", "stages_json": "{}",
             "model_in": model_in, "model_out": None, "summary_json": None,
             "started": utcnow(), "finished": None},
            ignore=True,
        )
        return self.db["rounds"].get(rid)

    def get_round(self, run_id: str, idx: int) -> dict | None:
        rows = list(self.db["rounds"].rows_where("run_id = ? and idx = ?", [run_id, idx]))
        return rows[0] if rows else None

    def rounds(self, run_id: str) -> list[dict]:
        return list(self.db["rounds"].rows_where("run_id = ?", [run_id], order_by="idx"))

    def mark_stage(self, run_id: str, idx: int, stage: str, stats: dict[str, Any],
                   **fields: Any) -> None:
        """Record that `stage` of round `idx` is complete (call inside the stage's transaction)."""
        row = self.db["rounds"].get(self.round_id(run_id, idx))
        stages = json.loads(row["stages_json"] or "{}")
        stages[stage] = stats
        update = {"stage": stage, "stages_json": _json(stages), **fields}
        if stage == "done":
            update["finished"] = utcnow()
        self.db["rounds"].update(row["id"], update)

    def reset_infra_verdicts(self, run_id: str, idx: int) -> int:
        """Forget the `infra` verdicts of round `idx`'s first answers and reopen its verify stage,
        so a resumed run checks those answers again (a sandbox that failed is never a 0). Only
        while the refine stage has not used the verdicts. Returns the verdicts forgotten."""
        row = self.db["rounds"].get(self.round_id(run_id, idx))
        stages = json.loads(row["stages_json"] or "{}")
        if "verify" not in stages or "refine" in stages:
            return 0
        where = ("from verdicts where error_kind = 'infra' and attempt_id in (select id from "
                 "attempts where run_id = ? and round_idx = ? and purpose = 'train' and depth = 0)")
        count = self.db.execute(f"select count(*) {where}", [run_id, idx]).fetchone()[0]
        if count:
            stages.pop("verify")
            with self.transaction():
                self.db.execute(f"delete {where}", [run_id, idx])
                self.db["rounds"].update(row["id"], {"stages_json": _json(stages)})
        return count

    def reset_round_from_train(self, run_id: str, idx: int) -> None:
        """Forget a round's train and evaluate stages (its checkpoint is bad): the update row, the
        evaluation and its held-out attempts go, so both stages run again on resume."""
        row = self.db["rounds"].get(self.round_id(run_id, idx))
        stages = json.loads(row["stages_json"] or "{}")
        for stage in ("train", "evaluate", "done"):
            stages.pop(stage, None)
        with self.transaction():
            eval_ids = [r[0] for r in self.db.execute(
                "select id from attempts where run_id = ? and round_idx = ? and purpose = 'eval'",
                [run_id, idx]).fetchall()]
            for attempt_id in eval_ids:
                self.db.execute("delete from verdicts where attempt_id = ?", [attempt_id])
                self.db.execute("delete from rewards where attempt_id = ?", [attempt_id])
                self.db.execute("delete from turns where attempt_id = ?", [attempt_id])
            self.db.execute("delete from attempts where run_id = ? and round_idx = ? "
                            "and purpose = 'eval'", [run_id, idx])
            self.db.execute("delete from updates where run_id = ? and round_idx = ?",
                            [run_id, idx])
            self.db.execute("delete from evaluations where run_id = ? and round_idx = ?",
                            [run_id, idx])
            self.db["rounds"].update(row["id"], {"stage": "mistakes", "model_out": None,
                                                 "stages_json": _json(stages), "finished": None})

    # ----- tasks and attempts -------------------------------------------------------------------

    def upsert_tasks(self, tasks: Iterable[Task]) -> None:
        self.db["tasks"].insert_all(
            ({"id": t.id, "source": t.source, "split": t.split, "prompt_json": _json(t.prompt),
              "reference": t.reference, "metadata_json": _json(t.metadata)} for t in tasks),
            ignore=True, batch_size=1000,
        )

    def _rows_in(self, table: str, column: str, values: list[str]) -> Iterator[dict]:
        """Rows whose `column` is one of `values`, in chunks below SQLite's variable limit."""
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self.db[table].rows_where(f"{column} in ({marks})", chunk)

    def get_tasks(self, ids: Iterable[str]) -> dict[str, Task]:
        return {
            row["id"]: Task(id=row["id"], source=row["source"], split=row["split"],
                            prompt=json.loads(row["prompt_json"]), reference=row["reference"],
                            metadata=json.loads(row["metadata_json"] or "{}"))
            for row in self._rows_in("tasks", "id", list(ids))
        }

    def task_ids_used(self, run_id: str, purpose: str = "train") -> set[str]:
        rows = self.db.execute(
            "select distinct task_id from attempts where run_id = ? and purpose = ?", [run_id, purpose]
        ).fetchall()
        return {r[0] for r in rows}

    def task_history(self, run_id: str) -> dict[str, dict[int, tuple[int, int, bool]]]:
        """task id -> {round: (first tries, first tries passed, any attempt passed incl. repairs)}
        over the run's training attempts (an attempt passes when every verifier passed it)."""
        rows = self.db.execute(
            "select a.task_id, a.round_idx, a.depth, min(v.passed) from attempts a "
            "join verdicts v on v.attempt_id = a.id where a.run_id = ? and a.purpose = 'train' "
            "group by a.id", [run_id]).fetchall()
        history: dict[str, dict[int, tuple[int, int, bool]]] = {}
        for task_id, round_idx, depth, ok in rows:
            tries, passed, any_ok = history.setdefault(task_id, {}).get(round_idx, (0, 0, False))
            if depth == 0:
                tries, passed = tries + 1, passed + int(bool(ok))
            history[task_id][round_idx] = (tries, passed, any_ok or bool(ok))
        return history

    def open_mistake_counts(self, run_id: str) -> dict[str, int]:
        """task id -> occurrences of its mistakes that no later pass resolved."""
        rows = self.db.execute(
            "select task_id, sum(occurrences) from mistakes where run_id = ? and "
            "resolved_round is null group by task_id", [run_id]).fetchall()
        return {task_id: int(count) for task_id, count in rows}

    def _insert_many(self, table: str, columns: tuple[str, ...], rows: Iterable[tuple],
                     order_by: str | None = None) -> None:
        """INSERT OR IGNORE of positional rows through one prepared statement: the write path of
        every stage (sqlite-utils' insert_all re-inspects each value and rebuilds its statement
        per chunk, which was most of the time of a stage's commit: bench/store.py).

        With `order_by` (a column) the rows go in sorted by it, a stable sort: rows with equal
        values keep their order, so of duplicates the first is still the one kept, and the rows
        of one attempt keep theirs. Only the rowids the rows get differ, and no reader orders by
        them. Ids are hashes, so in the order they come each row lands on a random page of
        every index that leads with that column; sorted, consecutive rows share pages, which
        roughly halves the work of a large stage's insert (bench/store.py).

        Rows are built ROWS_PER_INSERT at a time before SQLite inserts them: built one by one
        between its inserts (a generator), Python's work and SQLite's took turns evicting each
        other's data from the processor's caches, which cost `insert_attempts` 8 % more CPU
        time at a million attempts (bench/store.py); a batch at a time, so a large stage's
        attempts are not all held twice. All batches land in one transaction."""
        if order_by is not None:
            rows = sorted(rows, key=itemgetter(columns.index(order_by)))
        sql = (f"insert or ignore into [{table}] ({', '.join(f'[{c}]' for c in columns)}) "
               f"values ({', '.join('?' * len(columns))})")
        batches = iter(rows)
        batch = list(islice(batches, ROWS_PER_INSERT))
        if not batch:  # e.g. the turns of attempts that are not episodes
            return
        with contextlib.nullcontext() if self.db.conn.in_transaction else self.db.conn:
            # in a stage's commit (Store.transaction), or on its own: committed here
            while batch:
                self.db.conn.executemany(sql, batch)
                batch = list(islice(batches, ROWS_PER_INSERT))

    def insert_attempts(self, attempts: Iterable[Attempt]) -> None:
        """The attempts, and every turn of those that are episodes (same transaction)."""
        now = utcnow()
        attempts = list(attempts)
        self._insert_many("attempts", ATTEMPT_COLUMNS, (
            (a.id, a.run_id, a.round_index, a.task_id, a.purpose, a.sample_index, a.parent_id,
             a.depth, _json(a.messages), *_text_and_raw(a.completion), _json_ints(a.token_ids),
             a.prompt_tokens, a.completion_tokens, a.finish_reason, pack_logprobs(a.logprobs),
             a.model_ref, a.seed, now,
             *((_json_ints(a.prompt_ids), a.environment, _json(a.tools), a.env_reward,
                a.env_error, a.end_reason) if a.is_episode else (None,) * 6))
            for a in attempts))
        self._insert_many("turns", TURN_COLUMNS, (
            (stable_id(a.id, i), a.id, i, t.role, t.text, _json_ints(t.token_ids),
             pack_logprobs(t.logprobs), int(t.trained),
             _json([c.model_dump() for c in t.tool_calls]) if t.role == "assistant" else None,
             t.name, None if t.arguments is None else _json(t.arguments), t.error, t.seconds,
             t.reward, t.finish_reason)
            for a in attempts if a.turns for i, t in enumerate(a.turns)))

    def attempts(self, run_id: str, round_idx: int, purpose: str) -> list[Attempt]:
        rows = list(self.db["attempts"].rows_where(
            "run_id = ? and round_idx = ? and purpose = ?", [run_id, round_idx, purpose],
            order_by="task_id, sample_index",
        ))
        turns = self.turns(r["id"] for r in rows if r.get("environment") is not None)
        return [self._attempt(r, turns.get(r["id"], [])) for r in rows]

    def turns(self, attempt_ids: Iterable[str]) -> dict[str, list[Turn]]:
        """attempt id -> its turns in order (episodes only; other attempts have none)."""
        ids = list(attempt_ids)
        out: dict[str, list[Turn]] = {}
        if not ids:
            return out
        rows = self.db.execute(
            f"select {', '.join(TURN_COLUMNS)} from turns where attempt_id in "
            "(select value from json_each(?)) order by attempt_id, idx", [json.dumps(ids)])
        for row in rows.fetchall():
            r = dict(zip(TURN_COLUMNS, row))
            out.setdefault(r["attempt_id"], []).append(Turn(
                role=r["role"], text=r["text"], token_ids=json.loads(r["token_ids_json"] or "[]"),
                logprobs=(unpack_logprobs(r["logprobs_f32"]) if r["logprobs_f32"] is not None
                          else None),
                trained=bool(r["trained"]),
                tool_calls=[ToolCall(**c) for c in json.loads(r["tool_calls_json"] or "[]")],
                name=r["name"],
                arguments=None if r["arguments_json"] is None else json.loads(r["arguments_json"]),
                error=r["error"], seconds=r["seconds"] or 0.0, reward=r["reward"],
                finish_reason=r["finish_reason"]))
        return out

    @staticmethod
    def _attempt(r: dict, turns: list[Turn] | None = None) -> Attempt:
        episode = {}
        if r.get("environment") is not None:
            episode = dict(turns=turns or [], prompt_ids=json.loads(r["prompt_ids_json"] or "[]"),
                           environment=r["environment"],
                           tools=json.loads(r["tools_json"] or "[]"),
                           env_reward=r["env_reward"], env_error=r["env_error"],
                           end_reason=r["end_reason"])
        return Attempt(
            id=r["id"], run_id=r["run_id"], round_index=r["round_idx"], task_id=r["task_id"],
            purpose=r["purpose"], sample_index=r["sample_index"], parent_id=r["parent_id"],
            depth=r["depth"], messages=json.loads(r["messages_json"]),
            completion=(r["completion_raw"].decode("utf-8", "surrogatepass")
                        if r.get("completion_raw") is not None else r["completion"]),
            token_ids=json.loads(r["token_ids_json"] or "[]"), prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"], finish_reason=r["finish_reason"],
            logprobs=(unpack_logprobs(r["logprobs_f32"]) if r.get("logprobs_f32") is not None
                      else json.loads(r["logprobs_json"]) if r["logprobs_json"] else None),
            model_ref=r["model_ref"] or "", seed=r["seed"] or 0, **episode,
        )

    # ----- verdicts and rewards -----------------------------------------------------------------

    def insert_verdicts(self, rows: Iterable[tuple[str, str, Verdict, float]]) -> None:
        """rows: (attempt_id, verifier name, verdict, duration_ms)."""
        self._insert_many("verdicts", ("id", "attempt_id", "verifier", "passed", "score",
                                       "error_kind", "mistake", "feedback", "details_json",
                                       "duration_ms"), (
            (stable_id(attempt_id, verifier), attempt_id, verifier, int(v.passed), v.score,
             v.error_kind, v.mistake, v.feedback, _json(v.details), ms)
            for attempt_id, verifier, v, ms in rows), order_by="attempt_id")

    def verdicts(self, attempt_ids: Iterable[str]) -> dict[str, dict[str, Verdict]]:
        """attempt id -> {verifier: Verdict}."""
        ids = list(attempt_ids)
        out: dict[str, dict[str, Verdict]] = {i: {} for i in ids}
        for r in self._rows_in("verdicts", "attempt_id", ids):
            out[r["attempt_id"]][r["verifier"]] = Verdict(
                passed=bool(r["passed"]), score=r["score"] or 0.0, feedback=r["feedback"] or "",
                error_kind=r["error_kind"], mistake=r["mistake"],
                details=json.loads(r["details_json"] or "{}"),
            )
        return out

    def insert_rewards(self, rows: Iterable[tuple[str, str, float | None]]) -> None:
        self._insert_many("rewards", ("attempt_id", "reward_fn", "value"), rows,
                          order_by="attempt_id")

    def insert_critiques(self, rows: Iterable[tuple[str, Critique]]) -> None:
        """(attempt id, critique) pairs; one row per attempt and critic."""
        now = utcnow()
        self._insert_many("critiques", ("id", "attempt_id", "critic", "kind", "text", "created"), (
            (stable_id(attempt_id, c.critic), attempt_id, c.critic, c.kind, c.text, now)
            for attempt_id, c in rows), order_by="attempt_id")

    def critiques(self, attempt_ids: Iterable[str]) -> dict[str, list[Critique]]:
        """attempt id -> its critiques, in critic order of insertion."""
        ids = list(attempt_ids)
        out: dict[str, list[Critique]] = {i: [] for i in ids}
        for r in self._rows_in("critiques", "attempt_id", ids):
            out[r["attempt_id"]].append(Critique(kind=r["kind"], text=r["text"], critic=r["critic"]))
        return out

    def rewards(self, attempt_ids: Iterable[str]) -> dict[str, dict[str, float | None]]:
        ids = list(attempt_ids)
        out: dict[str, dict[str, float | None]] = {i: {} for i in ids}
        for r in self._rows_in("rewards", "attempt_id", ids):
            out[r["attempt_id"]][r["reward_fn"]] = r["value"]
        return out

    # ----- mistakes -----------------------------------------------------------------------------

    def update_mistakes(self, run_id: str, round_idx: int,
                        seen: dict[tuple[str, str], tuple[str, str, int]],
                        solved_tasks: set[str]) -> dict[str, int]:
        """Fold one round into the mistake log.

        seen: (task_id, kind) -> (first attempt id of this round, feedback, occurrences this round).
        solved_tasks: tasks with at least one passing attempt this round; their open mistakes are
        marked resolved in this round (a mistake seen again in the same round stays open).
        Idempotent per round: a round already folded in is skipped.
        """
        table = self.db["mistakes"]
        opened = recurred = resolved = 0
        for (task_id, kind), (attempt_id, feedback, count) in seen.items():
            mid = stable_id(run_id, task_id, kind)
            existing = table.get(mid) if table.count_where("id = ?", [mid]) else None
            if existing is None:
                table.insert({"id": mid, "run_id": run_id, "task_id": task_id, "kind": kind,
                              "first_round": round_idx, "last_round": round_idx,
                              "occurrences": count, "first_attempt_id": attempt_id,
                              "last_feedback": feedback, "resolved_round": None})
                opened += 1
            elif existing["last_round"] < round_idx:
                table.update(mid, {"last_round": round_idx,
                                   "occurrences": existing["occurrences"] + count,
                                   "last_feedback": feedback, "resolved_round": None})
                recurred += 1
        seen_keys = set(seen)
        for task_id in solved_tasks:
            for row in table.rows_where("run_id = ? and task_id = ? and resolved_round is null",
                                        [run_id, task_id]):
                if (task_id, row["kind"]) not in seen_keys:
                    table.update(row["id"], {"resolved_round": round_idx})
                    resolved += 1
        return {"opened": opened, "recurred": recurred, "resolved": resolved}

    # ----- updates and evaluations --------------------------------------------------------------

    def record_update(self, run_id: str, round_idx: int, method: str, dataset_size: int,
                      metrics: dict, adapter_path: str | None, adapter_sha256: str | None,
                      seconds: float) -> None:
        self.db["updates"].insert(
            {"id": stable_id(run_id, "update", round_idx), "run_id": run_id,
             "round_idx": round_idx, "method": method, "dataset_size": dataset_size,
             "metrics_json": _json(metrics), "adapter_path": adapter_path,
             "adapter_sha256": adapter_sha256, "seconds": seconds, "created": utcnow()},
            replace=True,
        )

    def updates(self, run_id: str) -> list[dict]:
        return list(self.db["updates"].rows_where("run_id = ?", [run_id], order_by="round_idx"))

    def record_evaluation(self, run_id: str, round_idx: int, split: str, n: int, passed: int,
                          truncated: int, mean_tokens: float, seconds: float) -> None:
        self.db["evaluations"].insert(
            {"id": stable_id(run_id, "eval", round_idx, split), "run_id": run_id,
             "round_idx": round_idx, "split": split, "n": n, "passed": passed,
             "pass_at_1": passed / n if n else 0.0,
             "truncated_share": truncated / n if n else 0.0,
             "mean_completion_tokens": mean_tokens, "seconds": seconds, "created": utcnow()},
            replace=True,
        )

    def record_pass_at_k(self, run_id: str, round_idx: int, split: str, samples: int,
                         temperature: float, pass_at_k: dict[int, float]) -> None:
        """Add the sampled evaluation to round `round_idx`'s evaluation row (record_evaluation
        writes that row first, in the same transaction): `samples` answers per problem at
        `temperature`, and {k: pass@k}."""
        self.db["evaluations"].update(
            stable_id(run_id, "eval", round_idx, split),
            {"samples": samples, "sample_temperature": temperature,
             "pass_at_k_json": _json({str(k): v for k, v in sorted(pass_at_k.items())})})

    def evaluations(self, run_id: str) -> dict[int, dict]:
        return {r["round_idx"]: r for r in
                self.db["evaluations"].rows_where("run_id = ? and split = 'eval'", [run_id])}

    def error_counts(self, run_id: str) -> dict[int, dict[str, int]]:
        """Per round: verdicts that are plugin failures (infra/timeout) and NULL rewards."""
        # CROSS JOIN keeps SQLite reading the few failed rows (partial indexes, m005) and looking
        # up their attempts, instead of reading every attempt of the run.
        out: dict[int, dict[str, int]] = {}
        for idx, n in self.db.execute(
                "select a.round_idx, count(*) from verdicts v cross join attempts a"
                " where a.id = v.attempt_id and a.run_id = ?"
                " and v.error_kind in ('infra', 'timeout') group by 1", [run_id]).fetchall():
            out.setdefault(idx, {"verifier": 0, "reward": 0})["verifier"] = n
        for idx, n in self.db.execute(
                "select a.round_idx, count(*) from rewards r cross join attempts a"
                " where a.id = r.attempt_id and a.run_id = ? and r.value is null group by 1",
                [run_id]).fetchall():
            out.setdefault(idx, {"verifier": 0, "reward": 0})["reward"] = n
        return out

    def train_counts(self, run_id: str) -> dict[int, dict[str, int]]:
        """Per round of the train split: prompts, attempts, passing attempts, prompts with at least
        one passing attempt (solved), and attempts cut off at the token limit."""
        rows = self.db.execute(
            """
            with judged as (
              select a.round_idx, a.task_id, a.finish_reason,
                (exists (select 1 from verdicts v where v.attempt_id = a.id)
                 and not exists (select 1 from verdicts v where v.attempt_id = a.id
                                 and v.passed = 0)) as ok
              from attempts a where a.run_id = ? and a.purpose = 'train'
            )
            select round_idx, count(distinct task_id), count(*), sum(ok),
              count(distinct case when ok then task_id end),
              sum(case when finish_reason = 'length' then 1 else 0 end)
            from judged group by round_idx
            """,
            [run_id],
        ).fetchall()
        return {r[0]: {"prompts": r[1], "attempts": r[2], "passed": r[3] or 0,
                       "solved_prompts": r[4] or 0, "truncated": r[5] or 0} for r in rows}

    def round_train_counts(self, run_id: str, idx: int) -> dict[str, int]:
        """One round's `train_counts` entry, plus `verdicts` and `verdicts_passed` (the verdicts
        of its train attempts, and how many passed: `accuracy_per_round.train_pass_rate`)."""
        row = self.db.execute(
            """
            with judged as (
              select a.task_id, a.finish_reason,
                (select count(*) from verdicts v where v.attempt_id = a.id) as verdicts,
                (select total(v.passed) from verdicts v where v.attempt_id = a.id) as passes
              from attempts a where a.run_id = ? and a.round_idx = ? and a.purpose = 'train'
            )
            select count(distinct task_id), count(*),
              sum(verdicts > 0 and passes = verdicts),
              count(distinct case when verdicts > 0 and passes = verdicts then task_id end),
              sum(finish_reason = 'length'), sum(verdicts), sum(passes)
            from judged
            """,
            [run_id, idx],
        ).fetchone()
        keys = ("prompts", "attempts", "passed", "solved_prompts", "truncated", "verdicts",
                "verdicts_passed")
        return {key: int(value or 0) for key, value in zip(keys, row)}

    def cache_round_summary(self, run_id: str, idx: int, finished: str, summary: dict) -> bool:
        """Keep a finished round's counts (loop.summary: its `train` counts and plugin `errors`)
        in `rounds.summary_json`, which `loop show` and the `accuracy_per_round` view read
        instead of counting the round's attempts again. Stored with the round's `finished` time:
        a round that is redone finishes anew and is counted again. A cache, so a store that
        cannot be written now (locked, read-only) is left as it is; returns whether it was."""
        import sqlite3

        try:
            with self.transaction():
                self.db.execute(
                    "update rounds set summary_json = ? where run_id = ? and idx = ? "
                    "and stage = 'done' and finished = ?",
                    [_json({"finished": finished, **summary}), run_id, idx, finished])
        except sqlite3.OperationalError:
            return False
        return True
