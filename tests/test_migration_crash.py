"""Killed during a migration: a store at an older migration level, with rows, is opened by a
process that is SIGKILLed inside a migration (fail point `migration.<name>`: after the
migration's body ran, before its bookkeeping row). The pending migrations apply in one
transaction (loop.migrations.apply_migrations), so the store is left exactly as it was; the next
open applies them all, and the rows are intact."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlite_utils import Database

from loop.migrations import migration_names, migrations
from loop.store import Store, open_db

pytestmark = pytest.mark.slow  # starts processes

OLD_LEVEL = "m005_read_side_indexes_and_views"  # the store was written before this one


@pytest.fixture(scope="module")
def old_store(tmp_path_factory) -> Path:
    """A store at m004 with a run, tasks, attempts, verdicts and rewards; checkpointed."""
    path = tmp_path_factory.mktemp("old") / "loop.db"
    db = Database(path)
    db.enable_wal()
    migrations.apply(db, stop_before=OLD_LEVEL)
    db["runs"].insert({"id": "run-1", "name": "old", "task": "t", "model": "m",
                       "status": "finished", "config_json": "{}", "seed": 0,
                       "rounds_planned": 1, "created": "2025-01-01"})
    db["rounds"].insert({"id": "round-0", "run_id": "run-1", "idx": 0, "stage": "done",
                         "stages_json": "{}"})
    for i in range(50):
        db["tasks"].insert({"id": f"task-{i}", "source": "s", "split": "train",
                            "prompt_json": '[{"role": "user", "content": "%d+1="}]' % i,
                            "reference": str(i + 1)})
        db["attempts"].insert({"id": f"a-{i}", "run_id": "run-1", "round_idx": 0,
                               "task_id": f"task-{i}", "purpose": "train", "sample_index": 0,
                               "depth": 0, "messages_json": "[]",
                               "completion": f"the answer is {i + 1} or so"})
        db["verdicts"].insert({"id": f"v-{i}", "attempt_id": f"a-{i}", "verifier": "math",
                               "passed": i % 2, "score": float(i % 2), "feedback": f"fb {i}"})
        db["rewards"].insert({"attempt_id": f"a-{i}", "reward_fn": "binary",
                              "value": float(i % 2)})
    db.execute("pragma wal_checkpoint(truncate)")
    db.conn.close()
    return path


def _rows(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"select {cols} from {t} order by 1").fetchall() for t, cols in {
            "runs": "id, name, status, config_json", "rounds": "id, run_id, idx, stage",
            "tasks": "id, prompt_json, reference", "attempts": "id, task_id, completion",
            "verdicts": "id, attempt_id, passed, feedback",
            "rewards": "attempt_id, reward_fn, value"}.items()}
    finally:
        conn.close()


def _applied(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("select name from _sqlite_migrations order by id")]
    finally:
        conn.close()


PENDING = migration_names()[migration_names().index(OLD_LEVEL):]


@pytest.mark.parametrize("name", PENDING)
def test_kill_inside_a_migration_then_open_completes_them(name, old_store, tmp_path):
    path = tmp_path / "loop.db"
    shutil.copy(old_store, path)
    before_rows, before_applied = _rows(path), _applied(path)
    assert before_applied == migration_names()[:len(migration_names()) - len(PENDING)]
    killed = subprocess.run(
        [sys.executable, "-c", "import sys; from loop.store import open_db; open_db(sys.argv[1])",
         str(path)], env={**os.environ, "LOOP_FAILPOINT": f"migration.{name}"},
        capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # All pending migrations were one transaction: the store is as it was.
    assert _applied(path) == before_applied
    assert _rows(path) == before_rows
    store = Store.open(path)
    assert _applied(path) == migration_names()
    assert store.integrity_problems() == []
    assert _rows(path) == before_rows
    # and what the migrations built works on the old rows: m005's views, m006/m008's search
    assert store.db.execute("select count(*) from attempt_results where passed").fetchone()[0] \
        == 25
    from loop.search_index import refresh

    refresh(store.db)
    hits = store.db.execute("select count(*) from attempts_fts where completion like "
                            "'%answer is 17 %'").fetchone()[0]
    assert hits == 1
    assert [r["resumes"] for r in store.db["runs"].rows] == [0]  # m007's column


def test_kill_while_creating_a_new_store(tmp_path):
    """The first migration of a new store killed: the next open creates it whole."""
    path = tmp_path / "loop.db"
    first = migration_names()[0]
    killed = subprocess.run(
        [sys.executable, "-c", "import sys; from loop.store import open_db; open_db(sys.argv[1])",
         str(path)], env={**os.environ, "LOOP_FAILPOINT": f"migration.{first}"},
        capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from sqlite_master").fetchone()[0] == 0
    conn.close()
    db = open_db(path)
    assert [m.name for m in migrations.applied(db)] == migration_names()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    open_db(path).conn.close()  # nothing pending: a plain open writes nothing
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
