"""bench/sft_ceiling.py: which answers it trains on (the bookkeeping of `run_answers` on a
hand-made store) and one end-to-end run on the tiny in-process model (the benchmark itself trains
the default model for minutes and is run by hand: BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import sft_ceiling  # noqa: E402


def _store(path: Path) -> Path:
    """Two runs; the newer one answers t1 in two rounds (passing, longest first), t2 wrongly, t3
    with one verifier failing it, and a held-out task that passed."""
    from loop.schema import Attempt, Task, Verdict
    from loop.store import Store

    store = Store.open(path)

    def task(question: str, split: str = "train") -> Task:
        return Task(source="arithmetic", split=split,
                    prompt=[{"role": "user", "content": question}], reference="85")

    t1, t2, t3, t4, t5 = (task("What is 47+38?"), task("What is 40+45?"), task("What is 80+5?"),
                          task("What is 50+35?", "eval"), task("What is 85+0?"))
    store.upsert_tasks([t1, t2, t3, t4, t5])
    rows = [  # (run, round, task, purpose, k, completion, verdicts as passed flags)
        ("old", 1, t5, "train", 0, "85 + 0 = 85", [True]),
        ("new", 1, t1, "train", 0, "So 47 + 38 = 85, which is the sum.", [True]),
        ("new", 1, t2, "train", 0, "9", [False]),
        ("new", 1, t3, "train", 0, "85", [True, False]),  # one verifier failed it
        ("new", 1, t4, "eval", 0, "85", [True]),  # held out: never trained on
        ("new", 2, t1, "train", 0, "47 + 38 = 85", [True]),
        ("new", 2, t1, "train", 1, "85 it is, because 47 + 38 = 85", [True]),
    ]
    for run in ("old", "new"):
        time.sleep(0.005)  # runs are ordered by their creation time, in milliseconds
        store.create_run(run_id=run, name=run, task="arithmetic", model="tiny", config={},
                         seed=0, rounds_planned=2, versions={}, git_sha=None, run_dir=run)
        for idx in (0, 1, 2):
            store.ensure_round(run, idx, None)
    attempts, verdicts = [], []
    for run, idx, t, purpose, k, text, passed in rows:
        attempt = Attempt(id=Attempt.make_id(run, idx, t.id, purpose, k), run_id=run,
                          round_index=idx, task_id=t.id, purpose=purpose, sample_index=k,
                          messages=[*t.prompt, {"role": "assistant", "content": text}],
                          completion=text)
        attempts.append(attempt)
        verdicts += [(attempt.id, f"v{i}", Verdict(passed=ok, score=float(ok)), 1.0)
                     for i, ok in enumerate(passed)]
    store.insert_attempts(attempts)
    store.insert_verdicts(verdicts)
    return path


def test_verified_answers_are_the_shortest_passing_train_answer_of_each_task(tmp_path):
    db = _store(tmp_path / "loop.db")
    latest = sft_ceiling.run_answers(db, None)  # over both rounds of the newer run
    assert [(t.prompt[-1]["content"], text) for t, text in latest] == [
        ("What is 47+38?", "47 + 38 = 85")]
    assert [text for _, text in sft_ceiling.run_answers(db, "old")] == ["85 + 0 = 85"]
    with pytest.raises(SystemExit, match="no run 'gone'"):
        sft_ceiling.run_answers(db, "gone")


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
