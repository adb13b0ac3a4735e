"""The sandbox holds against the hostile corpus (tests/hostile.py) and judges benign code
the same alone or among hostile neighbours. Runs for real: needs root (as CI and containers)."""

from __future__ import annotations

import hashlib
import os
import resource
import secrets
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loop import Attempt, Task
from loop_code.sandbox import BASE_UID
from loop_code.verifier import PythonTestsVerifier

from hostile import PROGRAMS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs "
                                "as root); test_probe_names_what_is_missing covers non-root")

WALL_S = 2.0
WORKERS = 4


def make_task(tests: list[str], entry_point: str = "solve") -> Task:
    return Task(source="hostile", split="train", prompt=[{"role": "user", "content": "?"}],
                metadata={"tests": tests, "setup": "", "entry_point": entry_point, "stub": ""})


def make_attempt(task: Task, code: str, index: int = 0) -> Attempt:
    return Attempt(id=f"a{index}", run_id="r", round_index=0, task_id=task.id, purpose="train",
                   sample_index=index, messages=[], completion=f"```python\n{code}\n```")


@pytest.fixture(scope="module")
def verifier() -> PythonTestsVerifier:
    chosen = PythonTestsVerifier()
    chosen.options = chosen.Options(timeout_s=WALL_S, cpu_s=2, workers=WORKERS)
    chosen.prepare()
    return chosen


class Listener:
    """A loopback TCP listener and a UDP 'DNS' socket that count what reaches them."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self.hits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for sock, take in ((self.tcp, lambda s: s.accept()[0].close()),
                               (self.udp, lambda s: s.recvfrom(4096))):
                try:
                    take(sock)
                    self.hits += 1
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Canary files (home, run folder, a SQLite store, /tmp), a secret in our environment and
    network listeners; yields the substitutions for the programs and checks afterwards."""
    secret = "canary-" + secrets.token_hex(12)
    monkeypatch.setenv("LOOP_CANARY_SECRET", secret)
    home_canary = Path.home() / f".loop-canary-{secrets.token_hex(4)}"
    tmp_canary = Path("/tmp") / f"loop-canary-{secrets.token_hex(4)}"
    run_canary = tmp_path / "runs" / "canary.txt"
    run_canary.parent.mkdir()
    db = tmp_path / "loop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (secret text)")
        conn.execute("insert into t values (?)", [secret])
    for path in (home_canary, tmp_canary, run_canary):
        path.write_text(f"canary {secret}")
    canaries = [home_canary, tmp_canary, run_canary, db]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in canaries}
    listener = Listener()
    yield {"{port}": str(listener.tcp.getsockname()[1]),
           "{dns_port}": str(listener.udp.getsockname()[1]),
           "{canaries}": repr([str(p) for p in canaries])}, secret
    listener.close()
    try:
        assert listener.hits == 0, "a sandboxed program reached our listeners"
        for path, digest in digests.items():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"
    finally:
        home_canary.unlink(missing_ok=True)
        tmp_canary.unlink(missing_ok=True)


def program(name: str, substitutions: dict[str, str]) -> str:
    text = PROGRAMS[name]
    for key, value in substitutions.items():
        text = text.replace(key, value)
    return text


