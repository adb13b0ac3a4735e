"""One live process per run: an exclusive `flock` on `<run dir>/run.lock`, holding the owner's pid.

The kernel drops the lock when its process dies, however it dies (kill -9 included), so a lock
left by a dead process never blocks `loop resume`; the pid written in the file says whose it was.
A second process on a live run fails at once, naming the pid that holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLocked(Exception):
    """The run is being worked on by another live process."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.previous_pid: int | None = None

    def acquire(self, run_name: str) -> "RunLock":
        """Take the lock or raise RunLocked; `previous_pid` is the pid of a dead earlier owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunLocked(f"run {run_name} is locked by pid {holder} (still running); "
                            "wait for it or stop it first") from None
        self.previous_pid = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        HELD.add(fd)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            HELD.discard(self.fd)
            self.fd = None


# The descriptors of the locks this process holds: a forked helper process (a plugin worker) closes
# its copies, so the lock goes when this process dies, not when its last child does.
HELD: set[int] = set()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
