"""Plugins that misbehave (raise, exit, hang, return junk) never stop a round: the item gets an
error row naming the plugin, the item and the reason, and its reward is NULL, never 0."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import loop
from loop.cli import app
from loop.guarded import call_reward, safe_verify
from loop.resolve import Chosen
from loop.schema import Attempt, Task, Verdict

TASK = Task(source="s", split="train", prompt=[{"role": "user", "content": "1+1="}], reference="2")
ATTEMPT = Attempt(id="att-1", run_id="r", round_index=1, task_id=TASK.id, purpose="train",
                  sample_index=0, messages=[], completion="2")


def _verifier(behaviour):
    class Bad(loop.Verifier):
        name = "bad"

        def verify(self, task, attempt):
            return behaviour()

    return Chosen("bad", Bad(), None, "evil-plugin")


def _exit():
    sys.exit(3)


def _hang():
    time.sleep(30)


VERIFIER_CASES = [
    (lambda: 1 / 0, "infra", r"raised ZeroDivisionError: division by zero"),
    (_exit, "infra", r"raised SystemExit: 3"),
    (_hang, "timeout", r"did not return within 0.5 s"),
    (lambda: None, "infra", r"returned NoneType, not a Verdict"),
    (lambda: "passed", "infra", r"returned str, not a Verdict"),
    (lambda: {"passed": True}, "infra", r"returned dict, not a Verdict"),
    (lambda: Verdict(passed=True, score=float("nan")), "infra",
     r"raised ValidationError: 1 validation error for Verdict"),
    (lambda: Verdict(passed=True, score=7.0), "infra", r"raised ValidationError"),
    (lambda: (_ for _ in ()).throw(MemoryError("no memory")), "infra",
     r"raised MemoryError: no memory"),
]


@pytest.mark.parametrize("behaviour,kind,reason", VERIFIER_CASES,
                         ids=["raises", "sys.exit", "hangs", "none", "str", "dict", "nan-score",
                              "score-out-of-range", "memory-error"])
def test_bad_verifier_becomes_an_error_verdict_naming_plugin_item_and_reason(behaviour, kind,
                                                                             reason):
    started = time.perf_counter()
    verdict = safe_verify(_verifier(behaviour), TASK, ATTEMPT, timeout_s=0.5)
    assert time.perf_counter() - started < 5
    assert verdict.passed is False and verdict.error_kind == kind
    assert re.match(r"verifier 'bad' \(plugin evil-plugin\) on attempt att-1: " + reason,
                    verdict.feedback), verdict.feedback


ATTEMPTS = [ATTEMPT.model_copy(update={"id": f"att-{i}"}) for i in range(3)]


@pytest.mark.parametrize("fn,expected,warning", [
    (lambda prompts, completions, **kw: 1 / 0, [None] * 3,
     r"reward 'shady' \(plugin evil-plugin\) failed: raised ZeroDivisionError"),
    (lambda prompts, completions, **kw: [1.0], [None] * 3, r"returned 1 values for 3 completions"),
    (lambda prompts, completions, **kw: None, [None] * 3, r"failed: returned 'NoneType' object"),
    (lambda prompts, completions, **kw: sys.exit(1), [None] * 3, r"failed: raised SystemExit"),
    (lambda prompts, completions, **kw: time.sleep(30), [None] * 3, r"did not return within"),
    (lambda prompts, completions, **kw: [1.0, float("nan"), 0.5], [1.0, None, 0.5],
     r"on attempt att-1: nan is not a finite number; stored NULL"),
    (lambda prompts, completions, **kw: [float("inf"), 0, 1], [None, 0.0, 1.0],
     r"on attempt att-0: inf is not a finite number"),
    (lambda prompts, completions, **kw: ["1", 0, True], [None, 0.0, None],
     r"on attempt att-0: '1' is not a finite number"),
    (lambda prompts, completions, **kw: [None, 1, 0], [None, 1.0, 0.0], None),
])
def test_bad_reward_gives_null_never_zero(store, fn, expected, warning):
    warnings: list[str] = []
    values = call_reward(Chosen("shady", fn, None, "evil-plugin"), ATTEMPTS, {TASK.id: TASK},
                         {a.id: {} for a in ATTEMPTS}, 0.2, warnings.append)
    assert values == expected
    if warning:
        assert any(re.search(warning, w) for w in warnings), warnings
    else:
        assert warnings == []
    assert all(v is None or math.isfinite(v) for v in values)


FLAKY = '''
import time
import loop
from loop.schema import Verdict

class Flaky(loop.Verifier):
    """Raises on answers ending in 1, hangs on answers ending in 2, else agrees with exact match."""
    name = "flaky"
    def verify(self, task, attempt):
        text = attempt.completion.strip()
        if text.endswith("1"):
            raise RuntimeError("flaky plugin bug")
        if text.endswith("2"):
            time.sleep(5)
        return Verdict(passed=text == task.reference, score=float(text == task.reference),
                       error_kind=None if text == task.reference else "model")

@loop.hookimpl
def register_verifiers(register):
    register(Flaky())
'''


@pytest.mark.slow
def test_round_survives_a_flaky_verifier_and_counts_its_errors(tmp_path, weak_adder_dir,
                                                               tiny_task_file):
    plugins = tmp_path / "p"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(FLAKY)
    db = tmp_path / "s" / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(tiny_task_file), "--model", str(weak_adder_dir), "--rounds", "1",
        "--name", "flaky", "--db", str(db), "--plugins-dir", str(plugins),
        "--set", "task.verifiers=[math, flaky]", "--set", "verify.timeout_s=0.2",
        "--set", "select.prompts_per_round=24", "--set", "generate.n=2",
        "--set", "generate.max_new_tokens=5", "--set", "evaluate.problems=20",
        "--set", "evaluate.max_new_tokens=5", "--set", "train.max_length=32"])
    assert result.exit_code == 0, result.output
    import sqlite_utils

    conn = sqlite_utils.Database(db)
    errors = list(conn.query(
        "select v.error_kind, v.feedback, a.id as attempt_id, a.completion from verdicts v "
        "join attempts a on a.id = v.attempt_id where v.verifier = 'flaky' "
        "and v.error_kind in ('infra', 'timeout')"))
    assert errors, "the flaky verifier should have failed on some answers"
    for row in errors:
        assert f"verifier 'flaky' (plugin file:flaky.py) on attempt {row['attempt_id']}" in \
            row["feedback"]
        assert row["completion"].strip()[-1] in "12"
    nulls = conn.execute(
        "select count(*) from rewards r join verdicts v on v.attempt_id = r.attempt_id "
        "where v.verifier = 'flaky' and v.error_kind in ('infra', 'timeout') "
        "and r.value is not null and r.value = 0").fetchone()[0]
    assert nulls == 0  # an errored item never gets a reward of 0
    round_errors = conn.execute(  # sampled and held-out answers of round 1 alike
        "select count(*) from verdicts v join attempts a on a.id = v.attempt_id where "
        "a.round_idx = 1 and v.error_kind in ('infra', 'timeout')").fetchone()[0]
    shown = json.loads(CliRunner().invoke(app, ["show", "flaky", "--db", str(db),
                                                "--json"]).output)
    assert shown["rounds"][1]["errors"]["verifier"] == round_errors > 0
    assert shown["run"]["status"] == "finished"
