"""What a new plugin author needs to see: a task's items (`loop tasks TASK`, `loop verify` by
prompt text), which check failed (`loop show`'s per-verifier pass rates and reward means),
error counts that say what they count (reward failures apart from the NULLs the contract asks
for), and where a plugin raised (the traceback in the verdict's details)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from typer.testing import CliRunner

import loop
from loop.cli import app
from loop.guarded import PluginFailure, call_plugin, safe_verify, safe_verify_batch
from loop.resolve import Chosen
from loop.schema import Attempt, Task

PLUGIN = '''
import loop


class Threes(loop.TaskSource):
    """Questions whose answer is 3."""

    name = "threes"

    def load(self, options, seed):
        def task(i, split):
            return loop.Task(source=self.name, split=split, reference="3",
                             prompt=[{"role": "user", "content": f"What is 1+2? (#{i})"}])
        return loop.TaskSet(train=[task(i, "train") for i in range(6)],
                            eval=[task(i, "eval") for i in range(10, 13)])


class Fussy(loop.Verifier):
    """Raises on question #0 (a plugin bug), passes the rest."""

    name = "fussy"

    def verify(self, task, attempt):
        if "(#0)" in task.prompt[-1]["content"]:
            return [][0]  # FUSSY-BUG
        return loop.Verdict(passed=True, score=1.0)


def broken(prompts, completions, **kwargs):
    raise RuntimeError("reward bug")


@loop.hookimpl
def register_tasks(register):
    register(Threes())


@loop.hookimpl
def register_verifiers(register):
    register(Fussy())


@loop.hookimpl
def register_rewards(register):
    register(broken)
