"""`loop logs` and `loop mistakes` on a hand-made store: filters, refinement trees, the mistake
log's open / recurring / resolved rows, and the JSON shapes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.schema import Attempt, Critique, Task, Verdict


def _attempt(run, idx, task, i, text, parent=None, depth=0, purpose="train"):
    return Attempt(id=f"{run}-{idx}-{task.id[:4]}-{i}-{depth}", run_id=run, round_index=idx,
                   task_id=task.id, purpose=purpose, sample_index=i, parent_id=parent,
                   depth=depth, messages=[], completion=text)


@pytest.fixture
def db(store, tmp_path):
    store.create_run(run_id="run-a", name="first", task="t", model="m", config={}, seed=0,
                     rounds_planned=2, versions={}, git_sha=None, run_dir=str(tmp_path))
    store.create_run(run_id="run-b", name="latest", task="t", model="m", config={}, seed=0,
                     rounds_planned=1, versions={}, git_sha=None, run_dir=str(tmp_path))
    add = Task(source="t", split="train", prompt=[{"role": "user", "content": "What is 2+3?"}],
               reference="5")
    mul = Task(source="t", split="train", prompt=[{"role": "user", "content": "What is 4*4?"}],
               reference="16")
    store.upsert_tasks([add, mul])
    for idx in (1, 2):
        store.ensure_round("run-a", idx, None)
    store.ensure_round("run-b", 1, None)
    wrong = _attempt("run-a", 1, add, 0, "2+3 = 6")
    fixed = _attempt("run-a", 1, add, 0, "2+3 = 5", parent=wrong.id, depth=1)
    sq_wrong = _attempt("run-a", 1, mul, 0, "4*4 = 8")
    sq_again = _attempt("run-a", 2, mul, 0, "4*4 = 12")
    add_right = _attempt("run-a", 2, add, 0, "The answer is 5")
    other = _attempt("run-b", 1, add, 0, "five")
    store.insert_attempts([wrong, fixed, sq_wrong, sq_again, add_right, other])

    def verdict(a, passed, feedback=""):
        return (a.id, "math", Verdict(passed=passed, score=float(passed), feedback=feedback,
                                      mistake=None if passed else "wrong_answer"), 0.0)

    store.insert_verdicts([verdict(wrong, False, "expected 5, got 6"), verdict(fixed, True),
                           verdict(sq_wrong, False, "expected 16, got 8"),
                           verdict(sq_again, False, "expected 16, got 12"),
                           verdict(add_right, True), verdict(other, False, "no number")])
    store.insert_rewards([(wrong.id, "binary", 0.0), (fixed.id, "binary", 1.0)])
    store.insert_critiques([(sq_wrong.id, Critique(kind="wrong_operation", critic="taxonomy",
                                                   text="You added instead of multiplying."))])
    store.update_mistakes("run-a", 1, {(add.id, "wrong_answer"): (wrong.id, "expected 5, got 6", 1),
                                       (mul.id, "wrong_answer"): (sq_wrong.id, "expected 16, got 8", 1)},
                          set())
    store.update_mistakes("run-a", 2, {(mul.id, "wrong_answer"): (sq_again.id, "expected 16, got 12", 1)},
                          {add.id})
    return str(tmp_path / "t.db")


def _json(*args):
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_logs_default_to_the_latest_run_and_show_verdicts(db):
    rows = _json("logs", "--db", db)
    assert [r["completion"] for r in rows] == ["five"]  # run-b is the latest
    assert rows[0]["verdicts"]["math"] == {"passed": False, "score": 0.0, "error_kind": None,
                                           "mistake": "wrong_answer", "feedback": "no number",
                                           "details": {}}


def test_logs_filters(db):
    every = _json("logs", "first", "--db", db, "-n", "0")
    assert [(r["round"], r["completion"]) for r in every][:2] == [(2, "The answer is 5"),
                                                                  (2, "4*4 = 12")]
    assert len(every) == 5
    assert [r["completion"] for r in _json("logs", "first", "--db", db, "--passed", "-n", "0")] \
        == ["The answer is 5", "2+3 = 5"]
    failed = _json("logs", "first", "--db", db, "--failed", "--round", "1", "-n", "0")
    assert sorted(r["completion"] for r in failed) == ["2+3 = 6", "4*4 = 8"]
    found = _json("logs", "first", "--db", db, "-q", "GOT 8")  # feedback text, any case
    assert [r["completion"] for r in found] == ["4*4 = 8"]
    assert len(_json("logs", "first", "--db", db, "-n", "2")) == 2
    task = every[-1]["task_id"]
    assert {r["task_id"] for r in _json("logs", "first", "--db", db, "--task", task[:8])} == {task}
    assert _json("logs", "first", "--db", db, "-q", "100%") == []  # LIKE wildcards are literal


def test_logs_tree_shows_the_repair_under_the_answer_it_repairs(db):
    rows = _json("logs", "first", "--db", db, "--failed", "--round", "1", "-q", "got 6", "--tree")
    assert [(r["completion"], r["depth"]) for r in rows] == [("2+3 = 6", 0), ("2+3 = 5", 1)]
    assert rows[1]["parent_id"] == rows[0]["id"] and rows[1]["passed"]
    assert rows[0]["critiques"] == []
    square = _json("logs", "first", "--db", db, "-q", "4*4 = 8")[0]
    assert square["critiques"] == [{"kind": "wrong_operation", "critic": "taxonomy",
                                    "text": "You added instead of multiplying."}]
    text = CliRunner().invoke(app, ["logs", "first", "--db", db, "--round", "1", "--tree"]).output
    assert text.index("2+3 = 6") < text.index("repairs") < text.index("2+3 = 5")


def test_mistakes_open_recurring_resolved(db):
    rows = _json("mistakes", "first", "--db", db)
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt["What is 2+3?"]["resolved_round"] == 2  # solved in round 2
    square = by_prompt["What is 4*4?"]
    assert (square["first_round"], square["last_round"], square["occurrences"],
            square["resolved_round"]) == (1, 2, 2, None)
    assert square["last_feedback"] == "expected 16, got 12"
    assert [r["prompt"] for r in _json("mistakes", "first", "--db", db, "--open")] == ["What is 4*4?"]
    assert [r["prompt"] for r in _json("mistakes", "first", "--db", db, "--recurring")] == \
        ["What is 4*4?"]
    assert len(_json("mistakes", "first", "--db", db, "--kind", "format")) == 0
    assert [r["prompt"] for r in _json("mistakes", "first", "--db", db, "-q", "got 6")] == \
        ["What is 2+3?"]
    # full-text search over the critiques of the task's attempts
    assert [r["prompt"] for r in _json("mistakes", "first", "--db", db, "-q", "multiplying")] == \
        ["What is 4*4?"]
    assert _json("mistakes", "first", "--db", db, "-q", 'NOT "or') == []  # FTS syntax is escaped
    table = CliRunner().invoke(app, ["mistakes", "first", "--db", db]).output
    assert "2 mistakes, 1 open" in table and "1–2" in table


def test_logs_search_and_filter_by_mistake_kind(db):
    wrong = _json("logs", "first", "--db", db, "-q", "wrong_ans", "-n", "0")
    assert sorted(r["completion"] for r in wrong) == ["2+3 = 6", "4*4 = 12", "4*4 = 8"]
    critiqued = _json("logs", "first", "--db", db, "-q", "wrong_operation", "-n", "0")
    assert [r["completion"] for r in critiqued] == ["4*4 = 8"]  # a critique's kind
    assert sorted(r["completion"] for r in _json("logs", "first", "--db", db, "--mistake",
                                                  "wrong_answer", "-n", "0")) == \
        ["2+3 = 6", "4*4 = 12", "4*4 = 8"]
    assert [r["completion"] for r in _json("logs", "first", "--db", db, "--mistake",
                                           "wrong_operation")] == ["4*4 = 8"]
    assert _json("logs", "first", "--db", db, "--mistake", "format") == []


def test_mistakes_header_counts_the_filtered_set_and_the_shown_rows(db):
    def title(*args):
        result = CliRunner().invoke(app, ["mistakes", "first", "--db", db, *args])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "the 1 most frequent (1 open) of 2 mistakes, 1 open" in title("-n", "1")
    assert "the 1 most frequent of 1 open mistake" not in title("--open", "-n", "1")
    assert "1 open mistake " in title("--open", "-n", "1") + " "
    assert "2 mistakes of kind wrong_answer, 1 open" in title("--kind", "wrong_answer", "-n", "3")
    assert "0 mistakes of kind format, 0 open" in title("--kind", "format")


def test_unknown_run_and_conflicting_flags_are_one_line_errors(db):
    result = CliRunner().invoke(app, ["logs", "nope", "--db", db])
    assert result.exit_code == 1 and "no run 'nope'" in result.output
    result = CliRunner().invoke(app, ["logs", "--failed", "--passed", "--db", db])
    assert result.exit_code == 1 and "exclude each other" in result.output
