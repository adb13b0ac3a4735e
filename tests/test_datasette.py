"""The store people can question: the views (m005) on a hand-made store whose answers are known,
the cached round counts behind `loop show` and `accuracy_per_round`, and the real Datasette
server (`loop datasette`) on a store written by a real `loop run` on the doubles (the parity
scripted backend and the noop updater, tests/scripted_runs.py, whose verdicts follow a rule):
every canned query over the JSON API gives the rows its SQL gives directly, the views give what
the rule gives, and every table and view is described."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.datasette import canned_queries, database_name, metadata, query_parameters
from loop.schema import Attempt, Critique, Task, Verdict
from scripted_runs import expected_counts, question_of, right, scripted_run
from tiny_model import tiny_task_yaml

REPO = Path(__file__).resolve().parent.parent


# ----- views on a hand-made store ---------------------------------------------------------------

def _task(text: str, reference: str, split: str = "train") -> Task:
    return Task(source="t", split=split, prompt=[{"role": "user", "content": text}],
                reference=reference)


def _attempt(idx, task, i, text, parent=None, depth=0, purpose="train"):
    return Attempt(id=Attempt.make_id("run-a", idx, task.id, purpose, i, parent), run_id="run-a",
                   round_index=idx, task_id=task.id, purpose=purpose, sample_index=i,
                   parent_id=parent, depth=depth, messages=[], completion=text,
                   finish_reason="length" if text.endswith("...") else "stop")


def _verdict(attempt, passed, feedback="", kind=None):
    return (attempt.id, "math", Verdict(passed=passed, score=float(passed), feedback=feedback,
                                        error_kind=kind or (None if passed else "model"),
                                        mistake=None if passed or kind else "wrong_answer"), 1.0)


@pytest.fixture
def made(store, tmp_path):
    """run-a: round 0 (evaluation), rounds 1 and 2 (train + evaluation), every round done.

    Train: round 1 asks 2+3 (two samples: wrong, then cut off; the wrong one is repaired and
    the repair passes) and 4*4 (right); round 2 asks 4*4 (wrong) and 2+3 (the checker broke:
    infra, reward NULL). Both mistakes stay open (2+3's was seen in the round it was repaired).
    Held-out: 7+1 is solved in rounds 0 and 1 and failed in round 2 (a regression from 1 to 2);
    9-2 is failed in 0, solved in 1, failed in 2 (a regression from 1 to 2); 6*6 is failed in 0
    and solved in 1 and 2 (no regression)."""
    store.create_run(run_id="run-a", name="first", task="t", model="m", config={}, seed=0,
                     rounds_planned=2, versions={}, git_sha=None, run_dir=str(tmp_path))
    add, square = _task("What is 2+3?", "5"), _task("What is 4*4?", "16")
    held = {"7+1": _task("What is 7+1?", "8", "eval"), "9-2": _task("What is 9-2?", "7", "eval"),
            "6*6": _task("What is 6*6?", "36", "eval")}
    store.upsert_tasks([add, square, *held.values()])
    outcomes = {"7+1": (1, 1, 0), "9-2": (0, 1, 0), "6*6": (0, 1, 1)}
    for idx in (0, 1, 2):
        store.ensure_round("run-a", idx, None)
        evals = [_attempt(idx, t, 0, f"answer {idx}", purpose="eval") for t in held.values()]
        store.insert_attempts(evals)
        store.insert_verdicts([_verdict(a, bool(outcomes[k][idx]),
                                        "" if outcomes[k][idx] else "expected x, got y")
                               for k, a in zip(held, evals)])
        store.record_evaluation("run-a", idx, "eval", 3, sum(o[idx] for o in outcomes.values()),
                                0, 2.0, 1.0)
    wrong, cut = _attempt(1, add, 0, "2+3 = 6"), _attempt(1, add, 1, "Let me think...")
    repair = _attempt(1, add, 0, "2+3 = 5", parent=wrong.id, depth=1)
    right = _attempt(1, square, 0, "16")
    again, broken = _attempt(2, square, 0, "8"), _attempt(2, add, 0, "5")
    store.insert_attempts([wrong, cut, repair, right, again, broken])
    store.insert_verdicts([_verdict(wrong, False, "expected 5, got 6"),
                           _verdict(cut, False, "no final answer found"), _verdict(repair, True),
                           _verdict(right, True), _verdict(again, False, "expected 16, got 8"),
                           _verdict(broken, False, "math verifier failed: boom", kind="infra")])
    store.insert_rewards([(wrong.id, "binary", 0.0), (cut.id, "binary", 0.0),
                          (repair.id, "binary", 1.0), (repair.id, "short", 0.5),
                          (right.id, "binary", 1.0), (again.id, "binary", 0.0),
                          (broken.id, "binary", None)])
    store.insert_critiques([(wrong.id, Critique(kind="off_by_one", critic="taxonomy",
                                                text="Your final answer is off by one.")),
                            (wrong.id, Critique(kind="wrong_answer", critic="verifier_feedback",
                                                text="The checker says: expected 5, got 6."))])
    store.update_mistakes("run-a", 1, {(add.id, "off_by_one"): (wrong.id, "expected 5, got 6", 1)},
                          {add.id, square.id})
    store.update_mistakes("run-a", 2, {(square.id, "wrong_answer"): (again.id, "expected 16, got 8",
                                                                      1)}, set())
    for idx in (0, 1, 2):
        with store.transaction():
            store.mark_stage("run-a", idx, "done", {})
    return {"add": add, "square": square, "held": held, "wrong": wrong, "cut": cut,
            "repair": repair, "right": right, "again": again, "broken": broken}


def _rows(store, sql, params=()):
    return [dict(r) for r in store.db.query(sql, params)]


def test_attempt_results_joins_verdict_reward_and_task(store, made):
    rows = {r["attempt_id"]: r for r in _rows(store, "select * from attempt_results")}
    repair = rows[made["repair"].id]
    assert (repair["passed"], repair["score"], repair["reward"]) == (1, 1.0, 1.5)
    assert repair["depth"] == 1
    assert json.loads(repair["rewards_json"]) == {"binary": 1.0, "short": 0.5}
    assert repair["prompt"] == "What is 2+3?" and repair["reference"] == "5"
    assert repair["parent_id"] == made["wrong"].id and repair["split"] == "train"
    wrong = rows[made["wrong"].id]
    assert (wrong["passed"], wrong["mistake"], wrong["feedback"]) == (0, "wrong_answer",
                                                                     "math: expected 5, got 6")
    broken = rows[made["broken"].id]
    assert broken["passed"] == 0 and broken["error_kind"] == "infra" and broken["reward"] is None
    assert len(rows) == 6 + 9


def test_repaired_attempts_lists_passing_repairs_with_what_the_model_read(store, made):
    rows = _rows(store, "select * from repaired_attempts")
    assert len(rows) == 1
    row = rows[0]
    assert (row["original_attempt_id"], row["repair_attempt_id"]) == (made["wrong"].id,
                                                                      made["repair"].id)
    assert (row["original_completion"], row["repair_completion"]) == ("2+3 = 6", "2+3 = 5")
    assert row["original_feedback"] == "expected 5, got 6"
    assert "taxonomy (off_by_one): Your final answer is off by one." in row["critiques"]
    assert "verifier_feedback (wrong_answer)" in row["critiques"]


def test_regressions_are_solved_then_failed_in_the_next_round(store, made):
    rows = _rows(store, "select * from regressions order by solved_round, task_id")
    held = made["held"]
    got = sorted((r["task_id"], r["solved_round"], r["failed_round"]) for r in rows)
    assert got == sorted([(held["7+1"].id, 1, 2), (held["9-2"].id, 1, 2)])
    assert {r["prompt"] for r in rows} == {"What is 7+1?", "What is 9-2?"}
    assert all(r["failed_feedback"] == "expected x, got y" for r in rows)


def test_accuracy_per_round(store, made):
    rows = _rows(store, "select * from accuracy_per_round")
    assert [(r["round_idx"], r["eval_passed"], r["eval_n"]) for r in rows] == [(0, 1, 3), (1, 3, 3),
                                                                              (2, 1, 3)]
    one, two = rows[1], rows[2]
    # round 1: 2 prompts, both solved (2+3 by its repair); 4 attempts, 2 passed
    assert (one["train_prompts"], one["train_solved_prompts"], one["train_solve_rate"]) == \
        (2, 2, 1.0)
    assert (one["train_attempts"], one["train_passed"], one["train_pass_rate"]) == (4, 2, 0.5)
    assert (two["train_solved_prompts"], two["train_passed"], two["train_solve_rate"]) == \
        (0, 0, 0.0)
    assert rows[0]["train_prompts"] == 0 and rows[0]["train_solve_rate"] is None
    assert one["run_name"] == "first" and one["stage"] == "done"


def test_finished_rounds_are_counted_once_then_read_from_the_cache(store, made):
    from loop.summary import run_summary

    live = _rows(store, "select * from accuracy_per_round")
    assert all(r["summary_json"] is None for r in store.rounds("run-a"))
    shown = run_summary(store, store.get_run("run-a"))
    assert all(json.loads(r["summary_json"])["train"] for r in store.rounds("run-a"))
    assert _rows(store, "select * from accuracy_per_round") == live  # the cache gives the same
    old = store.train_counts("run-a")  # the whole-run count, as `loop show` used to do it
    for r in shown["rounds"][1:]:
        expected = old[r["index"]]
        assert r["train"]["prompts"] == expected["prompts"]
        assert r["train"]["solved_prompts"] == expected["solved_prompts"]
        assert r["train"]["passed"] == expected["passed"]
        assert r["train"]["truncated_share"] == expected["truncated"] / expected["attempts"]
    # one infra verdict, whose reward is the NULL the contract asks for: no reward error
    assert shown["rounds"][2]["errors"] == {"verifier": 1, "reward": 0, "reward_by_function": {},
                                            "null_rewards": 1}

    # The cache is what is read: doctor it, and both readers show the doctored figure ...
    row = store.get_round("run-a", 1)
    doctored = json.loads(row["summary_json"])
    doctored["train"]["solved_prompts"] = 99
    store.db.execute("update rounds set summary_json = ? where id = ?",
                     [json.dumps(doctored), row["id"]])
    assert run_summary(store, store.get_run("run-a"))["rounds"][1]["train"]["solved_prompts"] == 99
    assert _rows(store, "select train_solved_prompts from accuracy_per_round "
                        "where round_idx = 1")[0]["train_solved_prompts"] == 99
    # ... until the round is redone (it finishes at another time): then it is counted again.
    store.db.execute("update rounds set finished = '2099-01-01' where id = ?", [row["id"]])
    assert _rows(store, "select train_solved_prompts from accuracy_per_round "
                        "where round_idx = 1")[0]["train_solved_prompts"] == 2
    assert run_summary(store, store.get_run("run-a"))["rounds"][1]["train"]["solved_prompts"] == 2
    assert json.loads(store.get_round("run-a", 1)["summary_json"])["finished"] == "2099-01-01"


def test_unfinished_rounds_are_counted_live_and_not_cached(store, made):
    from loop.summary import round_summary

    store.db.execute("update rounds set stage = 'mistakes', finished = null where idx = 2")
    summary = round_summary(store, "run-a", 2)
    assert summary["train"]["attempts"] == 2 and summary["stage"] == "mistakes"
    assert store.get_round("run-a", 2)["summary_json"] is None


def test_a_store_from_before_m005_is_upgraded_on_open(tmp_path):
    """The views and indexes arrive with the next open; rows, and the old view's columns, stay."""
    from sqlite_utils import Database

    from loop.migrations import migrations
    from loop.store import Store, open_db

    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m005_read_side_indexes_and_views")
    assert "regressions" not in old.view_names()
    before = Store(old)
    before.create_run(run_id="r", name="old", task="t", model="m", config={}, seed=0,
                      rounds_planned=1, versions={}, git_sha=None, run_dir="x")
    task = _task("What is 1+1?", "2")
    before.upsert_tasks([task])
    before.ensure_round("r", 1, None)
    # the row as the store of that time wrote it (today's Store writes today's columns)
    old["attempts"].insert({"id": "a1", "run_id": "r", "round_idx": 1, "task_id": task.id,
                            "purpose": "train", "sample_index": 0, "depth": 0,
                            "messages_json": "[]", "completion": "2", "token_ids_json": "[]",
                            "prompt_tokens": 1, "completion_tokens": 1,
                            "finish_reason": "stop", "logprobs_json": "[-0.5]"})
    before.insert_verdicts([("a1", "math", Verdict(passed=True, score=1.0), 1.0)])
    old_columns = [c.name for c in old["accuracy_per_round"].columns]
    old.conn.close()

    db = open_db(path)
    assert {"attempt_results", "accuracy_per_round", "open_mistakes", "repaired_attempts",
            "regressions"} <= set(db.view_names())
    indexes = {i.name for i in db["attempts"].indexes}
    assert "idx_attempts_newest_first" in indexes
    assert "idx_attempts_run_id_round_idx_purpose" not in indexes  # superseded by the new one
    row = next(db.query("select * from accuracy_per_round"))
    assert set(old_columns) <= set(row)  # columns were added, none taken away
    assert (row["train_attempts"], row["train_passed"], row["train_pass_rate"]) == (1, 1, 1.0)
    assert next(db.query("select passed from attempt_results"))["passed"] == 1
    assert Store(db).attempts("r", 1, "train")[0].logprobs == [-0.5]  # read from the old column


def _canned(store, name, **params):
    sql = canned_queries()[name]["sql"]
    return _rows(store, sql, {p: params.get(p, "") for p in query_parameters(sql)})


def test_canned_queries_on_the_hand_made_store(store, made):
    store.create_run(run_id="run-b", name="other", task="t", model="m", config={}, seed=0,
                     rounds_planned=0, versions={}, git_sha=None, run_dir="x")
    store.ensure_round("run-b", 0, None)
    accuracy = _canned(store, "round_accuracy")
    assert [(r["run_name"], r["round_idx"]) for r in accuracy] == [
        ("first", 0), ("first", 1), ("first", 2), ("other", 0)]
    for run in ("first", "run-a"):  # by name or id
        assert [r["round_idx"] for r in _canned(store, "round_accuracy", run=run)] == [0, 1, 2]
    assert _canned(store, "round_accuracy", run="other")[0]["eval_pass_at_1"] is None
    mistakes = _canned(store, "top_open_mistakes", run="first")
    assert [(r["kind"], r["prompt"], r["last_round"]) for r in mistakes] == [
        ("wrong_answer", "What is 4*4?", 2), ("off_by_one", "What is 2+3?", 1)]
    assert [r["kind"] for r in _canned(store, "top_open_mistakes", kind="wrong_answer")] == \
        ["wrong_answer"]
    store.update_mistakes("run-a", 3, {}, {made["square"].id})  # a later pass resolves it
    assert [r["kind"] for r in _canned(store, "top_open_mistakes")] == ["off_by_one"]
    assert _canned(store, "top_open_mistakes", run="other") == []
    repairs = _canned(store, "successful_repairs", run="first")
    assert [r["repair_completion"] for r in repairs] == ["2+3 = 5"]
    assert _canned(store, "successful_repairs", run="other") == []
    assert len(_canned(store, "eval_regressions")) == 2
    assert len(_canned(store, "eval_regressions", limit="1")) == 1  # Datasette sends text
    assert [r["task_id"] for r in _canned(store, "eval_regressions")] == sorted(
        [made["held"]["7+1"].id, made["held"]["9-2"].id])


def test_datasette_without_a_store_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["datasette", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no store at" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "none.db").exists()


def test_datasette_not_installed_is_a_one_line_error(store, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "datasette" else real(name, *a))
    db = store.db.execute("pragma database_list").fetchone()[2]
    result = CliRunner().invoke(app, ["datasette", "--db", db])
    assert result.exit_code == 1
    assert result.output.strip() == "error: datasette is not installed: pip install datasette"


def test_metadata_is_renamed_to_the_file_served(tmp_path):
    from loop.datasette import metadata_for

    renamed = metadata_for(tmp_path / "my-runs.db")
    assert list(renamed["databases"]) == ["my-runs"]
    assert renamed["databases"]["my-runs"] == metadata()["databases"]["loop"]


# ----- the real server on a real run ------------------------------------------------------------

RUN_SETTINGS = [
    "--rounds", "2", "--set", "refine.depth=2", "--set", "refine.budget=40",
    "--set", "select.prompts_per_round=16", "--set", "generate.n=4",
    "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=30",
    "--set", "evaluate.max_new_tokens=6",
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
    env.update(LOOP_LOAD_PLUGINS="hf,math,trl,code", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A store written by `loop run` on the doubles (the parity backend and the noop updater,
    tests/scripted_runs.py): 2 rounds, critics and repairs."""
    folder = tmp_path_factory.mktemp("datasette")
    task = folder / "task.yaml"
    task.write_text(tiny_task_yaml(train_size=200, eval_size=60,
                                   critics=["verifier_feedback", "taxonomy"]))
    db = folder / "loop.db"
    scripted_run(folder, [task, "--name", "ds", "--db", db, *RUN_SETTINGS])
    return db


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(real_store):
    """`loop datasette --db STORE --port P`, the real command, until the module's tests end."""
    port = _free_port()
    log = real_store.with_name("datasette.log")
    with open(log, "wb") as out:  # a file, not a pipe nobody reads: access logs must not block
        process = subprocess.Popen(
            [sys.executable, "-m", "loop.cli", "datasette", "--db", str(real_store), "--port",
             str(port)], env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            _get(f"{base}/-/versions.json")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail(f"datasette did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield base
    os.killpg(process.pid, signal.SIGTERM)  # its own process group: `loop` and datasette
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _direct(db: Path, sql: str, params: dict) -> list[dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


@pytest.mark.slow
def test_every_canned_query_over_the_json_api_gives_what_its_sql_gives(server, real_store):
    name = database_name(real_store)
    run_id = _direct(real_store, "select id from runs", {})[0]["id"]
    seen = {}
    for query, spec in canned_queries().items():
        names = query_parameters(spec["sql"])
        for params in ({}, {"run": "ds"}, {"run": run_id}, {"run": "no-such-run"},
                       *([{"run": "ds", "limit": "2"}] if "limit" in names else [])):
            values = {p: params.get(p, "") for p in names}
            url = (f"{server}/{name}/{query}.json?"
                   + urllib.parse.urlencode({**params, "_shape": "array"}))
            got = _get(url)
            assert got == _direct(real_store, spec["sql"], values), (query, params)
            if params.get("run") == "no-such-run":
                assert got == [], query
            if "limit" in params:
                assert len(got) <= 2, query
            seen.setdefault(query, len(got))
    accuracy = _get(f"{server}/{name}/round_accuracy.json?_shape=array")
    assert [r["round_idx"] for r in accuracy] == [0, 1, 2]
    assert seen["top_open_mistakes"] > 0  # a weak model leaves mistakes open


@pytest.mark.slow
def test_accuracy_and_regressions_agree_with_the_run(server, real_store):
    name = database_name(real_store)
    shown = json.loads(subprocess.run(
        [sys.executable, "-m", "loop.cli", "show", "ds", "--db", str(real_store), "--json"],
        env=_env(), capture_output=True, text=True, check=True).stdout)
    accuracy = _get(f"{server}/{name}/round_accuracy.json?_shape=array")
    for row, summary in zip(accuracy, shown["rounds"], strict=True):
        assert row["eval_pass_at_1"] == summary["eval"]["pass_at_1"]
        assert row["train_prompts"] == summary["train"]["prompts"]
        assert row["train_solved_prompts"] == summary["train"]["solved_prompts"]
        assert row["train_passed"] == summary["train"]["passed"]
    # regressions, recomputed here from the held-out verdicts
    passed: dict[tuple[str, int], bool] = {}
    for r in _direct(real_store, "select a.task_id, a.round_idx, min(v.passed) as ok from "
                                 "attempts a join verdicts v on v.attempt_id = a.id where "
                                 "a.purpose = 'eval' group by a.id", {}):
        passed[(r["task_id"], r["round_idx"])] = bool(r["ok"])
    expected = sorted((task, k) for (task, k), ok in passed.items()
                      if ok and passed.get((task, k + 1)) is False)
    got = _get(f"{server}/{name}/eval_regressions.json?_shape=array")
    assert sorted((r["task_id"], r["solved_round"]) for r in got) == expected
    # and from the parity rule alone: a held-out problem is solved in round g when a + g is even,
    # so each regresses once: from round 0 to 1 (even a) or from round 1 to 2 (odd a)
    held_out = _direct(real_store, "select distinct t.id, t.prompt_json from tasks t join "
                                   "attempts a on a.task_id = t.id where a.purpose = 'eval'", {})
    assert len(held_out) == 30
    by_rule = sorted((t["id"], 0 if right(question_of(t["prompt_json"]), 0, 0) else 1)
                     for t in held_out)
    assert sorted((r["task_id"], r["solved_round"]) for r in got) == by_rule
    counts = expected_counts(real_store, "ds")
    assert [(r["eval_pass_at_1"], r["eval_n"]) for r in accuracy] == [
        (counts[idx]["eval_passed"] / 30, 30) for idx in (0, 1, 2)]
    assert [r["train_solved_prompts"] for r in accuracy] == [counts[idx]["solved"]
                                                            for idx in (0, 1, 2)]
    assert [r["train_passed"] for r in accuracy] == [counts[idx]["passed"] for idx in (0, 1, 2)]
    # repairs, recomputed here: repairs every verifier passed
    repairs = _direct(real_store, "select a.id from attempts a where a.parent_id is not null and "
                                  "not exists (select 1 from verdicts v where v.attempt_id = a.id "
                                  "and v.passed = 0)", {})
    got = _get(f"{server}/{name}/successful_repairs.json?_shape=array")
    assert sorted(r["repair_attempt_id"] for r in got) == sorted(r["id"] for r in repairs)


@pytest.mark.slow
def test_metadata_describes_every_table_and_view(server, real_store):
    served = _get(f"{server}/-/metadata.json")
    tables = served["databases"][database_name(real_store)]["tables"]
    names = [r["name"] for r in _direct(
        real_store, "select name from sqlite_master where type in ('table', 'view') and name "
                    "not like '%\\_fts%' escape '\\' and name not like 'sqlite\\_%' escape "
                    "'\\' and name != '_sqlite_migrations'", {})]
    assert {"attempts", "verdicts", "accuracy_per_round", "regressions"} <= set(names)
    for table in names:
        assert tables[table]["description"], table
        columns = [r["name"] for r in _direct(real_store, f"pragma table_info('{table}')", {})]
        assert set(tables[table]["columns"]) == set(columns), table
    assert set(served["databases"][database_name(real_store)]["queries"]) == set(canned_queries())
    # the HTML page of a table shows its description
    with urllib.request.urlopen(f"{server}/{database_name(real_store)}/mistakes") as page:
        assert metadata()["databases"]["loop"]["tables"]["mistakes"]["description"] in \
            page.read().decode()
