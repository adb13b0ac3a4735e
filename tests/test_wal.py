"""The store's write-ahead log copied into the database file on a thread (loop.wal): a run's
commits leave the checkpoint to it, it copies every committed page, the committing connection
gets its own automatic checkpoint back afterwards, and a fork waits for a checkpoint in progress."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

import loop.wal
from loop.store import Store, open_db
from loop.wal import BACKSTOP_PAGES, DEFAULT_AUTOCHECKPOINT, IN_SQLITE, BackgroundCheckpoints


def _autocheckpoint(store: Store) -> int:
    return store.db.execute("pragma wal_autocheckpoint").fetchone()[0]


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _write(store: Store, rows: int, start: int = 0) -> None:
    with store.transaction():
        store.db.execute("create table if not exists filler (k integer primary key, v text)")
        store.db.conn.executemany("insert into filler values (?, ?)",
                                  ((start + i, "x" * 200) for i in range(rows)))


def test_commits_leave_the_checkpoint_to_the_thread_which_copies_every_page(tmp_path):
    store = Store.open(tmp_path / "loop.db")
    assert _autocheckpoint(store) == DEFAULT_AUTOCHECKPOINT
    with store.checkpoints_in_background() as checkpoints:
        # the committing connection checkpoints only as a backstop
        assert _autocheckpoint(store) == BACKSTOP_PAGES
        _write(store, 5000)
        assert _wait_for(lambda: checkpoints.checkpoints >= 1)
        busy, log, copied = checkpoints.last
        assert busy == 0 and log > 0 and copied == log, checkpoints.last  # all of it, by the thread
        assert checkpoints.error is None
        _write(store, 10, start=5000)
        before = checkpoints.checkpoints
        assert _wait_for(lambda: checkpoints.checkpoints > before)  # each commit pokes it
    assert not checkpoints._thread.is_alive()
    assert _autocheckpoint(store) == DEFAULT_AUTOCHECKPOINT
    # what the thread copied is in the database file itself: read it without the log
    store.db.conn.close()
    (tmp_path / "loop.db-wal").unlink(missing_ok=True)
    conn = sqlite3.connect(tmp_path / "loop.db")
    assert conn.execute("select count(*), max(k) from filler").fetchone() == (5010, 5009)
    conn.close()


def test_nested_it_keeps_the_one_thread_and_a_store_in_memory_has_none(tmp_path):
    store = Store.open(tmp_path / "loop.db")
    with store.checkpoints_in_background() as outer:
        with store.checkpoints_in_background() as inner:
            assert inner is outer
        assert outer._thread.is_alive() and store._checkpoints is outer  # the outer one stops it
        assert _autocheckpoint(store) == BACKSTOP_PAGES
    assert store._checkpoints is None and not outer._thread.is_alive()
    in_memory = Store(open_db(memory=True))
    with in_memory.checkpoints_in_background() as none:
        assert none is None
        _write(in_memory, 10)
    assert in_memory.db.execute("select count(*) from filler").fetchone()[0] == 10


class _FailsOnce:
    """A connection whose first statement fails as a full or broken disk would make it."""

    def __init__(self, conn):
        self.conn, self.failed = conn, False

    def execute(self, sql):
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql)

    def close(self):
        self.conn.close()


def test_a_failed_checkpoint_is_kept_as_one_line_and_the_next_poke_tries_again(tmp_path,
                                                                               monkeypatch):
    store = Store.open(tmp_path / "loop.db")
    real_connect = sqlite3.connect
    monkeypatch.setattr(loop.wal.sqlite3, "connect",
                        lambda *a, **kw: _FailsOnce(real_connect(*a, **kw)))
    with store.checkpoints_in_background() as checkpoints:
        _write(store, 100)
        assert _wait_for(lambda: checkpoints.error is not None)
        assert checkpoints.error == "OperationalError: disk I/O error"
        assert checkpoints.checkpoints == 0 and checkpoints._thread.is_alive()
        _write(store, 100, start=100)  # nothing was lost, and the next commit's poke works
        assert _wait_for(lambda: checkpoints.checkpoints >= 1)
        assert checkpoints.error is None
    assert store.db.execute("select count(*) from filler").fetchone()[0] == 200


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_fork_waits_for_a_checkpoint_in_progress():
    forked = threading.Event()

    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked.set()
        os.waitpid(pid, 0)

    with IN_SQLITE:  # as the thread holds it inside SQLite
        thread = threading.Thread(target=fork)
        thread.start()
        assert not forked.wait(0.5)  # the fork is held back
    assert forked.wait(10)
    thread.join(10)
    assert IN_SQLITE.acquire(blocking=False)  # released in the parent after the fork
    IN_SQLITE.release()


def test_a_run_commits_with_checkpoints_in_the_background(tmp_path, monkeypatch):
    """`loop run` (loop.runs.drive): every stage's commit pokes the thread, which has copied the
    log into the store file by the time the run ends."""
    from tiny_model import scripted_run

    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "math")
    started = []
    real_init = BackgroundCheckpoints.__init__

    def init(self, path):
        real_init(self, path)
        started.append(self)

    monkeypatch.setattr(BackgroundCheckpoints, "__init__", init)
    result, conn = scripted_run(tmp_path, "--rounds", "1")
    assert result.exit_code == 0, result.output
    assert len(started) == 1 and started[0].path == str(tmp_path / "loop.db")
    assert started[0].checkpoints >= 3 and started[0].error is None  # at least one per stage
    assert not started[0]._thread.is_alive()
    conn.close()


def test_the_store_bench_writes_the_way_a_run_does(monkeypatch):
    """bench/store.py builds its store with the checkpoints in the background, as a run does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import store as bench

    seen = []
    real = Store.checkpoints_in_background

    def spy(self):
        seen.append(self)
        return real(self)

    monkeypatch.setattr(Store, "checkpoints_in_background", spy)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        built = bench.build(Path(folder) / "loop.db", attempts=300, rounds=1, seed=0)
    assert len(seen) == 1 and built["counts"]["attempts"] > 250
    # every stage's commit poked it (two runs of three stages and an evaluation at least)
    assert built["background"]["checkpoints"] >= 6
    assert built["timer"].seconds["last checkpoint"] >= 0
    with tempfile.TemporaryDirectory() as folder:  # the baseline: SQLite's own checkpoints
        inline = bench.build(Path(folder) / "loop.db", attempts=300, rounds=1, seed=0,
                             inline_checkpoints=True)
    assert len(seen) == 1 and inline["background"] is None
    assert inline["counts"] == built["counts"]  # the same rows either way
