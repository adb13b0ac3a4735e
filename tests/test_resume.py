"""Resume: kill a run (SIGKILL) at every named fail point, resume it, and get exactly the rows and
the final checkpoints of an uninterrupted run; plus locking, Ctrl-C/SIGTERM, torn checkpoints and
the no-op resume of a finished run.

The subject is loop's bookkeeping, so the runs are on the doubles: the `adder` scripted backend
(tiny_model.ADDER_PLUGIN: right for some prompts, wrong in several ways for others, its answers
depending on the stage's seed and the round's checkpoint) and the `noop` update method. Each run
is a real process that is really SIGKILLed: a forked child of the test process that runs
`loop.cli.main()` exactly as `python -m loop.cli` does, without an interpreter's start-up. One
test runs the real `python -m loop.cli` (a fresh interpreter, another hash seed) to show that a
forked run stores what a started one does."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.failpoints import POINTS
from tiny_model import SCRIPTED_SETTINGS, tiny_task_yaml, write_adder_plugin

pytestmark = pytest.mark.slow  # every test starts `loop` processes

TASK = tiny_task_yaml(critics=["verifier_feedback", "taxonomy"])
RUN_SETTINGS = [
    "--set", "refine.depth=2", "--set", "refine.budget=10", "--set", "select.replay_share=0.5",
    "--rounds", "2", "--set", "select.prompts_per_round=12", "--set", "generate.n=2",
    "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=5",
    "--set", "generate.batch_size=8", "--set", "evaluate.problems=12",
    "--set", "evaluate.max_new_tokens=5", "--set", "evaluate.batch_size=8",
    # the sampled held-out pass too (pass@k): its answers and figures must survive every kill
    "--set", "evaluate.samples=2",
]
SETTINGS = [*SCRIPTED_SETTINGS, *RUN_SETTINGS]
# What every `loop` process of these tests sees: the first-party math plugin (the task's
# verifier), no hub; the `adder` backend comes from a plugins folder (LOOP_PLUGINS_DIR).
BASE_ENV = {"LOOP_LOAD_PLUGINS": "math", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """Import what a `loop` process imports and run the math verifier once, here in the parent:
    every forked child then starts as a warm `loop` would, in milliseconds."""
    import loop.cli
    import loop.rounds
    import loop.runs
    import loop.store  # noqa: F401
    from loop_math.verifier import MathVerifier
    from loop.schema import Attempt, Task

    loop.cli.build_app
    task = Task(source="s", split="train", prompt=[{"role": "user", "content": "1+1="}],
                reference="2")
    MathVerifier().verify(task, Attempt(id="a", run_id="r", round_index=0, task_id=task.id,
                                        purpose="eval", sample_index=0, messages=[],
                                        completion="2"))



def loop_env(plugins: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "LOOP_FAILPOINT" and not (k.startswith("LOOP_") and "__" in k)}
    env.update(BASE_ENV, LOOP_PLUGINS_DIR=str(plugins), **(extra or {}))
    return env


@dataclass
class Done:
    """How a `loop` process ended, as subprocess.CompletedProcess says it (-9: SIGKILL)."""

    returncode: int
    stdout: str
    stderr: str


class Child:
    """`loop ARGS` in a forked child of this process: `loop.cli.main()` as `python -m loop.cli`
    runs it, with its own stdout/stderr files and environment. A fail point's SIGKILL kills the
    child, exactly as it kills a started `loop`."""

    def __init__(self, args: list[str], env: dict, folder: Path, sigint_ignored: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out, self.err = folder / f"out-{stamp}.txt", folder / f"err-{stamp}.txt"
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, env, sigint_ignored)

    def _child(self, args: list[str], env: dict, sigint_ignored: bool) -> None:
        # Whatever the test process had (its SQLite connections among it) is never collected,
        # so never closed, here: only what the child makes is its own.
        gc.freeze()
        code = 1
        try:
            for fd, path in ((1, self.out), (2, self.err)):
                opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(opened, fd)
                os.close(opened)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
            sys.stdin = open(os.devnull)
            os.environ.clear()
            os.environ.update(env)
            # As a shell starts a background job (`loop run ... &`): SIGINT ignored.
            signal.signal(signal.SIGINT,
                          signal.SIG_IGN if sigint_ignored else signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            import loop.cli.common
            import loop.failpoints

            loop.cli.common._PM = None  # a fresh process builds its plugin manager
            loop.failpoints._counts.clear()
            sys.argv = ["loop", *args]
            from loop.cli import main

            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 120) -> Done:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"loop process {self.pid} ran past {timeout} s")
            time.sleep(0.01)
        return Done(self.returncode, self.out.read_text(), self.err.read_text())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.wait()


def loop_fork(args: list[str], env: dict, folder: Path, timeout: float = 120) -> Done:
    return Child(args, env, folder / "logs").wait(timeout)


def loop_cli(args: list[str], env_extra: dict | None = None,
             **kwargs) -> subprocess.CompletedProcess:
    """`python -m loop.cli ARGS`: a real, freshly started `loop` process."""
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def run_args(folder: Path, name: str, extra: list[str] | None = None) -> list[str]:
    task = folder / "task.yaml"
    task.write_text(TASK)
    return ["run", str(task), "--name", name, "--db", str(folder / "loop.db"), *SETTINGS,
            *(extra or [])]


def start_run(folder: Path, name: str, failpoint: str | None = None,
              extra: list[str] | None = None, env: dict | None = None) -> Done:
    plugins = write_adder_plugin(folder / "plugins")
    extra_env = {**({"LOOP_FAILPOINT": failpoint} if failpoint else {}), **(env or {})}
    return loop_fork(run_args(folder, name, extra), loop_env(plugins, extra_env), folder)


def resume(folder: Path, name: str, env: dict | None = None) -> Done:
    return loop_fork(["resume", name, "--db", str(folder / "loop.db")],
                     loop_env(folder / "plugins", env), folder)


def snapshot(db: Path) -> dict:
    """The run's content, keyed by what identifies each row (ids include the run id, which
    differs between two runs, so they are compared by their parts)."""
    conn = sqlite3.connect(db)
    key = "a.round_idx, a.task_id, a.purpose, a.sample_index, a.depth"
    attempts = conn.execute(
        f"select {key}, a.completion, a.token_ids_json, a.finish_reason, a.seed, "
        f"a.messages_json from attempts a order by {key}").fetchall()
    ids = conn.execute("select count(*), count(distinct id) from attempts").fetchone()
    verdicts = conn.execute(
        f"select {key}, v.verifier, v.passed, v.score, v.mistake, v.feedback, v.error_kind "
        f"from verdicts v join attempts a on a.id = v.attempt_id order by {key}").fetchall()
    rewards = conn.execute(
        f"select {key}, r.reward_fn, r.value from rewards r join attempts a "
        f"on a.id = r.attempt_id order by {key}").fetchall()
    mistakes = conn.execute(
        "select m.task_id, m.kind, m.first_round, m.last_round, m.occurrences, m.resolved_round, "
        "a.round_idx, a.sample_index from mistakes m join attempts a on a.id = m.first_attempt_id "
        "order by m.task_id, m.kind").fetchall()
    critiques = conn.execute(
        f"select {key}, c.critic, c.kind, c.text from critiques c join attempts a "
        f"on a.id = c.attempt_id order by {key}, c.critic").fetchall()
    updates = conn.execute("select round_idx, dataset_size, adapter_sha256 from updates "
                           "order by round_idx").fetchall()
    evaluations = conn.execute("select round_idx, n, passed, samples, sample_temperature, "
                               "pass_at_k_json from evaluations order by round_idx").fetchall()
    status = conn.execute("select status from runs").fetchall()
    stages = conn.execute("select idx, stage from rounds order by idx").fetchall()
    counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
              for t in ("attempts", "verdicts", "rewards", "mistakes", "updates", "evaluations",
                        "critiques")}
    conn.close()
    assert ids[0] == ids[1], "duplicate attempt ids"
    return {"attempts": attempts, "verdicts": verdicts, "rewards": rewards, "critiques": critiques,
            "mistakes": mistakes, "updates": updates, "evaluations": evaluations,
            "status": status, "stages": stages, "counts": counts}


def assert_consistent(folder: Path) -> None:
    """Every checkpoint the store names verifies; no temporary folder is left; SQLite is sound."""
    from loop.checkpoints import verify

    conn = sqlite3.connect(folder / "loop.db")
    for (path,) in conn.execute("select adapter_path from updates where adapter_path is not null"):
        verify(path)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert conn.execute("pragma foreign_key_check").fetchall() == []
    run_dir = Path(conn.execute("select run_dir from runs").fetchone()[0])
    assert not list(run_dir.glob(".tmp-*"))
    conn.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    result = start_run(folder, "ref")
    assert result.returncode == 0, result.stderr
    return snapshot(folder / "loop.db")


def test_reference_run_is_deterministic_and_complete(reference, tmp_path):
    """The premise of the chaos test: an uninterrupted run, here started as a real `python -m
    loop.cli` (a fresh interpreter with another hash seed), stores the same rows and checkpoints
    as the forked one; and the rows are what the config asks for."""
    plugins = write_adder_plugin(tmp_path / "plugins")
    started = loop_cli(run_args(tmp_path, "again"),
                       {**loop_env(plugins), "PYTHONHASHSEED": "12345"})
    assert started.returncode == 0, started.stderr
    ref = reference
    assert snapshot(tmp_path / "loop.db") == ref
    assert ref["status"] == [("finished",)] and ref["stages"] == [(i, "done") for i in range(3)]
    counts = ref["counts"]
    train = [a for a in ref["attempts"] if a[2] == "train"]
    first = [a for a in train if a[4] == 0]
    repairs = [a for a in train if a[4] > 0]
    assert len(first) == 2 * 12 * 2  # rounds × prompts × n
    assert 0 < len([a for a in repairs if a[4] == 1]) and len(repairs) <= 2 * 10  # the budget
    held_out = [a for a in ref["attempts"] if a[2] == "eval"]
    assert len(held_out) == 3 * 12 * (1 + 2)  # rounds × problems × (greedy + samples)
    assert len([a for a in held_out if a[3] == 0]) == 3 * 12
    assert all(e[3] == 2 and json.loads(e[5]).keys() == {"1", "2"} for e in ref["evaluations"])
    assert counts["verdicts"] == counts["attempts"]  # one verifier
    assert counts["rewards"] == len(train)  # one reward function, train answers only
    failed = [v for v in ref["verdicts"] if v[2] == "train" and not v[6]]
    critiqued = {c[:5] for c in ref["critiques"] if c[5] == "taxonomy"}
    assert critiqued == {v[:5] for v in failed}  # every failure classified once
    assert counts["updates"] == 2 and counts["evaluations"] == 3 and counts["mistakes"] > 0
    assert all(len(u[2]) == 64 for u in ref["updates"])


CASES = list(POINTS) + ["generate.in_batch:3", "verify.in_batch:20", "train.after_rename:2",
                        "evaluate.before_commit:3", "evaluate-samples.in_batch:20",
                        "round.start:3", "refine.in_batch:5",
                        "mistakes.after_commit:2"]


@pytest.mark.parametrize("point", CASES)
def test_kill_at_fail_point_then_resume_loses_and_duplicates_nothing(point, reference, tmp_path):
    killed = start_run(tmp_path, "chaos", failpoint=point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
    db = str(tmp_path / "loop.db")
    status = sqlite3.connect(db).execute("select status from runs").fetchone()[0]
    assert status == "running"  # a killed process cannot say anything
    resumed = resume(tmp_path, "chaos")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "which is gone: taking over" in resumed.stdout
    assert snapshot(tmp_path / "loop.db") == reference
    assert_consistent(tmp_path)
    # The run's created-to-finished span now holds the time it lay dead: `loop show` knows.
    shown = CliRunner().invoke(app(), ["show", "chaos", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["run"]["resumes"] == 1
    assert data["time"]["outside_rounds_seconds"] == 0.0


def app():
    from loop.cli import app as cli_app

    return cli_app


def test_resume_of_finished_run_is_a_noop(tmp_path):
    assert start_run(tmp_path, "done").returncode == 0
    before = hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest()
    result = resume(tmp_path, "done")
    assert result.returncode == 0 and "already complete; nothing to do" in result.stdout
    assert hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest() == before


def test_torn_checkpoint_is_not_loaded_but_retrained(reference, tmp_path):
    killed = start_run(tmp_path, "torn", failpoint="evaluate.before_commit:3")
    assert killed.returncode == -signal.SIGKILL
    conn = sqlite3.connect(tmp_path / "loop.db")
    adapter = Path(conn.execute("select adapter_path from updates where round_idx = 1")
                   .fetchone()[0])
    conn.close()
    weights = adapter / "update.json"  # what the noop update method writes
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn write
    resumed = resume(tmp_path, "torn")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"checkpoint {adapter}: update.json does not match its manifest: "
            "not loading it; retraining round 1") in " ".join(resumed.stdout.split())
    assert snapshot(tmp_path / "loop.db") == reference
    assert_consistent(tmp_path)


HOLD = '''
import os, time
import loop

@loop.hookimpl
def round_started(round_index):
    if round_index == 1 and os.environ.get("HOLD_FILE"):
        open(os.environ["HOLD_FILE"], "w").write(str(os.getpid()))
        time.sleep(300)
'''


def _start_held_run(tmp_path: Path, name: str) -> Child:
    """A run that waits at the start of round 1, started with SIGINT ignored, as a shell starts a
    background job (`loop run ... &`): loop must still stop on Ctrl-C / `kill -INT`."""
    plugins = write_adder_plugin(tmp_path / "plugins")
    (plugins / "hold.py").write_text(HOLD)
    hold = tmp_path / "held"
    child = Child(run_args(tmp_path, name), loop_env(plugins, {"HOLD_FILE": str(hold)}),
                  tmp_path / "logs", sigint_ignored=True)
    deadline = time.time() + 120
    while not hold.exists():
        assert child.poll() is None, child.wait()
        assert time.time() < deadline
        time.sleep(0.05)
    return child


def _settled_store_bytes(db: Path, timeout: float = 30.0) -> str:
    """A hash of the database file and its write-ahead log once neither has changed for half a
    second: the held run's checkpoint thread may still be copying its last commit's pages into
    the database file when the run reaches its hold."""
    def digest() -> str:
        wal = db.with_name(db.name + "-wal")
        return hashlib.sha256(db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).hexdigest()
    deadline = time.monotonic() + timeout
    last = digest()
    while True:
        time.sleep(0.5)
        now = digest()
        if now == last:
            return now
        assert time.monotonic() < deadline, "the held run's store never settled"
        last = now


def test_second_process_on_a_live_run_fails_fast_naming_the_pid(tmp_path):
    proc = _start_held_run(tmp_path, "live")
    try:
        before = _settled_store_bytes(tmp_path / "loop.db")
        started = time.perf_counter()
        second = resume(tmp_path, "live")
        elapsed = time.perf_counter() - started
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"run live is locked by pid {proc.pid}" in lines[0]
        assert elapsed < 10  # the lock is checked before plugins load or anything is written
        assert _settled_store_bytes(tmp_path / "loop.db") == before
    finally:
        proc.kill()
    # Once it is dead (kill -9 leaves the run "running"), resume takes over and finishes it.
    resumed = resume(tmp_path, "live")
    assert resumed.returncode == 0, resumed.stderr
    assert f"left running by pid {proc.pid}, which is gone" in " ".join(resumed.stdout.split())
    assert snapshot(tmp_path / "loop.db")["status"] == [("finished",)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_run_interrupted_and_resume_finishes(sig, reference, tmp_path):
    proc = _start_held_run(tmp_path, "stopped")
    proc.kill(sig)
    assert proc.wait(timeout=60).returncode == 130
    conn = sqlite3.connect(tmp_path / "loop.db")
    assert conn.execute("select status from runs").fetchone()[0] == "interrupted"
    conn.close()
    resumed = resume(tmp_path, "stopped")
    assert resumed.returncode == 0, resumed.stderr
    assert "(was interrupted)" in resumed.stdout
    assert snapshot(tmp_path / "loop.db") == reference


def test_soak_runs_killed_at_random_instants(reference, tmp_path):
    """Runs killed 1-5 times from outside at random instants, resumed after each kill, end with
    exactly the uninterrupted run's rows. LOOP_SOAK_RUNS sets how many: 10 in the normal suite,
    50 in `make soak`; LOOP_SOAK_SEED picks the instants."""
    rng = random.Random(int(os.environ.get("LOOP_SOAK_SEED", "0")))
    runs = int(os.environ.get("LOOP_SOAK_RUNS", "10"))
    # How long an uninterrupted run takes here and now (warm, as the soak runs are): the kills
    # land at instants spread over it.
    started = time.perf_counter()
    assert start_run(tmp_path / "timed", "timed").returncode == 0
    span = time.perf_counter() - started
    assert snapshot(tmp_path / "timed" / "loop.db") == reference
    kills = []
    for i in range(runs):
        folder = tmp_path / f"soak-{i}"
        plugins = write_adder_plugin(folder / "plugins")
        db = folder / "loop.db"
        args = run_args(folder, "soak")
        killed = 0
        for _ in range(rng.randint(1, 5)):
            proc = Child(args, loop_env(plugins), folder / "logs")
            deadline = time.monotonic() + rng.uniform(0.0, 0.9 * span)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.kill()
                killed += 1
            if db.exists() and sqlite3.connect(db).execute(
                    "select count(*) from sqlite_master where name = 'runs'").fetchone()[0] and \
                    sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0]:
                args = ["resume", "soak", "--db", str(db)]
            if proc.returncode == 0:
                break
        kills.append(killed)
        final = loop_fork(args, loop_env(plugins), folder)
        assert final.returncode == 0, (i, final.stderr[-2000:])
        assert snapshot(db) == reference, i
        assert_consistent(folder)
    print(f"soak: {runs} runs, {sum(kills)} SIGKILLs (per run: min {min(kills)}, max {max(kills)}, "
          f"{sum(k > 0 for k in kills)} runs killed at least once), every run identical to the "
          "uninterrupted one")
    assert sum(k > 0 for k in kills) >= runs // 2  # the kills really land inside runs
