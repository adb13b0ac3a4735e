"""The store's write-ahead log, copied into the database file on a thread of its own.

A store is in WAL mode: a commit appends the pages it changed to `loop.db-wal`, and a checkpoint
later copies them into `loop.db`, fsyncing both files (with `synchronous = normal` these are the
only waits on the disk a commit has). By default SQLite checkpoints in the committing thread, right
after any commit that leaves more than 1,000 pages in the log: every large stage's commit waited
for the copy of its pages and for two fsyncs. In a store of a million attempts, moving them to a
thread wrote a round's rows 1.26x as fast by wall clock (bench/store.py against its
`--inline-checkpoints` baseline; BENCHMARKS.md, "Store writes, before and after").

`BackgroundCheckpoints(path)` runs the checkpoints on a daemon thread with a connection of its
own: each `poke()` (`Store.transaction` pokes after each commit) asks for one PASSIVE checkpoint,
which copies what no reader still needs and never blocks a writer or a reader. The engine turns it
on for a run (`Store.checkpoints_in_background`), so the copy overlaps the next stage's work; the
committing connection keeps its own automatic checkpoint at BACKSTOP_PAGES, for a thread that
falls behind. A crash in the middle of a checkpoint loses nothing: SQLite redoes it from the log.

Forks: a process forked while the thread is inside SQLite would inherit SQLite's mutexes locked,
and a child that then used SQLite (a verifier that runs SQL, say) could hang on one. The thread
holds `IN_SQLITE` whenever it is inside SQLite, and a fork (`os.fork`, multiprocessing's fork
start method, a subprocess with a `preexec_fn`) waits for it first (`os.register_at_fork`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

BACKSTOP_PAGES = 10_000  # the committing connection's own automatic checkpoint while a thread runs
DEFAULT_AUTOCHECKPOINT = 1000  # SQLite's, restored when the thread stops

IN_SQLITE = threading.Lock()  # held by the checkpoint thread while it is inside SQLite
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=IN_SQLITE.acquire, after_in_parent=IN_SQLITE.release,
                        after_in_child=IN_SQLITE.release)


class BackgroundCheckpoints:
    """A daemon thread that checkpoints the WAL store at `path` once per `poke()`; `close()`
    runs a last checkpoint and waits for the thread. `checkpoints` counts the checkpoints run,
    `seconds` and `cpu_seconds` the wall and thread CPU time they took, `last` is SQLite's
    answer to the latest (busy, frames in the log, frames copied), and `error` the latest
    checkpoint's failure as one line (None after one that worked): a failed checkpoint loses
    nothing (the log keeps the pages) and the next poke tries again."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoints = 0
        self.seconds = self.cpu_seconds = 0.0
        self.last: tuple[int, int, int] | None = None
        self.error: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="loop-wal-checkpoints",
                                        daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Ask for a checkpoint; returns at once. Pokes that come while one runs ask for one
        more, not one each."""
        self._wake.set()

    def close(self) -> None:
        """Checkpoint what the log holds now, then stop the thread (again: nothing to do)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _work(self) -> None:
        with IN_SQLITE:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                stopping = self._stopping
                with IN_SQLITE:
                    self._checkpoint(conn)
                if stopping:
                    return
        finally:
            with IN_SQLITE:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            busy, log, copied = conn.execute("pragma wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.thread_time() - cpu
        self.last, self.error = (busy, log, copied), None
        self.checkpoints += 1
