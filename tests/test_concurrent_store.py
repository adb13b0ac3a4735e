"""One store, several writers and readers: two `python -m loop.cli run` processes on different
runs in one new store at the same time (both migrate it, then write every stage), while this
test reads it in a loop, runs `loop show` / `loop logs` against it, and once holds its write lock
for longer than SQLite's old 5 s busy timeout (as a slow writer elsewhere would). Both runs
finish with all their rows, the same rows (same config and seed), and every snapshot a reader
sees is consistent: a stage's rows are there exactly when its completion marker is."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.migrations import migration_names

from test_resume import TASK, loop_env
from tiny_model import SCRIPTED_SETTINGS, write_adder_plugin

pytestmark = pytest.mark.slow  # starts `loop` processes

SETTINGS = [*SCRIPTED_SETTINGS, "--rounds", "3", "--set", "select.prompts_per_round=30",
            "--set", "generate.n=2", "--set", "generate.temperature=1.0",
            "--set", "generate.max_new_tokens=5", "--set", "generate.batch_size=4",
            "--set", "evaluate.problems=20", "--set", "evaluate.max_new_tokens=5",
            "--set", "evaluate.batch_size=4", "--set", "refine.depth=1",
            "--set", "refine.budget=10"]
HOLD_S = 7.0  # longer than the old busy timeout (5 s): a writer then failed "database is locked"


def _start(folder: Path, db: Path, name: str, plugins: Path) -> subprocess.Popen:
    task = folder / "task.yaml"
    out = open(folder / f"{name}.out", "w")
    err = open(folder / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "loop.cli", "run", str(task), "--name", name,
                             "--db", str(db), *SETTINGS], env=loop_env(plugins), stdout=out,
                            stderr=err, cwd=folder)


def check_snapshot(conn: sqlite3.Connection) -> dict:
    """Invariants of one read snapshot (one read transaction); returns per-run round stages."""
    conn.execute("begin")
    try:
        seen = {}
        for run_id, idx, stage, stages_json in conn.execute(
                "select run_id, idx, stage, stages_json from rounds"):
            stages = json.loads(stages_json or "{}")
            seen.setdefault(run_id, {})[idx] = stage

            def count(sql: str) -> int:
                return conn.execute(sql, [run_id, idx]).fetchone()[0]

            train = count("select count(*) from attempts where run_id = ? and round_idx = ? "
                          "and purpose = 'train' and depth = 0")
            evals = count("select count(*) from attempts where run_id = ? and round_idx = ? "
                          "and purpose = 'eval'")
            where = (f"attempts a where a.run_id = ? and a.round_idx = ? and a.purpose = "
                     "'train'")
            assert (train > 0) == ("generate" in stages), (run_id, idx, stages, train)
            if "verify" in stages:
                assert count(f"select count(*) from {where} and a.depth = 0 and not exists "
                             "(select 1 from verdicts v where v.attempt_id = a.id)") == 0
            if "reward" in stages:
                assert count(f"select count(*) from {where} and not exists (select 1 from "
                             "rewards r where r.attempt_id = a.id)") == 0
            assert (evals > 0) == ("evaluate" in stages), (run_id, idx, stages, evals)
            if "evaluate" in stages:
                assert count("select n from evaluations where run_id = ? and round_idx = ?") \
                    == evals == 20
            if stage == "done":
                assert "evaluate" in stages and (idx == 0 or "train" in stages)
        return seen
    finally:
        conn.execute("commit")


def per_run(conn: sqlite3.Connection, run_id: str) -> dict:
    key = "a.round_idx, a.task_id, a.purpose, a.sample_index, a.depth"
    return {
        "attempts": conn.execute(f"select {key}, a.completion, a.seed from attempts a "
                                 f"where a.run_id = ? order by {key}", [run_id]).fetchall(),
        "verdicts": conn.execute(f"select {key}, v.passed, v.feedback from verdicts v join "
                                 f"attempts a on a.id = v.attempt_id where a.run_id = ? "
                                 f"order by {key}", [run_id]).fetchall(),
        "rewards": conn.execute(f"select {key}, r.value from rewards r join attempts a on "
                                f"a.id = r.attempt_id where a.run_id = ? order by {key}",
                                [run_id]).fetchall(),
        "critiques": conn.execute(f"select {key}, c.critic, c.text from critiques c join "
                                  f"attempts a on a.id = c.attempt_id where a.run_id = ? "
                                  f"order by {key}, c.critic", [run_id]).fetchall(),
        "mistakes": conn.execute("select task_id, kind, first_round, last_round, occurrences, "
                                 "resolved_round from mistakes where run_id = ? order by "
                                 "task_id, kind", [run_id]).fetchall(),
        "updates": conn.execute("select round_idx, dataset_size, adapter_sha256 from updates "
                                "where run_id = ? order by round_idx", [run_id]).fetchall(),
        "evaluations": conn.execute("select round_idx, n, passed from evaluations where "
                                    "run_id = ? order by round_idx", [run_id]).fetchall(),
        "rounds": conn.execute("select idx, stage from rounds where run_id = ? order by idx",
                               [run_id]).fetchall(),
    }


def test_two_runs_and_readers_share_one_store(tmp_path, monkeypatch):
    from loop.cli import app

    plugins = write_adder_plugin(tmp_path / "plugins")
    (tmp_path / "task.yaml").write_text(TASK)
    db = tmp_path / "loop.db"
    procs = {name: _start(tmp_path, db, name, plugins) for name in ("one", "two")}
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "math")
    snapshots = shows = 0
    held = False
    deadline = time.monotonic() + 300
    reader = None
    try:
        while any(p.poll() is None for p in procs.values()):
            assert time.monotonic() < deadline, "the runs ran past 300 s"
            if reader is None:
                if not db.exists():
                    time.sleep(0.02)
                    continue
                reader = sqlite3.connect(db, isolation_level=None, timeout=60)
            try:
                seen = check_snapshot(reader)
            except sqlite3.OperationalError as exc:  # the store's tables are not created yet
                assert "no such table" in str(exc), exc
                time.sleep(0.02)
                continue
            snapshots += 1
            names = [r[0] for r in reader.execute("select name from runs order by name")]
            if names == ["one", "two"] and not held and any(seen.values()):
                # A slow writer elsewhere holds the write lock past the old busy timeout.
                writer = sqlite3.connect(db, isolation_level=None)
                writer.execute("begin immediate")
                time.sleep(HOLD_S)
                writer.execute("commit")
                writer.close()
                held = True
            if names and snapshots % 10 == 0:
                shown = CliRunner().invoke(app, ["show", names[0], "--db", str(db), "--json"])
                assert shown.exit_code == 0, shown.output
                json.loads(shown.output)
                logs = CliRunner().invoke(app, ["logs", names[-1], "--db", str(db), "-n", "5"])
                assert logs.exit_code == 0, logs.output
                shows += 1
            time.sleep(0.01)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, (name, (tmp_path / f"{name}.err").read_text()[-3000:])
    assert held and snapshots > 20 and shows > 0, (held, snapshots, shows)
    conn = sqlite3.connect(db)
    check_snapshot(conn)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    runs = dict(conn.execute("select name, id from runs"))
    assert sorted(runs) == ["one", "two"]
    assert [r[0] for r in conn.execute("select status from runs")] == ["finished", "finished"]
    one, two = per_run(conn, runs["one"]), per_run(conn, runs["two"])
    assert one == two  # same config and seed: the same rows, whatever the other run did
    assert one["rounds"] == [(i, "done") for i in range(4)]
    assert len([a for a in one["attempts"] if a[2] == "train" and a[4] == 0]) == 3 * 30 * 2
    assert len([a for a in one["attempts"] if a[2] == "eval"]) == 4 * 20
    assert len(one["verdicts"]) == len(one["attempts"]) and len(one["updates"]) == 3
    # the migrations ran once, whoever created the store
    names = [r[0] for r in conn.execute("select name from _sqlite_migrations")]
    assert sorted(names) == sorted(set(names)) == sorted(migration_names())  # each once
    conn.close()
