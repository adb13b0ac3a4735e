"""Run untrusted Python in an OS-level sandbox, not a Python-level one.

Each program runs in a fresh process tree built from Debian's util-linux tools, layered so that no
Python-level trick (`posix.*`, `ctypes`, `importlib.reload(os)`) can undo a wall:

    unshare --net --pid --mount --ipc --uts --fork --kill-child --mount-proc   (new namespaces)
      sh: private tmpfs on /tmp, /var/tmp, /dev/shm; a fresh working folder in it
      prlimit: address space, CPU seconds, file size, open files, processes, no core dumps
      setpriv: a separate non-root uid/gid (one per worker slot), no groups, no capabilities,
               no new privileges, SIGKILL if its parent dies
      env -i: an empty environment (PATH, LANG, PYTHONHASHSEED, HOME only)
      python -I -S -c HARNESS: isolated mode, no site-packages, no PYTHON* variables

So: no network (a network namespace with only a loopback that is down), no view of or signal to
any process outside (PID namespace; `kill(-1)` only reaches the sandbox), nothing written outside
its own tmpfs that its uid may not write anyway, and the whole tree dies with the namespace's
first process. The parent enforces the wall-clock limit with SIGKILL to the process group (and so
the namespace), drains stdout, stderr and the result channel concurrently with a byte cap (no
pipe deadlock, no memory blow-up), and removes nothing on disk because nothing was on disk.

The sandbox needs root (to create namespaces and switch to the sandbox uid), which is how
containers run. `probe()` checks at start-up that every wall really holds and says in one line
what is missing otherwise.
"""

from __future__ import annotations

