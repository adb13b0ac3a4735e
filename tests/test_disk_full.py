"""A full disk, for real: a small tmpfs mounted under the test's folder holds the store (--db on
it) and the run folders. The run stops at a store write (SQLITE_FULL) in one test and at a
checkpoint write (ENOSPC) in the other, with one line on stderr naming what could not be written
and how to continue; nothing committed is lost; after space is freed, `loop resume` finishes the
run with exactly the rows of an uninterrupted run (tests/test_resume.py's snapshot).

Mounting needs root (the test machines run as root); elsewhere these tests skip."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from test_resume import (
    RUN_SETTINGS,
    TASK,
    assert_consistent,
    loop_env,
    loop_fork,
    snapshot,
)
from tiny_model import write_adder_plugin

pytestmark = [pytest.mark.slow,  # starts `loop` processes
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]

# A plugin that fills the disk holding FILL_FILE to the last byte when round FILL_ROUND starts,
# after emptying FILL_STORE's write-ahead log into the store file: the round's first store write
# then needs space for the log that is not there. Deterministic: the run's writes are the same
# every time. (Without the emptying, the log, whose pages a run's checkpoint thread copies out
# after each commit, would be written over in place for as long as a commit fits in it.)
FILL_PLUGIN = '''
import errno, os, sqlite3
import loop

@loop.hookimpl
def round_started(round_index):
    path = os.environ.get("FILL_FILE")
    if not path or round_index != int(os.environ.get("FILL_ROUND", "1")):
        return
    store = sqlite3.connect(os.environ["FILL_STORE"], timeout=30)
    busy, _, _ = store.execute("pragma wal_checkpoint(TRUNCATE)").fetchone()
    store.close()
    assert busy == 0, "the store's log could not be emptied"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
'''

# The `noop` update method with a big checkpoint: BIG_MB MiB of zeros beside its update.json.
BIG_PLUGIN = '''
import os
import loop
from loop.testing import NoopUpdater


class BigNoop(NoopUpdater):
    name = "bignoop"

    def update(self, context):
        result = super().update(context)
        block = b"\\0" * (1 << 20)
        with open(context.output_dir / "weights.bin", "wb") as fh:
            for _ in range(int(os.environ.get("BIG_MB", "12"))):
                fh.write(block)
        return result


@loop.hookimpl
def register_updaters(register):
    register(BigNoop())
'''

SCRIPTED = ["--model", "scripted-adder", "--set", "backend.name=adder"]


@pytest.fixture
def disk(tmp_path):
    """Mount a tmpfs under tmp_path; yields (mount point, function that sets its size)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = False

    def size(mib: int) -> None:
        nonlocal mounted
        options = f"size={mib}m" + (",remount" if mounted else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
        mounted = True

    try:
        yield mount, size
    finally:
        if mounted:
            if subprocess.run(["umount", str(mount)]).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)])


def _plugins(folder: Path) -> Path:
    plugins = write_adder_plugin(folder / "plugins")
    (plugins / "fill.py").write_text(FILL_PLUGIN)
    (plugins / "big.py").write_text(BIG_PLUGIN)
    return plugins


def _run(folder: Path, db: Path, name: str, method: str, env: dict | None = None):
    plugins = _plugins(folder)
    task = folder / "task.yaml"
    task.write_text(TASK)
    args = ["run", str(task), "--name", name, "--db", str(db), *SCRIPTED, "--method", method,
            *RUN_SETTINGS]
    return loop_fork(args, loop_env(plugins, env), folder)


def _resume(folder: Path, db: Path, name: str):
    return loop_fork(["resume", name, "--db", str(db)], loop_env(folder / "plugins"), folder)


def _reference(folder: Path, method: str) -> dict:
    folder.mkdir()
    done = _run(folder, folder / "loop.db", "ref", method)
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(folder / "loop.db")


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return " ".join(lines[0].split())