def sandbox_processes() -> list[int]:
    """Processes running as any sandbox uid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if BASE_UID <= uid < BASE_UID + 64:
            found.append(int(entry.name))
    return found


def assert_contained(verdict, secret: str) -> None:
    assert not verdict.passed
    assert verdict.error_kind == "model", verdict.feedback  # the program's fault, judged
    text = f"{verdict.feedback} {verdict.details}"
    assert secret not in text


def test_the_corpus_is_complete():
    assert len(PROGRAMS) == 24


@pytest.mark.slow  # each waits out its program's time limit
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hostile_program_alone(name, verifier, world):
    substitutions, secret = world
    task = make_task(["assert solve() == 42"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    verdict = verifier.verify(task, make_attempt(task, program(name, substitutions)))
    elapsed = time.perf_counter() - started
    assert elapsed <= WALL_S + 1.0, f"{name}: verdict after {elapsed:.1f} s"
    assert_contained(verdict, secret)
    # The parent holds no copy of a flood or a memory bomb.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024
    assert len(verdict.details["stdout"]) <= 2000 and len(verdict.details["stderr"]) <= 2000
    time.sleep(0.5)
    deadline = time.monotonic() + 2.0
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == [], f"{name} left processes behind"
    if name == "fork_bomb":
        assert "forked" not in verdict.details["stdout"] or \
            int(verdict.details["stdout"].split()[1]) < 64
    if name in ("stdout_flood", "stderr_flood"):
        assert verdict.details["output_truncated"] and verdict.mistake == "timeout"
    if name == "always_equal":
        assert verdict.mistake == "failed_assertion" and "Anything" in verdict.feedback
    if name == "exit_before_tests":
        assert verdict.mistake == "exited_early"
    if name == "undo_guards":
        assert "setuid -1" in verdict.details["stdout"]


@pytest.mark.slow
def test_hostile_and_benign_together_match_serial(verifier, world):
    """A2: the 24 hostile programs interleaved with benign solutions on several workers; the
    benign verdicts equal a serial run without neighbours, and no hostile program passes."""
    substitutions, secret = world
    hostile_task = make_task(["assert solve() == 42"])
    benign_task = make_task(["assert total([1, 2, 3]) == 6", "assert total([]) == 0",
                             "assert total([-1, 1]) == 0"], entry_point="total")
    benign = ["def total(xs):\n    return sum(xs)",                      # right
              "def total(xs):\n    return sum(xs) + 1",                  # wrong
              "def total(xs):\n    return xs[0] + sum(xs[1:])",          # fails on []
              "def total(xs):\n    return len(xs) and sum(xs)"] * 10     # right
    items, kinds = [], []
    for index, name in enumerate(sorted(PROGRAMS)):
        items.append((hostile_task, make_attempt(hostile_task, program(name, substitutions),
                                                 index)))
        kinds.append("hostile")
        for j in range(2):
            code = benign[(2 * index + j) % len(benign)]
            items.append((benign_task, make_attempt(benign_task, code, 100 + 2 * index + j)))
            kinds.append(code)
    together = verifier.verify_batch(items)
    alone = {code: verifier.verify(benign_task, make_attempt(benign_task, code))
             for code in set(benign)}
    for kind, verdict in zip(kinds, together):
        if kind == "hostile":
            assert_contained(verdict, secret)
        else:
            expected = alone[kind]
            assert (verdict.passed, verdict.score, verdict.mistake) == \
                (expected.passed, expected.score, expected.mistake)
    assert [alone[c].passed for c in benign[:4]] == [True, False, False, True]


def test_the_program_sees_none_of_the_machines_files(verifier, tmp_path):
    """World-readable files outside the system directories (the repository, the store) are not
    even visible; the system directories are read-only."""
    readable = Path(__file__).resolve()  # mode 644 in a 755 checkout
    task = make_task(["assert solve() == 42"])
    code = (
        "import os\n"
        "print(sorted(os.listdir('/')))\n"
        f"print(os.path.exists({str(readable)!r}), os.path.exists({str(Path.cwd())!r}))\n"
        "try:\n    open('/usr/owned', 'w')\nexcept OSError as exc:\n    print('usr', exc.errno)\n"
        "def solve():\n    return 42")
    verdict = verifier.verify(task, make_attempt(task, code))
    assert verdict.passed, verdict.feedback
    lines = verdict.details["stdout"].splitlines()
    assert set(eval(lines[0])) <= {"bin", "sbin", "lib", "lib64", "lib32", "libx32", "usr", "proc",
                                   "dev", "tmp", "root", "opt", "home"}
    assert lines[1] == "False False"
    assert lines[2] in ("usr 30", "usr 13")  # EROFS, or EACCES for the sandbox user


def test_the_unsafe_opt_in_runs_unsandboxed_and_says_so(capsys):
    chosen = PythonTestsVerifier()
    chosen.options = chosen.Options(unsafe_no_sandbox=True, timeout_s=WALL_S)
    chosen.prepare()
    assert "WITHOUT a sandbox" in capsys.readouterr().err
    task = make_task(["assert solve() == 42"])
    code = "import os\ndef solve():\n    return 42 if os.getuid() == 0 else 0"
    verdict = chosen.verify(task, make_attempt(task, code))
    assert verdict.passed  # it ran as us (root): no uid switch, no namespaces


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kill_parent", "stdout_flood", "always_equal"])
def test_hostile_programs_through_loop_verify(name, tmp_path, world):
    """The same walls hold on the CLI path plugin authors use (`loop verify`)."""
    import json

    from typer.testing import CliRunner

    from loop.cli import app

    substitutions, secret = world
    answer = tmp_path / "answer.py"
    body = program(name, substitutions).replace("def solve():", "def add(a, b):")
    answer.write_text(f"```python\n{body}\n```")
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["verify", "code", "easy-001", str(answer), "--json",
                                      "--set", "task.verifiers=[{name: python_tests, options: "
                                      f"{{timeout_s: {WALL_S}}}}}]"])
    assert time.perf_counter() - started < WALL_S + 5  # probe + one program
    assert result.exit_code == 1, result.output
    shown = json.loads(result.output)
    verdict = shown["verdicts"]["python_tests"]
    assert shown["name"] == "easy-001" and verdict["passed"] is False
    assert verdict["error_kind"] == "model" and secret not in result.output
