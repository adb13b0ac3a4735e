"""The refine stage end to end, in this process, on the doubles (the `adder` scripted backend of
tiny_model.ADDER_PLUGIN and the `noop` update method): repair chains in the store, the budget, the
critics' rows, what the model is shown, replayed mistakes, and the mistake log keyed by the
taxonomy. The answers are deterministic, so the counts are exact."""

from __future__ import annotations

import json
from collections import Counter

from typer.testing import CliRunner

from loop.cli import app
from loop.critics import EXPLANATIONS
from tiny_model import scripted_run, tiny_task_yaml

TASK = tiny_task_yaml(critics=["verifier_feedback", "taxonomy"])
SETTINGS = ["--rounds", "1", "--set", "select.prompts_per_round=16", "--set", "generate.n=2",
            "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
            "--set", "evaluate.problems=10", "--set", "evaluate.max_new_tokens=6"]


def _run(tmp_path, *extra, task_text=TASK):
    result, conn = scripted_run(tmp_path, *SETTINGS, *extra, task_text=task_text)
    assert result.exit_code == 0, result.output
    return conn, result.output


def _train(conn):
    attempts = {r["id"]: dict(r) for r in conn.execute(
        "select * from attempts where purpose = 'train'")}
    passed = {r["attempt_id"]: bool(r["passed"]) for r in conn.execute("select * from verdicts")}
    return attempts, passed


def _critiqued(conn, critic):
    """attempt id -> number of critiques from `critic`."""
    return Counter(r[0] for r in conn.execute("select attempt_id from critiques where critic = ?",
                                              [critic]))


def test_refine_chains_budget_critiques_and_taxonomy(tmp_path):
    conn, _ = _run(tmp_path, "--set", "refine.depth=2", "--set", "refine.budget=30")
    attempts, passed = _train(conn)
    first = [a for a in attempts.values() if a["depth"] == 0]
    by_depth = {d: [a for a in attempts.values() if a["depth"] == d] for d in (1, 2)}
    repairs = by_depth[1] + by_depth[2]
    assert len(first) == 32 and len(attempts) == 32 + len(repairs)
    failed_first = [a for a in first if not passed[a["id"]]]
    failed_1 = [a for a in by_depth[1] if not passed[a["id"]]]
    # every failure is repaired, turn by turn, until the budget of 30 extra samples is spent
    assert len(by_depth[1]) == min(30, len(failed_first)) > 0
    assert len(by_depth[2]) == min(30 - len(by_depth[1]), len(failed_1)) > 0
    assert not [a for a in attempts.values() if a["depth"] > 2]
    assert len(repairs) <= 30
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
    # verifier_feedback explained exactly the repaired answers, once each; taxonomy classified
    # every failed answer once: in refine the ones it repaired, in mistakes the rest
    parents = {r["parent_id"] for r in repairs}
    assert _critiqued(conn, "verifier_feedback") == Counter(parents)
    failed = {i for i, a in attempts.items() if not passed[i]}
    assert _critiqued(conn, "taxonomy") == Counter(failed)
    assert {r[0] for r in conn.execute("select distinct critic from critiques")} == {
        "verifier_feedback", "taxonomy"}
    stats = json.loads(conn.execute("select stages_json from rounds where idx = 1").fetchone()[0])
    repaired = sum(passed[a["id"]] for a in repairs)
    assert stats["refine"]["count"] == len(repairs) and stats["refine"]["repaired"] == repaired
    assert stats["refine"]["critiques"] == 2 * len(repairs)
    assert stats["refine"]["turns"] == [
        {"depth": 1, "attempts": len(by_depth[1]),
         "repaired": sum(passed[a["id"]] for a in by_depth[1])},
        {"depth": 2, "attempts": len(by_depth[2]),
         "repaired": sum(passed[a["id"]] for a in by_depth[2])}]
    shown = json.loads(CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "loop.db"),
                                                "--json"]).output)
    assert shown["rounds"][1]["train"]["repairs"] == len(repairs)
    assert shown["rounds"][1]["train"]["repaired"] == repaired
    table = CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "loop.db")]).output
    assert "repaired" in table and f"{repaired}/{len(repairs)}" in table
    # the mistake log is keyed by the taxonomy's kinds: one row per (task, kind), counting the
    # failed answers (repairs included) of that kind
    kinds = {r[0]: r[1] for r in conn.execute(
        "select attempt_id, kind from critiques where critic = 'taxonomy'")}
    expected = Counter((attempts[i]["task_id"], kinds[i]) for i in failed)
    stored = {(r["task_id"], r["kind"]): r["occurrences"] for r in conn.execute(
        "select * from mistakes")}
    assert stored == dict(expected)
    assert set(kinds.values()) <= set(EXPLANATIONS) and len(set(kinds.values())) >= 3


