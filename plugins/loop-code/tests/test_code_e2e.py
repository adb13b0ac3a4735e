"""`loop run` on a code task end to end: generation, the sandboxed verifier in the engine
(batched, parallel, for real), critics reading its feedback, repairs, rewards and the mistake
log. The answers come from the parity scripted backend (tests/scripted_runs.py; the noop
updater trains nothing): each task completes the stub `answer = ` with its answer and tests the
value, so "85" passes for 47+38, "86" fails its assertion and "none" raises a NameError, each
where the parity rule says."""

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


def test_loop_run_on_a_code_task(tmp_path):
    from scripted_runs import expected_counts, question_of, right, scripted_run

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
    scripted_run(tmp_path, [
        task, "--rounds", "1", "--name", "code", "--db", db,
        "--set", "select.prompts_per_round=24", "--set", "generate.n=2",
        "--set", "generate.max_new_tokens=6", "--set", "evaluate.max_new_tokens=6",
        "--set", "refine.depth=1", "--set", "refine.budget=8"], plugins="math,code")
    store = sqlite_utils.Database(db)
    verdicts = list(store.query(
        "select v.*, a.sample_index, a.depth, a.completion, t.prompt_json from verdicts v "
        "join attempts a on a.id = v.attempt_id join tasks t on t.id = a.task_id "
        "where a.round_idx = 1 and a.purpose = 'train'"))
    # 24 prompts x 2 samples, and 8 repairs (refine.budget) of failures
    assert len(verdicts) == 24 * 2 + 8 and {v["verifier"] for v in verdicts} == {"python_tests"}
    for v in verdicts:  # the sandbox ran each answer's code: "85" passes, "86" and "none" fail
        assert bool(v["passed"]) == right(question_of(v["prompt_json"]), v["sample_index"], 0,
                                          turn=v["depth"]), v
    failed = [v for v in verdicts if not v["passed"]]
    assert failed and all(v["error_kind"] == "model" for v in failed), \
        {v["feedback"] for v in failed}
    kinds = {v["completion"] == "none": v["mistake"] for v in failed}
    assert kinds == {False: "failed_assertion", True: "exception:NameError"}
    rewards = dict(store.execute(
        "select r.value, count(*) from rewards r join attempts a on a.id = r.attempt_id "
        "where a.round_idx = 1 and a.purpose = 'train' group by 1").fetchall())
    passed = sum(v["passed"] for v in verdicts)
    assert rewards == {0.0: len(failed), 1.0: passed}  # every model mistake is a 0, never NULL
    kinds = {r["kind"] for r in store.query("select kind from mistakes")}
    assert kinds and kinds <= CODE_KINDS | {k for k in kinds if k.startswith("exception:")}
    critiques = list(store.query("select critic, text from critiques"))
    assert {c["critic"] for c in critiques} == {"verifier_feedback", "taxonomy"}
    assert all(v["passed"] for v in verdicts if v["depth"] == 1)  # the repairs are right
    shown = json.loads(CliRunner().invoke(app, ["show", "code", "--db", str(db),
                                                "--json"]).output)
    assert shown["run"]["status"] == "finished"
    counts = expected_counts(db, "code")
    assert [r["eval"]["pass_at_1"] for r in shown["rounds"]] == [
        counts[0]["eval_passed"] / 12, counts[1]["eval_passed"] / 12]
    assert shown["rounds"][1]["train"]["passed"] == counts[1]["passed"] == passed