def _status(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select status from runs").fetchone()[0]
    finally:
        conn.close()


def _took_over(stdout: str, status: str) -> None:
    """A run left `running` (its status could not be written either) is taken over as a killed
    one's is; a `failed` one is resumed."""
    text = " ".join(stdout.split())
    if status == "running":  # what these sizes give: the disk is full to the last byte
        assert "which is gone: taking over" in text, text
    else:
        assert "(was failed)" in text, text


def test_full_disk_at_a_store_write_then_resume(disk, tmp_path):
    reference = _reference(tmp_path / "reference", "noop")
    mount, size = disk
    size(16)
    db = mount / "loop.db"
    filler = mount / "filler"
    stopped = _run(tmp_path, db, "full", "noop", {"FILL_FILE": str(filler), "FILL_STORE": str(db)})
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    line = _one_line(stopped.stderr)
    assert line == (f"error: run full stopped: no space left on the device to write the store "
                    f"{db}: free space there, then `loop resume full` (nothing committed is "
                    "lost)"), line
    # What was committed is there: round 0 whole, round 1 not begun (its select rolled back).
    conn = sqlite3.connect(db)
    assert conn.execute("select idx, stage from rounds order by idx").fetchall() == [
        (0, "done"), (1, "")]
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    conn.close()
    status = _status(db)
    assert status in ("failed", "running")  # `running`: even that could not be written
    filler.unlink()
    resumed = _resume(tmp_path, db, "full")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _took_over(resumed.stdout, status)
    assert snapshot(db) == reference
    assert_consistent(mount)


def test_full_disk_at_a_checkpoint_write_then_resume(disk, tmp_path):
    """The round's rows fit; its 12 MiB checkpoint does not. The half-written checkpoint stays a
    `.tmp-*` folder (never the round's checkpoint), which resume deletes."""
    reference = _reference(tmp_path / "reference", "bignoop")
    mount, size = disk
    size(40)
    db = mount / "loop.db"
    filler = mount / "filler"
    with open(filler, "wb") as fh:  # leaves ~10 MiB: the store needs ~2, a checkpoint 12
        for _ in range(30):
            fh.write(b"\0" * (1 << 20))
    stopped = _run(tmp_path, db, "big", "bignoop")
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    line = _one_line(stopped.stderr)
    conn = sqlite3.connect(db)
    run_dir = Path(conn.execute("select run_dir from runs").fetchone()[0])
    stages = conn.execute("select idx, stage from rounds order by idx").fetchall()
    conn.close()
    tmp = run_dir / ".tmp-round-1-adapter"
    assert line == (f"error: run big stopped: no space left on the device to write the "
                    f"checkpoint folder {tmp}: free space there, then `loop resume big` (nothing "
                    "committed is lost)"), line
    assert stages == [(0, "done"), (1, "mistakes")]  # every stage before train is stored
    assert tmp.is_dir() and not (run_dir / "round-1").exists()
    status = _status(db)
    assert status in ("failed", "running")
    filler.unlink()
    resumed = _resume(tmp_path, db, "big")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _took_over(resumed.stdout, status)
    assert f"removed unfinished checkpoint folder {tmp}" in " ".join(resumed.stdout.split())
    assert snapshot(db) == reference
    assert_consistent(mount)


def test_a_launched_update_that_fills_the_disk_is_reported_as_a_full_disk():
    """A worker of an accelerate-launched update records a full disk or quota (ENOSPC, EDQUOT,
    also when raised from another error) in its error file; when even that write fails, its
    printed traceback says so. Either way launch_update stops the run with the in-process
    one-line DiskFull (loop.train_worker)."""
    import errno

    from loop.train_worker import _caused_by_full_disk, mentions_disk_full

    for number in (errno.ENOSPC, errno.EDQUOT):
        try:
            try:
                raise OSError(number, os.strerror(number), "adapter_model.safetensors")
            except OSError as exc:
                raise RuntimeError("could not save the adapter") from exc
        except RuntimeError as exc:
            assert _caused_by_full_disk(exc)
        assert mentions_disk_full([f"OSError: [Errno {number}] {os.strerror(number)}: 'x'"])
    assert not _caused_by_full_disk(OSError(errno.EACCES, "Permission denied"))
    assert not mentions_disk_full(["RuntimeError: CUDA error: out of memory"])
