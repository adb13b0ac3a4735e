"""The refine stage end to end on the tiny model: repair chains in the store, the budget, the
critics' rows, what the model is shown, and the mistake log keyed by the taxonomy."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.critics import EXPLANATIONS
from tiny_model import tiny_task_yaml

REPO = Path(__file__).resolve().parent.parent

TASK = tiny_task_yaml(critics=["verifier_feedback", "taxonomy"])
SETTINGS = ["--rounds", "1", "--set", "select.prompts_per_round=16", "--set", "generate.n=2",
            "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
            "--set", "evaluate.problems=10", "--set", "evaluate.max_new_tokens=6",
            "--set", "train.max_length=32", "--set", "train.max_steps=1"]


def _run(tmp_path, model, *extra, task_text=TASK, output=None):
    task = tmp_path / "task.yaml"
    task.write_text(task_text)
    db = tmp_path / "loop.db"
    result = CliRunner().invoke(app, ["run", str(task), "--model", str(model), "--name", "r",
                                      "--db", str(db), *SETTINGS, *extra])
    assert result.exit_code == 0, result.output
    if output is not None:
        output.append(result.output)
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return conn


@pytest.mark.slow
def test_refine_chains_budget_critiques_and_taxonomy(tmp_path, weak_adder_dir):
    conn = _run(tmp_path, weak_adder_dir, "--set", "refine.depth=2", "--set", "refine.budget=30")
    attempts = {r["id"]: dict(r) for r in conn.execute(
        "select * from attempts where purpose = 'train'")}
    passed = {r["attempt_id"]: r["passed"] for r in conn.execute("select * from verdicts")}
    first = [a for a in attempts.values() if a["depth"] == 0]
    repairs = [a for a in attempts.values() if a["depth"] > 0]
    assert len(first) == 32 and 0 < len(repairs) <= 30  # the budget caps extra samples
    failed_first = [a for a in first if not passed[a["id"]]]
    assert len([a for a in repairs if a["depth"] == 1]) == min(30, len(failed_first))
    for repair in repairs:
        parent = attempts[repair["parent_id"]]
        assert parent["depth"] == repair["depth"] - 1 and not passed[parent["id"]]
        assert (parent["task_id"], parent["sample_index"]) == (repair["task_id"],
                                                               repair["sample_index"])
        messages = json.loads(repair["messages_json"])
        # the model sees its own earlier turn, then the critique, then answers again
        assert messages[:-2] == json.loads(parent["messages_json"])
        request = messages[-2]
        assert request["role"] == "user" and request["content"].startswith("Your answer is not")
        task = conn.execute("select reference from tasks where id = ?",
                            [repair["task_id"]]).fetchone()
        assert f"expected {task['reference']}" not in request["content"]  # no hints
        assert "The checker says:" in request["content"]
        assert messages[-1] == {"role": "assistant", "content": repair["completion"]}
    # both critics explained every repaired answer's parent
    critiques = conn.execute("select a.depth, c.critic, c.kind from critiques c join attempts a "
                             "on a.id = c.attempt_id").fetchall()
    explained = {r["attempt_id"] for r in conn.execute(
        "select attempt_id from critiques where critic = 'verifier_feedback'")}
    assert explained >= {r["parent_id"] for r in repairs}
    assert {c["critic"] for c in critiques} == {"verifier_feedback", "taxonomy"}
    stats = json.loads(conn.execute("select stages_json from rounds where idx = 1").fetchone()[0])
    assert stats["refine"]["count"] == len(repairs)
    assert stats["refine"]["repaired"] == sum(passed[a["id"]] for a in repairs)
    shown = json.loads(CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "loop.db"),
                                                "--json"]).output)
    assert shown["rounds"][1]["train"]["repairs"] == len(repairs)
    assert shown["rounds"][1]["train"]["repaired"] == stats["refine"]["repaired"]
    table = CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "loop.db")]).output
    assert "repaired" in table and f"{stats['refine']['repaired']}/{len(repairs)}" in table
    # the mistake log is keyed by the taxonomy's kinds
    kinds = {r[0] for r in conn.execute("select distinct kind from mistakes")}
    assert kinds and kinds <= set(EXPLANATIONS)


@pytest.mark.slow
def test_no_refinement_by_default_or_with_zero_budget(tmp_path, weak_adder_dir):
    conn = _run(tmp_path, weak_adder_dir, "--set", "refine.depth=2", "--set", "refine.budget=0")
    assert conn.execute("select count(*) from attempts where depth > 0").fetchone()[0] == 0
    stats = json.loads(conn.execute("select stages_json from rounds where idx = 1").fetchone()[0])
    assert stats["refine"]["count"] == 0
    # failures the refine stage did not reach are still classified for the mistake log
    assert conn.execute("select count(*) from critiques where critic = 'taxonomy'").fetchone()[0] > 0


@pytest.mark.slow
def test_round_two_replays_open_mistakes(tmp_path, weak_adder_dir):
    conn = _run(tmp_path, weak_adder_dir, "--rounds", "2", "--set", "select.replay_share=0.5")
    stages = {r["idx"]: json.loads(r["stages_json"]) for r in conn.execute("select * from rounds")}
    replayed = stages[2]["select"]["replayed"]
    assert len(replayed) == 8 and stages[1]["select"]["replayed"] == []
    round1 = set(stages[1]["select"]["task_ids"])
    assert set(replayed) <= round1  # replayed tasks are round-1 tasks ...
    failed = {r[0] for r in conn.execute(
        "select a.task_id from attempts a join verdicts v on v.attempt_id = a.id "
        "where a.round_idx = 1 and v.passed = 0")}
    assert set(replayed) <= failed  # ... that had mistakes
    assert stages[2]["select"]["task_ids"][:8] == replayed
    fresh = stages[2]["select"]["task_ids"][8:]
    assert not set(fresh) & round1
    attempted = {r[0] for r in conn.execute("select task_id from attempts where round_idx = 2 "
                                            "and purpose = 'train'")}
    assert set(replayed) <= attempted
    shown = json.loads(CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "loop.db"),
                                                "--json"]).output)
    assert [r["train"]["replayed"] for r in shown["rounds"]] == [0, 0, 8]


BROKEN_CRITIC = """
import loop

class Broken(loop.Critic):
    name = "broken"
    def critique(self, task, attempt, verdicts):
        raise RuntimeError("critic bug")

@loop.hookimpl
def register_critics(register):
    register(Broken())
"""


@pytest.mark.slow
def test_a_failing_critic_is_reported_and_the_repairs_go_on(tmp_path, weak_adder_dir):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text(BROKEN_CRITIC)
    output: list[str] = []
    conn = _run(tmp_path, weak_adder_dir, "--plugins-dir", str(plugins), "--set",
                "refine.depth=1", "--set", "refine.budget=5",
                task_text=TASK.replace("[verifier_feedback, taxonomy]", "[broken, taxonomy]"),
                output=output)
    said = " ".join(output[0].split())  # rich wraps long lines
    assert ("critic 'broken' (plugin file:broken.py) failed: raised RuntimeError: critic bug; "
            "no critique from it") in said
    assert conn.execute("select count(*) from attempts where depth = 1").fetchone()[0] == 5
    critics = {r[0] for r in conn.execute("select distinct critic from critiques")}
    assert critics == {"taxonomy"}
