"""bench/agent.py: the no-tool baseline asks the calculator task's own held-out problems without
the environment or its prompt, and the table reads the rounds' episode stats (the benchmark
itself runs `loop run calculator` for 20 minutes and is run by hand: BENCHMARKS.md); and
bench/shared_prefix.py runs and checks that both of its arms decode the same tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import agent  # noqa: E402


def test_the_no_tool_task_is_the_same_problems_without_environment_or_worked_exchange(tmp_path):
    from loop.config import load_task_file
    from loop_math.arithmetic import ArithmeticTasks

    plain = yaml.safe_load(agent.no_tool_task(tmp_path).read_text())
    full = load_task_file(str(agent.TASK))
    assert "environment" not in plain and plain["verifiers"] == full["verifiers"]
    assert "few_shot" not in plain["options"] and "system_prompt" not in plain["options"]
    with_tools = ArithmeticTasks().load(full["options"], seed=0)
    without = ArithmeticTasks().load(plain["options"], seed=0)
    assert [t.reference for t in without.eval] == [t.reference for t in with_tools.eval]
    assert [t.prompt[-1] for t in without.eval] == [t.prompt[-1] for t in with_tools.eval]
    assert [m["role"] for m in without.eval[0].prompt] == ["system", "user"]


def test_the_table_has_a_row_per_round_with_tool_use_and_turns():
    def round_(i, score, share, turns):
        return {"index": i, "eval": {"pass_at_1": score}, "timings": {"evaluate": 10.0 + i},
                "episodes": {"evaluate": {"tool_call_share": share, "mean_turns": turns,
                                          "tool_errors": i}}}

    data = {"rounds": [round_(0, 0.5, 0.25, 1.5), round_(1, 0.9, 1.0, 2.0)]}
    rows, text = agent.table(data, wall=600.0, no_tools=0.02)
    assert [(r["round"], r["pass_at_1"], r["tool_call_share"], r["mean_turns"]) for r in rows] \
        == [(0, 0.5, 0.25, 1.5), (1, 0.9, 1.0, 2.0)]
    assert "| 1 | 0.900 | 100% | 2.00 | 0.020 | 11 |" in text
    assert "0.500 -> 0.900 (+40.0 pts" in text and "10.0 min" in text


@pytest.mark.slow
@pytest.mark.parametrize("task", ["calculator", "arithmetic"])
def test_the_shared_prefix_benchmark_runs_and_checks_the_tokens_agree(task):
    import subprocess

    done = subprocess.run([sys.executable, str(REPO / "bench" / "shared_prefix.py"), "--task",
                           task, "--prompts", "3", "--max-new-tokens", "4", "--repeat", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 prompts of " in done.stdout and "same tokens: True" in done.stdout