import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The first uid of the sandbox users: one uid per concurrent slot, so that RLIMIT_NPROC (counted
# per uid) caps each program's processes without one program's fork bomb starving a neighbour.
# High, unnamed uids: nothing on the machine belongs to them.
BASE_UID = 61000
MAX_SLOTS = 64
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
TOOLS = ("unshare", "prlimit", "setpriv", "env", "sh", "mount")


class SandboxUnavailable(Exception):
    """The sandbox cannot be built on this machine; the message names what is missing."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits (reliability.md §A defaults)."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    tmp_mb: int = 64
    open_files: int = 256
    processes: int = 64
    output_bytes: int = 1 << 20


@dataclass
class Stream:
    data: bytes = b""
    truncated: bool = False
    total: int = 0


@dataclass
class RunResult:
    """What the parent observed: exit status, the capped streams, and timings."""

    returncode: int | None
    timed_out: bool
    stdout: Stream
    stderr: Stream
    channel: Stream
    seconds: float
    start_error: str = ""

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None


@dataclass
class Sandbox:
    """Runs Python source under `limits`; `workers` programs at a time (one uid per slot).

    `python` is the interpreter run inside: it must be executable by the sandbox uid, so it lives
    under world-readable folders (a pyenv under /root is not: `pick_python` finds one that is).
    """

    python: str
    limits: Limits = field(default_factory=Limits)
    workers: int = 4
    base_uid: int = BASE_UID
    isolated: bool = True  # False: a plain subprocess with rlimits only (the unsafe opt-in)

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_SLOTS:
            raise ValueError(f"workers must be within 1..{MAX_SLOTS}, got {self.workers}")
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(self.base_uid + slot)

    def run(self, source: str, stdin: bytes = b"", limits: Limits | None = None) -> RunResult:
        """Run `source` with `stdin`; the program may write results to fd 3 (the channel).
        Blocks until a slot is free. Never raises for anything the program does."""
        uid = self._slots.get()
        try:
            return run_once(self.python, source, stdin, limits or self.limits, uid,
                            self.isolated)
        finally:
            self._slots.put(uid)


def _rlimits(limits: Limits) -> list[str]:
    mem = limits.memory_mb << 20
    return ["prlimit", f"--as={mem}", f"--data={mem}",
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", f"--fsize={limits.file_mb << 20}",
            f"--nofile={limits.open_files}", f"--nproc={limits.processes}", "--core=0", "--"]


def _environment(channel_fd: int, home: str) -> list[str]:
    return [f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8", "PYTHONHASHSEED=0", f"HOME={home}",
            f"LOOP_CHANNEL_FD={channel_fd}"]


def plain_command(python: str, source: str, limits: Limits, channel_fd: int,
                  home: str) -> list[str]:
    """The unsandboxed argv: rlimits and an empty environment, nothing else (see `isolated`)."""
    return [*_rlimits(limits), "env", "-i", *_environment(channel_fd, home),
            python, "-I", "-S", "-c", source]


def command(python: str, source: str, limits: Limits, uid: int, channel_fd: int) -> list[str]:
    """The argv that builds the sandbox around `python -I -S -c source`. The channel keeps its
    descriptor number through every exec; the program learns it from LOOP_CHANNEL_FD."""
    setup = (
        # Private, size-capped scratch space: whatever the program writes lives in RAM of this
        # mount namespace and vanishes with it. The working folder belongs to the sandbox uid.
        "set -e; "
        f"mount -t tmpfs -o size={limits.tmp_mb}m,mode=1777,nosuid,nodev tmpfs /tmp; "
        "for d in /var/tmp /dev/shm; do "
        "[ -d $d ] && mount -t tmpfs -o size=1m,mode=1777,nosuid,nodev tmpfs $d; done; "
        f"mkdir -m 700 /tmp/work; chown {uid}:{uid} /tmp/work; cd /tmp/work; "
        'exec "$@"'
    )
    return [
        "unshare", "--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child",
        "--mount-proc", "--",
        "sh", "-c", setup, "sandbox",
        *_rlimits(limits),
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--pdeathsig=KILL", "--",
        "env", "-i", *_environment(channel_fd, "/tmp/work"),
        python, "-I", "-S", "-c", source,
    ]


def run_once(python: str, source: str, stdin: bytes, limits: Limits, uid: int,
             isolated: bool = True) -> RunResult:
    """One program in one sandbox (see the module docstring). Never raises for the program's
    behaviour; `start_error` says why a sandbox could not be started at all."""
    if not isolated:
        with tempfile.TemporaryDirectory(prefix="loop-unsandboxed-") as home:
            return _run(lambda fd: plain_command(python, source, limits, fd, home), stdin,
                        limits, cwd=home)
    return _run(lambda fd: command(python, source, limits, uid, fd), stdin, limits, cwd=None)


def _run(argv_for: Callable[[int], list[str]], stdin: bytes, limits: Limits,
         cwd: str | None) -> RunResult:
    """Start `argv_for(channel descriptor)`, feed it, drain it, kill it at the deadline."""
    read_end, write_end = os.pipe()
    argv = argv_for(write_end)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(write_end,), cwd=cwd,
                                start_new_session=True, env={"PATH": SANDBOX_PATH},
                                close_fds=True)
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return RunResult(None, False, Stream(), Stream(), Stream(),
                         time.perf_counter() - started, start_error=f"cannot start: {exc}")
    os.close(write_end)
    streams = {"stdout": Stream(), "stderr": Stream(), "channel": Stream()}
    deadline = started + limits.wall_s
    timed_out = _pump(proc, read_end, stdin, streams, limits.output_bytes, deadline)
    if timed_out:
        _kill(proc)
    returncode = proc.wait()
    return RunResult(returncode, timed_out, streams["stdout"], streams["stderr"],
                     streams["channel"], time.perf_counter() - started)


def _pump(proc: subprocess.Popen, channel_fd: int, stdin: bytes, streams: dict[str, Stream],
          cap: int, deadline: float) -> bool:
    """Feed stdin and drain the three outputs until they close or the deadline passes.
    Returns True on timeout. Bytes beyond `cap` per stream are read and dropped."""
    selector = selectors.DefaultSelector()
    assert proc.stdin and proc.stdout and proc.stderr
    for name, fileobj in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(fileobj.fileno(), False)
        selector.register(fileobj.fileno(), selectors.EVENT_READ, name)
    os.set_blocking(channel_fd, False)
    selector.register(channel_fd, selectors.EVENT_READ, "channel")
    pending = memoryview(stdin)
    stdin_fd = proc.stdin.fileno()
    if pending:
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()
    try:
        while selector.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                return True
            for key, _ in selector.select(timeout=min(left, 0.5)):
                if key.data == "stdin":
                    try:
                        sent = os.write(stdin_fd, pending[:65536])
                    except (BrokenPipeError, BlockingIOError, OSError):
                        sent = len(pending)
                    pending = pending[sent:]
                    if not pending:
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                stream = streams[key.data]
                stream.total += len(chunk)
                room = cap - len(stream.data)
                if room > 0:
                    stream.data += chunk[:room]
                if len(chunk) > room:
                    stream.truncated = True
        # Outputs closed: the tree has exited or closed them; wait for it within the deadline.
        while proc.poll() is None:
            if time.perf_counter() >= deadline:
                return True
            time.sleep(0.005)
        return False
    finally:
        selector.close()
        os.close(channel_fd)
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group. `unshare` is its leader; its death kills the
    namespace's first process (--kill-child), and with it every process in the namespace,
    including any that left the group with setsid()."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ----- start-up checks ------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def pick_python(preferred: str | None = None) -> str:
    """An interpreter the sandbox uid can execute: `preferred`, else this process's own
    interpreter if every folder above it is world-searchable, else the system's python3."""
    candidates = [preferred] if preferred else [
        os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    for candidate in candidates:
        if candidate and _world_executable(Path(candidate)):
            return candidate
    raise SandboxUnavailable(
        "no Python interpreter the sandbox user may run (tried "
        + ", ".join(c for c in candidates if c) + "); set the verifier's `python` option to one "
        "under world-readable folders, e.g. /usr/bin/python3")


def _world_executable(path: Path) -> bool:
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        return False
    if not resolved.is_file() or not resolved.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in resolved.parents)
