"""`loop run` on a code task end to end, on the tiny in-process model: generation, the sandboxed
verifier in the engine (batched, parallel), critics reading its feedback, repairs, rewards,
the mistake log and training, all for real. The tiny model only knows additions, so each task
completes the stub `answer = ` with the model's answer and tests the value: "85" passes for
47+38, "84" fails its assertion, "8 5" is a syntax error."""

from __future__ import annotations

import json
import os
import random

import pytest
import sqlite_utils
from typer.testing import CliRunner

from loop.cli import app

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")]

CODE_KINDS = {"no_code", "syntax_error", "missing_function", "failed_assertion", "timeout",
              "truncated", "exited_early"}


def test_loop_run_on_a_code_task(tmp_path, weak_adder_dir):
    rng = random.Random(0)
    rows = [{"prompt": f"{a}+{b}=", "tests": [f"assert answer == {a + b}"], "id": f"p{i}",
             "entry_point": "answer", "stub": "answer = "}
            for i, (a, b) in enumerate((rng.randint(10, 99), rng.randint(10, 99))
                                       for _ in range(60))]
    data = tmp_path / "adds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "code-adds.yaml"
    task.write_text(
        f"source: code-jsonl\noptions: {{path: {data}, eval_size: 12, system_prompt: null}}\n"
        "verifiers: [{name: python_tests, options: {workers: 2, timeout_s: 3}}]\n"
        "rewards: [tests_passed]\ncritics: [verifier_feedback, taxonomy]\n")
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(task), "--model", str(weak_adder_dir), "--rounds", "1", "--name", "code",
        "--db", str(db), "--set", "select.prompts_per_round=24", "--set", "generate.n=2",
        "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
        "--set", "evaluate.max_new_tokens=6", "--set", "refine.depth=1",
        "--set", "train.max_length=48", "--set", "train.learning_rate=1e-3"])
    assert result.exit_code == 0, result.output
    store = sqlite_utils.Database(db)
    attempts = store.execute("select count(*) from attempts where round_idx = 1 and "
                             "purpose = 'train'").fetchone()[0]
    verdicts = list(store.query(
        "select v.* from verdicts v join attempts a on a.id = v.attempt_id "
        "where a.round_idx = 1 and a.purpose = 'train'"))
    assert len(verdicts) == attempts >= 48 and {v["verifier"] for v in verdicts} == \
        {"python_tests"}
    passed = [v for v in verdicts if v["passed"]]
    failed = [v for v in verdicts if not v["passed"]]
    assert passed and failed  # the tiny model writes both runnable and broken "code"
    assert all(v["error_kind"] == "model" for v in failed), {v["feedback"] for v in failed}
    assert {v["mistake"] for v in failed} <= CODE_KINDS | {
        m for m in (v["mistake"] for v in failed) if m.startswith("exception:")}
    rewards = dict(store.execute(
        "select value is null, count(*) from rewards r join attempts a on a.id = r.attempt_id "
        "where a.round_idx = 1 and a.purpose = 'train' group by 1").fetchall())
    assert rewards == {0: len(verdicts)}  # every model mistake is a 0, never a NULL
    kinds = {r["kind"] for r in store.query("select kind from mistakes")}
    assert kinds and kinds <= CODE_KINDS | {k for k in kinds if k.startswith("exception:")}
    critiques = list(store.query("select critic, text from critiques"))
    assert {c["critic"] for c in critiques} == {"verifier_feedback", "taxonomy"}
    repairs = store.execute("select count(*) from attempts where depth = 1").fetchone()[0]
    assert repairs > 0
    shown = json.loads(CliRunner().invoke(app, ["show", "code", "--db", str(db),
                                                "--json"]).output)
    assert shown["run"]["status"] == "finished"
    assert 0 < shown["rounds"][1]["eval"]["pass_at_1"] <= 1
