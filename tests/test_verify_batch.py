"""Verifiers judge in batches (verify_batch), check their machine before a run (prepare), get a
second chance at answers they could not check (infra verdicts are redone on resume), and can be
tried by hand (`loop verify`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import loop
from loop.cli import app
from loop.resolve import Chosen
from loop.schema import Attempt, Task, Verdict
from loop.rounds import VERIFY_CHUNK
from loop.guarded import safe_verify_batch
from tiny_model import scripted_run, tiny_task_yaml

TASK = Task(source="s", split="train", prompt=[{"role": "user", "content": "1+1="}], reference="2")


def attempts(count: int) -> list[Attempt]:
    return [Attempt(id=f"att-{i}", run_id="r", round_index=1, task_id=TASK.id, purpose="train",
                    sample_index=i, messages=[], completion=str(i % 3)) for i in range(count)]


class Batching(loop.Verifier):
    name = "batching"

    def __init__(self, behaviour=None):
        self.calls: list[int] = []
        self.behaviour = behaviour

    def verify_batch(self, items):
        self.calls.append(len(items))
        if self.behaviour:
            return self.behaviour(items)
        return [Verdict(passed=a.completion == t.reference) for t, a in items]


def test_an_overridden_verify_batch_gets_the_chunk_and_answers_in_order():
    verifier = Batching()
    items = [(TASK, a) for a in attempts(5)]
    verdicts = safe_verify_batch(Chosen("batching", verifier, None, "p"), items, 1.0)
    assert verifier.calls == [5]
    assert [v.passed for v in verdicts] == [a.completion == "2" for _, a in items]


@pytest.mark.parametrize("behaviour,reason", [
    (lambda items: 1 / 0, "raised ZeroDivisionError"),
    (lambda items: [Verdict(passed=True)], "verify_batch returned 1 verdicts for 3 items"),
    (lambda items: None, "returned 'NoneType' object is not iterable"),
])
def test_a_failing_verify_batch_gives_every_item_an_infra_verdict(behaviour, reason):
    items = [(TASK, a) for a in attempts(3)]
    verdicts = safe_verify_batch(Chosen("batching", Batching(behaviour), None, "evil"), items, 1.0)
    assert [v.error_kind for v in verdicts] == ["infra"] * 3
    for verdict, (_, attempt) in zip(verdicts, items):
        assert f"verifier 'batching' (plugin evil) on attempt {attempt.id}: " in verdict.feedback
        assert reason in verdict.feedback


def test_a_non_verdict_in_a_batch_costs_only_its_item():
    items = [(TASK, a) for a in attempts(3)]
    chosen = Chosen("batching", Batching(lambda items: [Verdict(passed=True), "yes",
                                                        Verdict(passed=False)]), None, "p")
    verdicts = safe_verify_batch(chosen, items)
    assert [(v.passed, v.error_kind) for v in verdicts] == [(True, None), (False, "infra"),
                                                           (False, None)]
    assert "returned str, not a Verdict" in verdicts[1].feedback


def test_the_engine_verifies_in_chunks(store):
    from loop.resolve import Components
    from loop.config import LoopConfig
    from loop.rounds import RoundEngine

    verifier = Batching()
    engine = RoundEngine(store=store, config=LoopConfig(), run_id="r", run_dir=Path("."),
                         components=Components(None, None, [Chosen("batching", verifier, None,
                                                                   "p")], [], None))
    batch = attempts(2 * VERIFY_CHUNK + 3)
    rows = engine._verify(1, batch, "evaluate", tasks={TASK.id: TASK})
    assert verifier.calls == [VERIFY_CHUNK, VERIFY_CHUNK, 3]
    assert [r[0] for r in rows] == [a.id for a in batch]
    assert [r[2].passed for r in rows] == [a.completion == "2" for a in batch]


BROKEN_SANDBOX = '''
import loop
from loop.schema import Verdict

class Sandboxed(loop.Verifier):
    name = "sandboxed"
    def prepare(self):
        raise RuntimeError("no network namespace: unshare is missing")
    def verify(self, task, attempt):
        return Verdict(passed=True)

@loop.hookimpl
def register_verifiers(register):
    register(Sandboxed())
'''


def test_a_verifier_that_cannot_start_stops_the_run_before_it_exists(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sandboxed.py").write_text(BROKEN_SANDBOX)
    result, conn = scripted_run(tmp_path, "--set", "task.verifiers=[sandboxed]")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: verifier error: sandboxed (plugin file:sandboxed.py): no network namespace: "
        "unshare is missing"]
    assert conn is None or conn.execute(
        "select count(*) from sqlite_master where name = 'runs'").fetchone()[0] == 0 or \
        conn.execute("select count(*) from runs").fetchone()[0] == 0


BROKEN_UNTIL_FIXED = '''
import os
import loop
from loop.schema import Verdict

class Sometimes(loop.Verifier):
    """Cannot check anything while the file named by $SANDBOX_BROKEN exists (a broken sandbox),
    else exact match."""
    name = "sometimes"
    def verify(self, task, attempt):
        if os.path.exists(os.environ["SANDBOX_BROKEN"]):
            return Verdict(passed=False, error_kind="infra", feedback="sandbox: cannot start")
        text = attempt.completion.strip()
        return Verdict(passed=text == task.reference, error_kind=None if text == task.reference
                       else "model")

@loop.hookimpl
def register_verifiers(register):
    register(Sometimes())
'''


class Crash(BaseException):
    """Stands in for the SIGKILL of a fail point in this process: no `except Exception` sees it,
    so the run stays `running` and the open transaction is rolled back, as a kill leaves them
    (tests/test_resume.py kills real processes at every fail point)."""


def test_infra_verdicts_are_checked_again_on_resume(tmp_path, monkeypatch):
    """A run that dies right after verification failed for infrastructure reasons: on resume,
    once the sandbox works again, exactly those answers are verified again, never rewarded 0."""
    import loop.rounds

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sometimes.py").write_text(BROKEN_UNTIL_FIXED)
    broken = tmp_path / "broken"
    broken.touch()
    monkeypatch.setenv("SANDBOX_BROKEN", str(broken))
    task = tiny_task_yaml().replace("verifiers: [math]", "verifiers: [sometimes]")

    def die_after_verify(name):
        if name == "verify.after_commit":
            raise Crash(name)

    monkeypatch.setattr(loop.rounds, "failpoint", die_after_verify)
    with pytest.raises(Crash):
        scripted_run(tmp_path, "--rounds", "1", "--set", "select.prompts_per_round=8",
                     "--set", "generate.n=2", "--set", "generate.max_new_tokens=5",
                     "--set", "evaluate.problems=4", "--set", "evaluate.max_new_tokens=5",
                     task_text=task)
    monkeypatch.undo()  # the fail point is inert again
    monkeypatch.setenv("SANDBOX_BROKEN", str(broken))
    conn = sqlite3.connect(tmp_path / "loop.db")
    assert conn.execute("select status from runs").fetchone()[0] == "running"
    query = ("select v.error_kind, count(*) from verdicts v join attempts a on a.id = "
             "v.attempt_id where a.round_idx = 1 and a.purpose = 'train' group by 1")
    assert dict(conn.execute(query).fetchall()) == {"infra": 16}
    broken.unlink()  # the sandbox is fixed
    resumed, _ = scripted_run(tmp_path, command="resume")
    assert resumed.exit_code == 0, resumed.output
    assert "round 1: checking 16 answers again whose verification failed for infrastructure " \
        "reasons" in " ".join(resumed.output.split())
    rows = conn.execute(
        "select a.completion, t.reference, v.passed, v.error_kind, r.value from attempts a "
        "join tasks t on t.id = a.task_id join verdicts v on v.attempt_id = a.id "
        "join rewards r on r.attempt_id = a.id where a.round_idx = 1 and a.purpose = 'train'"
        ).fetchall()
    assert len(rows) == 16  # one verdict and one reward per answer: nothing doubled
    for completion, reference, ok, kind, reward in rows:
        right = completion.strip() == reference
        assert (bool(ok), kind, reward) == (right, None if right else "model", float(right))
    assert conn.execute("select status from runs").fetchone()[0] == "finished"
    # round 0's held-out verdicts are not train answers: they keep their infra rows, no reward
    assert conn.execute("select count(*) from rewards r join verdicts v on v.attempt_id = "
                        "r.attempt_id where v.error_kind = 'infra'").fetchone()[0] == 0


def test_loop_verify_runs_any_tasks_verifiers_on_an_answer(tmp_path, tiny_task_file):
    from loop.config import build_config
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.resolve import resolve_components

    cfg = build_config(str(tiny_task_file))
    components = resolve_components(cfg, build_registry(get_plugin_manager()))
    item = components.task_source.component.load(components.task_source.options, cfg.seed).eval[0]
    right, wrong = tmp_path / "right.txt", tmp_path / "wrong.txt"
    right.write_text(f"The answer is {item.reference}.")
    wrong.write_text(f"The answer is {int(item.reference) + 1}.")
    result = CliRunner().invoke(app, ["verify", str(tiny_task_file), item.id[:10], str(right),
                                      "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["task"] == item.id and shown["passed"] is True
    assert set(shown["verdicts"]["math"]) >= {"passed", "score", "error_kind", "mistake",
                                              "feedback", "seconds"}
    result = CliRunner().invoke(app, ["verify", str(tiny_task_file), item.id, str(wrong)])
    assert result.exit_code == 1
    assert "math" in result.output and "no" in result.output


@pytest.mark.parametrize("args,message", [
    (["nope", "ANSWER"], "no item 'nope' in this task"),
    (["ITEM", "missing.txt"], "missing.txt: cannot read"),
    (["ITEM", "ANSWER", "--verifier", "other"], "has no verifier 'other'"),
])
def test_loop_verify_bad_input_is_one_line(tmp_path, tiny_task_file, args, message):
    from loop.config import build_config
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.resolve import resolve_components

    cfg = build_config(str(tiny_task_file))
    components = resolve_components(cfg, build_registry(get_plugin_manager()))
    item = components.task_source.component.load(components.task_source.options, cfg.seed).eval[0]
    answer = tmp_path / "answer.txt"
    answer.write_text("42")
    args = [a.replace("ITEM", item.id).replace("ANSWER", str(answer)) for a in args]
    result = CliRunner().invoke(app, ["verify", str(tiny_task_file), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
