"""Run untrusted Python in an OS-level sandbox, not a Python-level one.

Each program runs in a fresh process tree, layered so that no Python-level trick (`posix.*`,
`ctypes`, `importlib.reload(os)`) can undo a wall:

    unshare --net --pid --mount --ipc --uts --fork --kill-child --mount-proc  (util-linux, as root)
      python -I -S -c BOOTSTRAP+PROGRAM       isolated mode: no site-packages, no PYTHON* variables
        BOOTSTRAP (loop_code.jail), still root, before any program code exists:
          a new root on tmpfs: /usr (+ the interpreter's prefix) read-only, /proc, 4 devices,
          a private size-capped /tmp/work; chroot into it
          rlimits: address space, CPU seconds, file size, open files, processes, no core dumps
          an empty capability bounding set; a separate uid/gid per worker slot, no groups;
          no new privileges; SIGKILL if the parent dies; an empty environment
        PROGRAM: the harness (harness.py), then the model's code, then the tests

So: no network (a network namespace with only a loopback that is down), no view of or signal to
any process outside (PID namespace; `kill(-1)` only reaches the sandbox), no file of the machine
but the read-only system directories, and the whole tree dies with the namespace's first process.
The parent enforces the wall-clock limit with SIGKILL to the process group (and so the
namespace), drains stdout, stderr and the result channel concurrently with a byte cap (no pipe
deadlock, no memory blow-up), and has nothing to clean up on disk: the tmpfs dies with the
namespace.

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

from loop_code.jail import BOOTSTRAP

# The first uid of the sandbox users: one uid per concurrent slot, so that RLIMIT_NPROC (counted
# per uid) caps each program's processes without one program's fork bomb starving a neighbour.
# High, unnamed uids: nothing on the machine belongs to them.
BASE_UID = 61000
MAX_SLOTS = 64
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"  # the program's PATH
TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # building it
TOOLS = ("unshare", "prlimit", "env")  # prlimit and env: the unsandboxed opt-in


class SandboxUnavailable(Exception):
    """The sandbox cannot be built on this machine; the message names what is missing."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits; the defaults fit a test-sized program and stay far below what would
    hurt the host."""

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


def _jail_config(python: str, limits: Limits, uid: int) -> dict:
    mem = limits.memory_mb << 20
    prefix = str(Path(python).resolve().parent.parent)
    return {
        "uid": uid, "tmp_mb": limits.tmp_mb,
        "prefixes": [] if prefix == "/usr" or prefix.startswith("/usr/") else [prefix],
        "rlimits": {"RLIMIT_AS": [mem, mem], "RLIMIT_DATA": [mem, mem],
                    "RLIMIT_CPU": [limits.cpu_s, limits.cpu_s + 1],
                    "RLIMIT_FSIZE": [limits.file_mb << 20] * 2,
                    "RLIMIT_NOFILE": [limits.open_files] * 2,
                    "RLIMIT_NPROC": [limits.processes] * 2, "RLIMIT_CORE": [0, 0]},
    }


def command(python: str, source: str, limits: Limits, uid: int) -> list[str]:
    """The argv that runs `source` sandboxed: new namespaces (unshare, as root), then the
    jail bootstrap (loop_code.jail) inside the same interpreter before `source` runs."""
    bootstrap = BOOTSTRAP.replace("%(config)s", repr(_jail_config(python, limits, uid)))
    return ["unshare", "--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child",
            "--mount-proc", "--", python, "-I", "-S", "-c", bootstrap + source]


def run_once(python: str, source: str, stdin: bytes, limits: Limits, uid: int,
             isolated: bool = True) -> RunResult:
    """One program in one sandbox (see the module docstring). Never raises for the program's
    behaviour; `start_error` says why a sandbox could not be started at all."""
    if not isolated:
        with tempfile.TemporaryDirectory(prefix="loop-unsandboxed-") as home:
            return _run(lambda fd: plain_command(python, source, limits, fd, home), stdin,
                        limits, cwd=home)
    return _run(lambda fd: command(python, source, limits, uid), stdin, limits, cwd=None)


def _run(argv_for: Callable[[int], list[str]], stdin: bytes, limits: Limits,
         cwd: str | None) -> RunResult:
    """Start `argv_for(channel descriptor)`, feed it, drain it, kill it at the deadline."""
    read_end, write_end = os.pipe()
    argv = argv_for(write_end)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(write_end,), cwd=cwd,
                                start_new_session=True, close_fds=True,
                                env={"PATH": TOOLS_PATH, "LOOP_CHANNEL_FD": str(write_end)})
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
    return [tool for tool in TOOLS if shutil.which(tool, path=TOOLS_PATH) is None]


def pick_python(preferred: str | None = None) -> str:
    """The interpreter to run inside: `preferred`, else the one running loop (its own prefix is
    bound read-only into the sandbox when it lives outside /usr)."""
    candidate = preferred or os.path.realpath(sys.executable)
    if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
        raise SandboxUnavailable(f"the interpreter {candidate} does not exist or is not "
                                 "executable (the verifier's `python` option)")
    return candidate
