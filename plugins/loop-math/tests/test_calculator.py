"""The `calculator` environment: exact arithmetic from untrusted text, every hostile expression a
one-line ValueError (a tool error the model reads), and episodes on the calculator task whose
tool results are the environment's own computation, judged by the math verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import loop
from loop.doubles import ScriptedBackend
from loop.episodes import EpisodeSettings, run_episodes
from loop.config import load_task_file
from loop_math.arithmetic import ArithmeticTasks
from loop_math.calculator import Calculator, evaluate
from loop_math.verifier import MathVerifier

TASK_FILE = Path(__file__).resolve().parents[3] / "tasks" / "calculator.yaml"


def call(expression: str) -> str:
    body = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return f"<tool_call>\n{body}\n</tool_call>"


@pytest.mark.parametrize("expression, value", [
    ("317*46", 14582), (" (12+3)/4 ", 3.75), ("2**10 - 1", 1023), ("-7 // 2", -4),
    ("17 % 5", 2), ("6/3", 2), ("3 × 4", 12), ("2^8", 256), ("1.5*4", 6),
])
def test_evaluate_is_exact_arithmetic(expression, value):
    result = evaluate(expression)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("expression, error", [
    ("__import__('os').system('true')", "only numbers"),
    ("open('/etc/passwd')", "only numbers"),
    ("x + 1", "only numbers"),
    ("'a' * 3", "only numbers"),
    ("[1] * 10**9", "only numbers"),
    ("9**9**9", "power too large"),
    ("(10**50) * (10**60)", "result out of range"),
    ("1e300 ** 3", "power too large"),
    ("1/0", "division by zero"),
    ("1 +", "not an arithmetic expression"),
    ("", "empty expression"),
    ("1+" * 150 + "1", "longer than 200"),
])
def test_hostile_or_bad_expressions_are_one_line_errors(expression, error):
    with pytest.raises(ValueError) as info:
        evaluate(expression)
    assert error in str(info.value) and "\n" not in str(info.value)


def _calculator_tasks(**overrides):
    section = load_task_file(str(TASK_FILE))
    options = {**section["options"], **overrides}
    return section, ArithmeticTasks().load(options, seed=0)


def test_the_calculator_task_is_three_by_two_digit_products_with_a_worked_exchange():
    section, tasks = _calculator_tasks(train_size=50, eval_size=20)
    assert section["environment"]["name"] == "calculator"
    for task in tasks.train + tasks.eval:
        a, b = task.metadata["a"], task.metadata["b"]
        assert 100 <= a <= 999 and 10 <= b <= 99 and task.reference == str(a * b)
        roles = [m["role"] for m in task.prompt]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
        assert task.prompt[-1]["content"] == f"What is {a}*{b}?"
    assert not {t.id for t in tasks.train} & {t.id for t in tasks.eval}


def test_second_operand_digits_and_few_shot_leave_other_tasks_unchanged():
    plain = ArithmeticTasks().load({"train_size": 30, "eval_size": 10}, seed=3)
    same = ArithmeticTasks().load({"train_size": 30, "eval_size": 10, "digits_b": 2}, seed=3)
    assert [t.prompt for t in plain.eval + plain.train] == [t.prompt for t in same.eval + same.train]
    with pytest.raises(ValueError, match="role must be"):
        ArithmeticTasks().load({"few_shot": [{"role": "robot", "content": "hi"}]}, seed=0)
    with pytest.raises(ValueError, match="only 810 distinct problems"):
        ArithmeticTasks().load({"digits": 1, "digits_b": 2, "operations": ["*"],
                                "train_size": 800, "eval_size": 20}, seed=0)


def test_a_question_the_worked_examples_answer_is_never_a_task():
    """The few-shot exchange shows 317*46 = 14582: that problem must be in neither split."""
    options = {"digits": 1, "operations": ["*"], "train_size": 70, "eval_size": 10,
               "few_shot": [{"role": "user", "content": "What is 3*4?"},
                            {"role": "assistant", "content": "12"}]}
    tasks = ArithmeticTasks().load(options, seed=0)
    questions = [t.prompt[-1]["content"] for t in tasks.train + tasks.eval]
    assert "What is 3*4?" not in questions and len(set(questions)) == 80
    without = ArithmeticTasks().load({**options, "few_shot": []}, seed=0)
    assert "What is 3*4?" in [t.prompt[-1]["content"] for t in without.train + without.eval]
    with pytest.raises(ValueError, match="only 80 problems are not among few_shot"):
        ArithmeticTasks().load({**options, "train_size": 71}, seed=0)


def test_calculator_episodes_get_the_environments_results_and_math_judges_the_answer():
    """A scripted model calls the tool with the question's expression (or a wrong one, or a
    hostile one) and answers with whatever the tool said: the stored results are the
    environment's own arithmetic, and only the right expressions pass."""
    _, tasks = _calculator_tasks(train_size=6, eval_size=1)
    plans = ["right", "wrong", "hostile", "right", "no-call", "right"]

    def respond(prompt, k, sampling):
        question = prompt[-1]["content"] if prompt[-1]["role"] == "user" else next(
            m["content"] for m in reversed(prompt) if m["role"] == "user")
        expression = question.removeprefix("What is ").removesuffix("?")
        plan = plans[next(i for i, t in enumerate(tasks.train)
                          if t.prompt[-1]["content"] == question)]
        results = [m["content"] for m in prompt[6:] if m["role"] == "tool"]
        if not results:
            if plan == "no-call":
                return "12345"
            if plan == "wrong":
                return call(expression.replace("*", "+"))
            if plan == "hostile":
                return call("__import__('os').getcwd()")
            return call(expression)
        return results[-1]

    session = ScriptedBackend(respond=respond).open(loop.ModelRef(base="x"))
    settings = EpisodeSettings(max_turns=3, max_tokens=4000, tool_timeout_s=5,
                               environment="calculator")
    out = run_episodes(session, Calculator(), tasks.train,
                       loop.Sampling(n=1, temperature=0.0, max_new_tokens=400), settings)
    verifier = MathVerifier()
    for task, plan, [episode] in zip(tasks.train, plans, out):
        a, b = task.metadata["a"], task.metadata["b"]
        tool_turns = [t for t in episode.turns if t.role == "tool"]
        attempt = loop.Attempt(id="a", run_id="r", round_index=0, task_id=task.id,
                               purpose="train", sample_index=0, messages=episode.messages,
                               completion=episode.completion)
        verdict = verifier.verify(task, attempt)
        if plan == "right":
            assert [(t.text, t.error) for t in tool_turns] == [(str(a * b), None)]
            assert verdict.passed
        elif plan == "wrong":
            assert [t.text for t in tool_turns] == [str(a + b)] and not verdict.passed
        elif plan == "hostile":
            assert tool_turns[0].error.startswith("tool calculator raised ValueError: only")
            assert not verdict.passed
        else:
            assert tool_turns == [] and episode.end_reason == "answer" and not verdict.passed
        assert episode.env_reward is None  # the calculator leaves judging to the verifier