def test_no_refinement_with_zero_budget(tmp_path):
    conn, _ = _run(tmp_path, "--set", "refine.depth=2", "--set", "refine.budget=0")
    attempts, passed = _train(conn)
    assert len(attempts) == 32 and all(a["depth"] == 0 for a in attempts.values())
    stats = json.loads(conn.execute("select stages_json from rounds where idx = 1").fetchone()[0])
    assert stats["refine"]["count"] == 0 and stats["refine"]["model_seconds"] == 0.0
    # failures the refine stage did not reach are still classified for the mistake log
    failed = [i for i in attempts if not passed[i]]
    assert failed and _critiqued(conn, "taxonomy") == Counter(failed)
    assert _critiqued(conn, "verifier_feedback") == Counter()


def test_no_refinement_by_default(tmp_path):
    conn, _ = _run(tmp_path)
    assert conn.execute("select count(*) from attempts where depth > 0").fetchone()[0] == 0


def test_round_two_replays_open_mistakes(tmp_path):
    conn, _ = _run(tmp_path, "--rounds", "2", "--set", "select.replay_share=0.5")
    stages = {r["idx"]: json.loads(r["stages_json"]) for r in conn.execute("select * from rounds")}
    replayed = stages[2]["select"]["replayed"]
    assert len(replayed) == 8 and stages[1]["select"]["replayed"] == []
    round1 = set(stages[1]["select"]["task_ids"])
    assert set(replayed) <= round1  # replayed tasks are round-1 tasks ...
    failed = {r[0] for r in conn.execute(
        "select a.task_id from attempts a join verdicts v on v.attempt_id = a.id "
        "where a.round_idx = 1 and a.purpose = 'train' and v.passed = 0")}
    assert set(replayed) <= failed  # ... that had mistakes
    assert stages[2]["select"]["task_ids"][:8] == replayed
    fresh = stages[2]["select"]["task_ids"][8:]
    assert len(fresh) == 8 and not set(fresh) & round1
    attempted = Counter(r[0] for r in conn.execute(
        "select task_id from attempts where round_idx = 2 and purpose = 'train'"))
    assert attempted == Counter({t: 2 for t in stages[2]["select"]["task_ids"]})
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


def test_a_failing_critic_is_reported_and_the_repairs_go_on(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text(BROKEN_CRITIC)
    conn, output = _run(tmp_path, "--set", "refine.depth=1", "--set", "refine.budget=5",
                        task_text=TASK.replace("[verifier_feedback, taxonomy]",
                                               "[broken, taxonomy]"))
    said = " ".join(output.split())  # rich wraps long lines
    assert ("critic 'broken' (plugin file:broken.py) failed: raised RuntimeError: critic bug; "
            "no critique from it") in said
    assert conn.execute("select count(*) from attempts where depth = 1").fetchone()[0] == 5
    critics = {r[0] for r in conn.execute("select distinct critic from critiques")}
    assert critics == {"taxonomy"}
    attempts, passed = _train(conn)
    assert _critiqued(conn, "taxonomy") == Counter(i for i in attempts if not passed[i])
