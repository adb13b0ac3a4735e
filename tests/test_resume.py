"""Resume: kill a real run (SIGKILL) at every named fail point, resume it, and get exactly the rows
and the final adapter of an uninterrupted run; plus locking, Ctrl-C/SIGTERM, torn checkpoints and
the no-op resume of a finished run. Runs are real `loop` processes on the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loop.failpoints import POINTS
from tiny_model import tiny_task_yaml

pytestmark = pytest.mark.slow  # real `loop` processes: ~20 s each

TASK = tiny_task_yaml(critics=["verifier_feedback", "taxonomy"])
SETTINGS = [
    "--set", "refine.depth=2", "--set", "refine.budget=10", "--set", "select.replay_share=0.5",
    "--rounds", "2", "--set", "select.prompts_per_round=12", "--set", "generate.n=2",
    "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=5",
    "--set", "generate.batch_size=8", "--set", "evaluate.problems=20",
    "--set", "evaluate.max_new_tokens=5", "--set", "evaluate.batch_size=8",
    "--set", "train.learning_rate=1e-3", "--set", "train.batch_size=4",
    "--set", "train.lora.r=4", "--set", "train.lora.alpha=8", "--set", "train.max_length=32",
]


def loop_cli(args: list[str], env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def start_run(folder: Path, model: Path, name: str, failpoint: str | None = None,
              extra: list[str] | None = None) -> subprocess.CompletedProcess:
    task = folder / "task.yaml"
    task.write_text(TASK)
    env = {"LOOP_FAILPOINT": failpoint} if failpoint else {}
    return loop_cli(["run", str(task), "--model", str(model), "--name", name,
                     "--db", str(folder / "loop.db"), *SETTINGS, *(extra or [])], env)


def snapshot(db: Path) -> dict:
    """The run's content, keyed by what identifies each row (ids include the run id, which
    differs between two runs, so they are compared by their parts)."""
    conn = sqlite3.connect(db)
    key = "a.round_idx, a.task_id, a.purpose, a.sample_index, a.depth"
    attempts = conn.execute(
        f"select {key}, a.completion, a.token_ids_json, a.finish_reason from attempts a "
        f"order by {key}").fetchall()
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
    evaluations = conn.execute("select round_idx, n, passed from evaluations "
                               "order by round_idx").fetchall()
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


@pytest.fixture(scope="module")
def reference(weak_adder_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    result = start_run(folder, weak_adder_dir, "ref")
    assert result.returncode == 0, result.stderr
    return snapshot(folder / "loop.db")


def test_reference_run_is_deterministic(reference, weak_adder_dir, tmp_path):
    """The premise of the chaos test: two uninterrupted runs store the same rows and adapter."""
    assert start_run(tmp_path, weak_adder_dir, "again").returncode == 0
    assert snapshot(tmp_path / "loop.db") == reference
    assert reference["counts"]["updates"] == 2 and reference["status"] == [("finished",)]


CASES = list(POINTS) + ["generate.in_batch:3", "verify.in_batch:20", "train.after_rename:2",
                        "evaluate.before_commit:3", "round.start:3"]


@pytest.mark.parametrize("point", CASES)
def test_kill_at_fail_point_then_resume_loses_and_duplicates_nothing(point, reference,
                                                                     weak_adder_dir, tmp_path):
    killed = start_run(tmp_path, weak_adder_dir, "chaos", failpoint=point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
    db = str(tmp_path / "loop.db")
    status = sqlite3.connect(db).execute("select status from runs").fetchone()[0]
    assert status == "running"  # a killed process cannot say anything
    resumed = loop_cli(["resume", "chaos", "--db", db])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "which is gone: taking over" in resumed.stdout
    assert snapshot(tmp_path / "loop.db") == reference
    assert_consistent(tmp_path)
    # The run's created-to-finished span now holds the time it lay dead: `loop show` knows.
    shown = json.loads(loop_cli(["show", "chaos", "--db", db, "--json"]).stdout)
    assert shown["run"]["resumes"] == 1
    assert shown["time"]["outside_rounds_seconds"] == 0.0


def test_resume_of_finished_run_is_a_noop(weak_adder_dir, tmp_path):
    assert start_run(tmp_path, weak_adder_dir, "done").returncode == 0
    before = hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest()
    result = loop_cli(["resume", "done", "--db", str(tmp_path / "loop.db")])
    assert result.returncode == 0 and "already complete; nothing to do" in result.stdout
    assert hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest() == before


def test_torn_checkpoint_is_not_loaded_but_retrained(reference, weak_adder_dir, tmp_path):
    killed = start_run(tmp_path, weak_adder_dir, "torn", failpoint="evaluate.before_commit:3")
    assert killed.returncode == -signal.SIGKILL
    conn = sqlite3.connect(tmp_path / "loop.db")
    adapter = Path(conn.execute("select adapter_path from updates where round_idx = 1")
                   .fetchone()[0])
    conn.close()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn write
    resumed = loop_cli(["resume", "torn", "--db", str(tmp_path / "loop.db")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"checkpoint {adapter}: adapter_model.safetensors does not match its manifest: "
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


def _start_held_run(tmp_path, model, name):
    plugins = tmp_path / "hold"
    plugins.mkdir()
    (plugins / "hold.py").write_text(HOLD)
    task = tmp_path / "task.yaml"
    task.write_text(TASK)
    hold = tmp_path / "held"
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    env["HOLD_FILE"] = str(hold)
    # Started with SIGINT ignored, as a shell starts a background job (`loop run ... &`): loop
    # must still stop on Ctrl-C / `kill -INT`.
    proc = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "run", str(task), "--model", str(model), "--name", name,
         "--db", str(tmp_path / "loop.db"), "--plugins-dir", str(plugins), *SETTINGS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 120
    while not hold.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    return proc, plugins


def test_second_process_on_a_live_run_fails_fast_naming_the_pid(weak_adder_dir, tmp_path):
    proc, plugins = _start_held_run(tmp_path, weak_adder_dir, "live")
    try:
        before = hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest()
        started = time.perf_counter()
        second = loop_cli(["resume", "live", "--db", str(tmp_path / "loop.db")])
        elapsed = time.perf_counter() - started
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"run live is locked by pid {proc.pid}" in lines[0]
        assert elapsed < 10  # the lock check itself answers at once; most of this is start-up
        assert hashlib.sha256((tmp_path / "loop.db").read_bytes()).hexdigest() == before
    finally:
        proc.kill()
        proc.wait()
    # Once it is dead (kill -9 leaves the run "running"), resume takes over and finishes it.
    resumed = loop_cli(["resume", "live", "--db", str(tmp_path / "loop.db")])
    assert resumed.returncode == 0, resumed.stderr
    assert f"left running by pid {proc.pid}, which is gone" in " ".join(resumed.stdout.split())
    assert snapshot(tmp_path / "loop.db")["status"] == [("finished",)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_run_interrupted_and_resume_finishes(sig, reference, weak_adder_dir,
                                                             tmp_path):
    proc, _ = _start_held_run(tmp_path, weak_adder_dir, "stopped")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    conn = sqlite3.connect(tmp_path / "loop.db")
    assert conn.execute("select status from runs").fetchone()[0] == "interrupted"
    conn.close()
    resumed = loop_cli(["resume", "stopped", "--db", str(tmp_path / "loop.db")])
    assert resumed.returncode == 0, resumed.stderr
    assert "(was interrupted)" in resumed.stdout
    assert snapshot(tmp_path / "loop.db") == reference


def test_soak_runs_killed_at_random_instants(reference, weak_adder_dir, tmp_path):
    """Runs killed 1-5 times from outside at random instants, resumed after each kill, end with
    exactly the uninterrupted run's rows. LOOP_SOAK_RUNS sets how many: 10 in the normal suite,
    50 in `make soak`."""
    rng = random.Random(int(os.environ.get("LOOP_SOAK_SEED", "0")))
    runs = int(os.environ.get("LOOP_SOAK_RUNS", "10"))
    task = tmp_path / "task.yaml"
    task.write_text(TASK)
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    kills = []
    for i in range(runs):
        folder = tmp_path / f"soak-{i}"
        folder.mkdir()
        db = str(folder / "loop.db")
        args = ["run", str(task), "--model", str(weak_adder_dir), "--name", "soak", "--db", db,
                *SETTINGS]
        killed = 0
        for _ in range(rng.randint(1, 5)):
            proc = subprocess.Popen([sys.executable, "-m", "loop.cli", *args], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:  # an uninterrupted tiny run takes ~10 s, start-up included
                proc.wait(timeout=rng.uniform(1.0, 10.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed += 1
            if Path(db).exists() and sqlite3.connect(db).execute(
                    "select count(*) from runs").fetchone()[0]:
                args = ["resume", "soak", "--db", db]
            if proc.returncode == 0:
                break
        kills.append(killed)
        final = loop_cli(["resume", "soak", "--db", db] if args[0] == "resume" else args)
        assert final.returncode == 0, (i, final.stderr[-2000:])
        assert snapshot(folder / "loop.db") == reference, i
        assert_consistent(folder)
    print(f"soak: {runs} runs, {sum(kills)} SIGKILLs (per run: min {min(kills)}, max {max(kills)}, "
          f"{sum(k > 0 for k in kills)} runs killed at least once), every run identical to the "
          "uninterrupted one")
    assert sum(k > 0 for k in kills) >= runs // 2  # the kills really land inside runs