'''

SCRIPTED = ["--set", "backend.name=scripted",
            "--set", 'backend.options.completions=["The answer is 3."]', "--method", "noop"]


@pytest.fixture
def plugins(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "threes.py").write_text(PLUGIN)
    return folder


@pytest.fixture
def threes_run(tmp_path, plugins, monkeypatch):
    """One training round on the scripted backend: `math` passes "The answer is 3.", while
    `exact_match` fails it; `fussy` raises on question #0; the `broken` reward raises."""
    import loop.cli.common

    monkeypatch.setattr(loop.cli.common, "_PM", None)
    db = tmp_path / "t.db"
    result = CliRunner().invoke(app, [
        "run", "threes", "--rounds", "1", "--db", str(db), "--plugins-dir", str(plugins),
        *SCRIPTED, "--set", "task.verifiers=[math, exact_match, fussy]",
        "--set", "task.rewards=[binary, broken]", "--set", "select.prompts_per_round=6",
        "--set", "generate.n=2", "--name", "threes"])
    assert result.exit_code == 0, result.output
    return db


def _json(*args, code=0):
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.output)


def test_show_gives_each_verifiers_pass_rate_reward_means_and_counted_errors(threes_run):
    shown = _json("show", "threes", "--db", threes_run)
    zero, one = shown["rounds"]
    # 12 train answers (6 prompts x 2); question #0's 2 answers get fussy's infra verdict
    assert one["verifiers"]["math"] == {"train_n": 12, "train_pass_rate": 1.0,
                                        "eval_n": 3, "eval_pass_rate": 1.0}
    assert one["verifiers"]["exact_match"]["train_pass_rate"] == 0.0
    assert one["verifiers"]["fussy"]["train_pass_rate"] == 10 / 12
    assert zero["verifiers"]["math"]["eval_pass_rate"] == 1.0 and zero["verifiers"]["math"][
        "train_n"] == 0
    # binary: 0.0 where exact_match failed, NULL (not applicable) on the 2 infra verdicts
    assert one["rewards"]["binary"] == {"mean": 0.0, "n": 12, "null": 2}
    assert one["rewards"]["broken"] == {"mean": None, "n": 12, "null": 12}
    # errors: fussy's infra verdicts (train and held-out: none of the eval questions is #0), and
    # only the values `broken` failed to give; binary's NULLs on infra verdicts are no error
    assert one["errors"] == {"verifier": 2, "reward": 12, "reward_by_function": {"broken": 12},
                             "null_rewards": 14}
    assert zero["errors"]["reward"] == 0
    stages = json.loads(sqlite3.connect(threes_run).execute(
        "select stages_json from rounds where idx = 1").fetchone()[0])
    assert stages["reward"]["failures"] == {"broken": 12}
    assert stages["reward"]["failure_reasons"]["broken"] == "raised RuntimeError: reward bug"

    table = CliRunner().invoke(app, ["show", "threes", "--db", str(threes_run)])
    assert table.exit_code == 0, table.output
    assert "errors" in table.output and "checks per round" in table.output
    assert "✓ exact_match" in table.output and "mean binary" in table.output
    row = next(line for line in table.output.splitlines()
               if line.split()[:1] == ["1"] and "%" in line and "broken" in line)
    assert "0.0%" in row and "100.0%" in row and "83.3%" in row  # exact_match, math, fussy


def test_an_error_verdict_keeps_its_traceback_and_logs_show_where(threes_run, plugins):
    rows = _json("logs", "threes", "--db", threes_run, "--failed", "-n", "0", "-q", "(#0)")
    fussy = [r["verdicts"]["fussy"] for r in rows if r["purpose"] == "train"]
    assert len(fussy) == 2
    for verdict in fussy:
        assert verdict["error_kind"] == "infra"
        assert verdict["feedback"].endswith("raised IndexError: list index out of range")
        assert "\n" not in verdict["feedback"]
        assert re.fullmatch(r".*threes\.py:\d+ in verify", verdict["details"]["where"])
        assert "FUSSY-BUG" in verdict["details"]["traceback"]
        assert verdict["details"]["traceback"].rstrip().endswith(
            "IndexError: list index out of range")
    text = CliRunner().invoke(app, ["logs", "threes", "--db", str(threes_run), "-q", "(#0)",
                                    "-n", "1"]).output
    assert re.search(r"raised at .*threes\.py:\d+ in verify", text), text


def test_tracebacks_are_short_and_name_the_plugin_frame(monkeypatch, capsys):
    monkeypatch.setenv("LOOP_TRACE_PLUGINS", "1")

    def deep(n):
        return deep(n - 1) if n else [][1]

    with pytest.raises(PluginFailure) as info:
        call_plugin(deep, None, 400)
    assert len(info.value.traceback) <= 4100
    assert info.value.where.endswith(f"{__file__}:{deep.__code__.co_firstlineno + 1} in deep")
    assert f"(at {info.value.where})" in capsys.readouterr().err

    task = Task(source="s", split="train", prompt=[{"role": "user", "content": "q"}],
                reference="1")
    attempt = Attempt(id="a1", run_id="r", round_index=1, task_id=task.id, purpose="train",
                      sample_index=0, messages=[], completion="1")

    class Batch(loop.Verifier):
        name = "batch"

        def verify_batch(self, items):
            raise KeyError("sandbox")

    verdicts = safe_verify_batch(Chosen("batch", Batch(), None, "p"), [(task, attempt)] * 2)
    assert all("KeyError: 'sandbox'" in v.details["traceback"] for v in verdicts)
    assert all("in verify_batch" in v.details["where"] for v in verdicts)

    class Fine(loop.Verifier):
        name = "fine"

        def verify(self, task, attempt):
            return loop.Verdict(passed=True, score=1.0)

    assert safe_verify(Fine(), task, attempt).details == {}


def test_tasks_lists_a_tasks_items_and_verify_takes_one_by_its_prompt(tmp_path):
    found = _json("tasks", "arithmetic", "-q", "25 + 60")
    assert [(r["split"], r["prompt"], r["reference"]) for r in found] == \
        [("eval", "What is 25+60?", "85")]
    assert len(_json("tasks", "arithmetic", "--split", "eval", "-n", "0")) == 200
    assert len(_json("tasks", "arithmetic", "-n", "5")) == 5
    table = CliRunner().invoke(app, ["tasks", "arithmetic", "--split", "train", "-n", "3"])
    assert table.exit_code == 0 and "arithmetic: 3 of 2000 items (train)" in table.output
    assert {"arithmetic", "code-easy"} <= {r["name"] for r in _json("tasks")}  # sources

    answer = tmp_path / "answer.txt"
    answer.write_text("The answer is 85.")
    verdict = _json("verify", "arithmetic", "25 + 60", answer)
    assert verdict["task"] == found[0]["id"] and verdict["passed"] is True
    assert _json("verify", "arithmetic", found[0]["id"][:8], answer)["passed"] is True
    ambiguous = CliRunner().invoke(app, ["verify", "arithmetic", "+60", str(answer)])
    assert ambiguous.exit_code == 2
    assert re.fullmatch(r"error: item '\+60' is ambiguous: \d+ items' prompts hold it .*\n",
                        ambiguous.output), ambiguous.output
    assert CliRunner().invoke(app, ["verify", "arithmetic", "5+60", str(answer)]).exit_code == 2


def test_verify_shows_where_a_verifier_raised(tmp_path, plugins):
    answer = tmp_path / "answer.txt"
    answer.write_text("The answer is 3.")
    shown = _json("verify", "threes", "(#0)", answer, "--plugins-dir", plugins,
                  "--set", "task.verifiers=[math, fussy]", code=1)
    fussy = shown["verdicts"]["fussy"]
    assert "on attempt loop-verify: raised IndexError" in fussy["feedback"]
    assert "FUSSY-BUG" in fussy["details"]["traceback"]
    text = CliRunner().invoke(app, ["verify", "threes", "(#0)", str(answer), "--plugins-dir",
                                    str(plugins), "--set", "task.verifiers=[fussy]"]).output
    assert re.search(r"fussy raised at .*threes\.py:\d+ in verify", text), text
    assert "FUSSY-BUG" in text


def test_a_reward_that_ignores_verdicts_keeps_its_number_on_an_infra_verdict():
    """docs/plugins.md: the None-on-infra rule binds rewards that go by the verdicts; the engine
    stores what a reward returns and overrides nothing, and that is no reward error."""
    from loop.guarded import call_reward
    from loop.schema import Verdict

    task = Task(source="s", split="train", prompt=[{"role": "user", "content": "q"}],
                reference="1")
    attempt = Attempt(id="a1", run_id="r", round_index=1, task_id=task.id, purpose="train",
                      sample_index=0, messages=[], completion="a long answer")
    broken = {"a1": {"v": Verdict(passed=False, error_kind="infra", feedback="no sandbox")}}
    failures: list[str] = []
    warnings: list[str] = []

    def length_penalty(prompts, completions, **kwargs):
        return [-0.5 for _ in completions]

    assert call_reward(Chosen("length", length_penalty, None, "p"), [attempt], {task.id: task},
                       broken, None, warnings.append, failures) == [-0.5]
    assert failures == [] and warnings == []