@pytest.mark.slow
def test_loop_run_calculator_names_the_run_after_the_task_and_shows_tool_use(tmp_path):
    """`loop run calculator` end to end on the scripted backend: the run is named after the task
    file, every episode's tool result is the environment's, and `loop show` reports tool use
    and turns per round."""
    import os
    import subprocess
    import sys

    reply = call("317*46").replace('"', '\\"').replace("\n", "\\n")
    args = ["run", "calculator", "--rounds", "1", "--set", "backend.name=scripted",
            # the scripted k-th assistant turn: the prompt's worked exchange holds two already
            "--set", f'backend.options.completions=["", "", "{reply}", "14582"]',
            "--set", "train.method=noop", "--set", "select.prompts_per_round=3",
            # one token per character on the scripted backend: a call alone is ~90 tokens
            "--set", "task.environment.max_tokens=2000",
            "--set", "evaluate.problems=4", "--set", "generate.n=2"]
    env = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    env["LOOP_DB"] = str(tmp_path / "loop.db")
    cli = [sys.executable, "-m", "loop.cli"]
    done = subprocess.run([*cli, *args], env=env, cwd=TASK_FILE.parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = subprocess.run([*cli, "show", "calculator-1", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    rounds = json.loads(shown.stdout)["rounds"]
    assert [sorted(r["episodes"]) for r in rounds] == [["evaluate"], ["evaluate", "generate"]]
    for r in rounds:
        for stats in r["episodes"].values():
            assert stats["tool_call_share"] == 1.0 and stats["mean_turns"] == 2.0
            assert stats["tool_errors"] == 0 and stats["end_reasons"] == {"answer": stats["count"]}
    assert rounds[1]["episodes"]["generate"]["count"] == 3 * 2
    table = subprocess.run([*cli, "show", "calculator-1"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert "tool use" in table.stdout and "100.0%" in table.stdout
