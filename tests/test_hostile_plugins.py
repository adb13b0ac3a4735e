"""Plugins that misbehave (raise, exit, hang, return junk) never stop a round: the item gets an
error row naming the plugin, the item and the reason, and its reward is NULL, never 0."""

from __future__ import annotations

import json
import math
import re
import sys
import time

import pytest
from typer.testing import CliRunner

import loop
from loop.cli import app
from loop.guarded import call_reward, safe_verify
from loop.resolve import Chosen
from loop.schema import Attempt, Task, Verdict
from tiny_model import scripted_run

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


def test_round_survives_a_flaky_verifier_and_counts_its_errors(tmp_path):
    """Through the engine, in this process, on the doubles (the `adder` scripted backend, whose
    answers are deterministic): exactly the answers the flaky verifier chokes on get its error
    rows, sampled and held-out answers alike, and no reward but NULL."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(FLAKY)
    result, conn = scripted_run(
        tmp_path, "--rounds", "1", "--set", "task.verifiers=[exact_match, flaky]",
        "--set", "verify.timeout_s=0.5", "--set", "select.prompts_per_round=4",
        "--set", "generate.temperature=1.0",  # the adder's answers at 1.0 hold both kinds
        "--set", "generate.n=2", "--set", "generate.max_new_tokens=5",
        "--set", "evaluate.problems=4", "--set", "evaluate.max_new_tokens=5", name="flaky")
    assert result.exit_code == 0, result.output
    completions = {r["id"]: r["completion"].strip() for r in conn.execute(
        "select id, completion from attempts")}
    errors = {r["attempt_id"]: dict(r) for r in conn.execute(
        "select v.attempt_id, v.error_kind, v.feedback from verdicts v where "
        "v.verifier = 'flaky' and v.error_kind in ('infra', 'timeout')")}
    raises = {i for i, text in completions.items() if text.endswith("1")}
    hangs = {i for i, text in completions.items() if text.endswith("2")}
    assert raises and hangs, "the scripted answers should include both kinds"
    assert {i for i, e in errors.items() if e["error_kind"] == "infra"} == raises
    assert {i for i, e in errors.items() if e["error_kind"] == "timeout"} == hangs
    for attempt_id, row in errors.items():
        reason = ("raised RuntimeError: flaky plugin bug" if attempt_id in raises
                  else "did not return within 0.5 s")
        assert row["feedback"] == (f"verifier 'flaky' (plugin file:flaky.py) on attempt "
                                   f"{attempt_id}: {reason}")
    # every other answer got flaky's own verdict; exact_match judged every answer itself
    assert conn.execute("select count(*) from verdicts where verifier = 'flaky'").fetchone()[0] \
        == len(completions)
    assert conn.execute("select count(*) from verdicts where verifier = 'exact_match' and "
                        "(passed or error_kind = 'model')").fetchone()[0] == len(completions)
    rewards = {r[0]: r[1] for r in conn.execute("select attempt_id, value from rewards")}
    train = {r[0] for r in conn.execute("select id from attempts where purpose = 'train'")}
    assert set(rewards) == train
    assert {i for i, v in rewards.items() if v is None} == train & set(errors)  # never a 0
    round_of = {r[0]: r[1] for r in conn.execute("select id, round_idx from attempts")}
    round_errors = sum(round_of[i] == 1 for i in errors)  # sampled and held-out answers alike
    shown = json.loads(CliRunner().invoke(app, ["show", "flaky", "--db", str(tmp_path / "loop.db"),
                                                "--json"]).output)
    assert shown["rounds"][1]["errors"]["verifier"] == round_errors > 0
    assert shown["run"]["status"] == "finished"
