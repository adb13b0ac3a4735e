"""Checkpoint publishing, verification, fail points and the run lock (fast, no model)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loop.checkpoints import (
    MANIFEST,
    CheckpointError,
    checkpoint_hash,
    publish,
    remove_temporary,
    verify,
)
from loop.failpoints import POINTS
from loop.runlock import RunLock, RunLocked


def _folder(path, files):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def test_publish_moves_into_place_with_a_verifying_manifest(tmp_path):
    tmp = _folder(tmp_path / ".tmp-x", {"adapter.safetensors": b"w" * 1000, "sub/cfg.json": b"{}"})
    digest = publish(tmp, tmp_path / "round-1" / "adapter")
    final = tmp_path / "round-1" / "adapter"
    assert not tmp.exists() and (final / MANIFEST).is_file()
    verify(final)
    assert digest == checkpoint_hash(final) and len(digest) == 64


def test_publish_replaces_a_stale_checkpoint(tmp_path):
    final = _folder(tmp_path / "final", {"old.bin": b"old"})
    publish(_folder(tmp_path / ".tmp-new", {"new.bin": b"new"}), final)
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST, "new.bin"]


def test_same_content_same_hash(tmp_path):
    a = publish(_folder(tmp_path / ".tmp-a", {"f": b"1"}), tmp_path / "a")
    b = publish(_folder(tmp_path / ".tmp-b", {"f": b"1"}), tmp_path / "b")
    c = publish(_folder(tmp_path / ".tmp-c", {"f": b"2"}), tmp_path / "c")
    assert a == b != c


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / "w.bin").write_bytes(b"w" * 500), r"w\.bin does not match its manifest"),
    (lambda f: (f / "w.bin").write_bytes(b"x" * 1000), r"w\.bin does not match its manifest"),
    (lambda f: (f / "w.bin").unlink(), r"w\.bin is missing"),
    (lambda f: (f / MANIFEST).unlink(), r"MANIFEST\.json is missing or unreadable"),
    (lambda f: (f / MANIFEST).write_text("garbage{"), r"MANIFEST\.json is missing or unreadable"),
    (lambda f: (f / MANIFEST).write_text("[]"), r"MANIFEST\.json is missing or unreadable"),
])
def test_torn_checkpoints_never_verify(tmp_path, damage, message):
    final = tmp_path / "ck"
    publish(_folder(tmp_path / ".tmp", {"w.bin": b"w" * 1000}), final)
    damage(final)
    with pytest.raises(CheckpointError, match=message):
        verify(final)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is missing"):
        verify(tmp_path / "nowhere")


def test_remove_temporary_leaves_finished_checkpoints(tmp_path):
    _folder(tmp_path / ".tmp-round-2-adapter", {"half": b"x"})
    publish(_folder(tmp_path / ".tmp-round-1-adapter", {"f": b"1"}), tmp_path / "round-1")
    removed = remove_temporary(tmp_path)
    assert [p.name for p in removed] == [".tmp-round-2-adapter"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-1"]


def _run_failpoint(env_value: str | None, hits: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    if env_value is not None:
        env["LOOP_FAILPOINT"] = env_value
    code = ("from loop.failpoints import failpoint\n"
            f"for i in range({hits}):\n    failpoint('verify.in_batch')\n    print(i, flush=True)\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)


def test_failpoint_kills_with_sigkill_on_the_nth_pass():
    out = _run_failpoint("verify.in_batch:3", hits=5)
    assert out.returncode == -9 and out.stdout.split() == ["0", "1"]


def test_failpoint_is_inert_unset_or_for_other_points():
    assert _run_failpoint(None, 5).returncode == 0
    assert _run_failpoint("train.after_update", 5).returncode == 0


def test_there_are_enough_named_fail_points():
    assert len(POINTS) >= 20 and len(set(POINTS)) == len(POINTS)


def test_run_lock_excludes_a_second_holder_and_records_pid(tmp_path):
    first = RunLock(tmp_path).acquire("r")
    assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    code = ("from loop.runlock import RunLock, RunLocked\n"
            f"try:\n    RunLock({str(tmp_path)!r}).acquire('r')\nexcept RunLocked as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=10)
    assert f"run r is locked by pid {os.getpid()} (still running)" in out.stdout
    first.release()
    again = RunLock(tmp_path).acquire("r")
    again.release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    code = ("import os, signal\nfrom loop.runlock import RunLock\n"
            f"RunLock({str(tmp_path)!r}).acquire('r')\nprint(os.getpid(), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    dead_pid = int(out.stdout.strip())
    lock = RunLock(tmp_path).acquire("r")
    assert lock.previous_pid == dead_pid
    lock.release()
    with pytest.raises(RunLocked):
        held = RunLock(tmp_path).acquire("r")
        RunLock(tmp_path).acquire("r")
    held.release()
