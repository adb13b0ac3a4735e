"""bench/sft_ceiling.py: which answers it trains on (the bookkeeping of `run_answers` on a
hand-made store) and one end-to-end run on the tiny in-process model (the benchmark itself trains
the default model for minutes and is run by hand: BENCHMARKS.md)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import sft_ceiling  # noqa: E402


def _store(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript("""
        create table runs (id text, name text, created text);
        create table attempts (id text, run_id text, task_id text, purpose text, completion text);
        create table verdicts (attempt_id text, passed integer);
    """)
    conn.executemany("insert into runs values (?, ?, ?)",
                     [("r1", "old", "2026-01-01"), ("r2", "new", "2026-01-02")])
    attempts = [  # (id, run, task, purpose, completion, verdicts)
        ("a1", "r2", "t1", "train", "So 47 + 38 = 85, which is the sum.", [1]),
        ("a2", "r2", "t1", "train", "47 + 38 = 85", [1]),
        ("a3", "r2", "t1", "train", "85", [1, 0]),    # one verifier failed it
        ("a4", "r2", "t2", "train", "9", [0]),        # failed
        ("a5", "r2", "t3", "train", "12", []),        # never judged
        ("a6", "r2", "t4", "eval", "1 + 1 = 2", [1]),  # held out: never trained on
        ("a7", "r1", "t5", "train", "2 + 2 = 4", [1]),  # another run
    ]
    for aid, run, task, purpose, text, verdicts in attempts:
        conn.execute("insert into attempts values (?, ?, ?, ?, ?)", (aid, run, task, purpose, text))
        conn.executemany("insert into verdicts values (?, ?)", [(aid, v) for v in verdicts])
    conn.commit()
    return path


def test_verified_answers_are_the_shortest_passing_train_answer_of_each_task(tmp_path):
    db = _store(tmp_path / "loop.db")
    assert sft_ceiling.run_answers(db, None) == {"t1": "47 + 38 = 85"}  # the latest run
    assert sft_ceiling.run_answers(db, "old") == {"t5": "2 + 2 = 4"}


@pytest.mark.slow  # trains and evaluates the tiny model (~20 s)
def test_one_run_on_the_tiny_model_trains_and_scores_every_held_out_problem(tiny_model_dir):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sft_ceiling.py"), "--model", str(tiny_model_dir),
         "--answers", "reference", "--problems", "16", "--epochs", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["examples"] == 16 and result["answers"] == "reference"
    assert result["evaluated"] == 200 and 0.0 <= result["held_out_pass_at_1"] <= 1.0
    assert result["train_seconds"] > 0 and result["mean_answer_tokens"] > 0
