"""`loop run rg:<dataset>` end to end: reasoning-gym's questions, the `reasoning_gym` verifier in
the engine, rewards, the train stage (the noop updater) and evaluation.

The answers come from a scripted backend that knows every question's reference: right in
<answer> tags for some questions, wrong in tags for others, without tags for the second sample.
What is checked is that every attempt got the verdict that rule gives, that each verdict's score
is what reasoning-gym's own score_answer gives for the stored completion, and that the stored
splits are disjoint and come back the same from the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import reasoning_gym
import sqlite_utils
from reasoning_gym.utils import extract_answer
from typer.testing import CliRunner

from loop.cli import app
from loop import Attempt
from loop_reasoning_gym import ReasoningGymTasks, ReasoningGymVerifier, gym


DATASETS = ["basic_arithmetic", "leg_counting", "spell_backward"]
PLUGINS = "math,reasoning_gym"
OPTIONS = {"size": 24, "eval_size": 10}
SETTINGS = ["--rounds", "1", "--set", f"task.options.size={OPTIONS['size']}",
            "--set", f"task.options.eval_size={OPTIONS['eval_size']}",
            "--set", "select.prompts_per_round=12", "--set", "generate.n=2",
            "--set", "generate.max_new_tokens=200", "--set", "evaluate.max_new_tokens=200",
            "--model", "scripted-gym", "--set", "backend.name=gym-answers", "--method", "noop"]
# A scripted backend (a loose plugin file, --plugins-dir) that knows each question's reference
# and answers by `reply`: sample 0 of a question of even length right in <answer> tags, sample 0
# of the others a wrong answer in tags, sample 1 without tags (a format mistake).
BACKEND = f"""
import loop
from loop.testing import ScriptedBackend
from loop_reasoning_gym import ReasoningGymTasks

REFERENCES = {{}}


def reply(question, k):
    if not REFERENCES:
        for dataset in {DATASETS!r}:
            tasks = ReasoningGymTasks(dataset).load({OPTIONS!r}, 0)
            for task in [*tasks.train, *tasks.eval]:
                REFERENCES[task.prompt[-1]["content"]] = task.reference
    if k == 1:
        return "I am not sure."
    if len(question) % 2 == 0:
        return "<answer>" + REFERENCES[question] + "</answer>"
    return "<answer>zzz-not-it</answer>"


class GymAnswers(ScriptedBackend):
    name = "gym-answers"

    def respond(self, prompt, sample_index, sampling, options=None):
        return reply(prompt[-1]["content"], sample_index)


@loop.hookimpl
def register_backends(register):
    register(GymAnswers())
"""


def right(question: str, k: int) -> bool:
    """Whether the scripted backend's answer is right (BACKEND's rule)."""
    return k == 0 and len(question) % 2 == 0


@pytest.fixture(scope="module", params=DATASETS)
def run(request, tmp_path_factory):
    """One `loop run` on the scripted backend per dataset, shared by this module's tests:
    (dataset, store path, output)."""
    import loop.cli.common

    dataset = request.param
    folder = tmp_path_factory.mktemp(f"rg-{dataset}")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "gym_answers.py").write_text(BACKEND)
    db = folder / "store" / "loop.db"
    with pytest.MonkeyPatch.context() as mp:  # the autouse isolated_env is per test
        mp.setenv("LOOP_LOAD_PLUGINS", PLUGINS)
        mp.setenv("LOOP_DB", str(db))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(loop.cli.common, "_PM", None)
        mp.chdir(folder)
        result = CliRunner().invoke(app, ["run", f"rg:{dataset}", "--name", "rg", "--db", str(db),
                                          "--plugins-dir", str(folder / "plugins"), *SETTINGS])
    assert result.exit_code == 0, result.output
    return dataset, db, result.output


def _rows(db: Path, sql: str) -> list[dict]:
    return list(sqlite_utils.Database(db).query(sql))


def test_every_attempt_has_a_reasoning_gym_verdict(run):
    dataset, db, _ = run
    rows = _rows(db, "select a.id, a.purpose, a.sample_index, v.verifier, v.passed, "
                     "v.error_kind, v.mistake, t.prompt_json from attempts a "
                     "left join verdicts v on v.attempt_id = a.id join tasks t on t.id = a.task_id")
    assert {r["purpose"] for r in rows} == {"train", "eval"}
    assert len(rows) == 12 * 2 + 2 * 10  # 12 prompts x 2 samples; eval in rounds 0 and 1
    assert {r["verifier"] for r in rows} == {"reasoning_gym"}
    for r in rows:
        question = json.loads(r["prompt_json"])[-1]["content"]
        assert bool(r["passed"]) == right(question, r["sample_index"]), r
        if not r["passed"]:
            assert r["error_kind"] == "model"
            assert r["mistake"] == ("format" if r["sample_index"] == 1 else "wrong_answer"), r
    assert any(r["passed"] for r in rows) and not all(r["passed"] for r in rows)
    shown = json.loads(CliRunner().invoke(app, ["show", "rg", "--db", str(db), "--json"]).output)
    assert shown["run"]["task"] == f"rg:{dataset}" and shown["run"]["status"] == "finished"
    assert [r["eval"]["n"] for r in shown["rounds"]] == [10, 10]


def test_verdict_scores_are_score_answer_on_the_stored_completions(run):
    dataset, db, _ = run
    rows = _rows(db, "select a.completion, v.score, v.passed, t.prompt_json, t.metadata_json "
                     "from attempts a join verdicts v on v.attempt_id = a.id "
                     "join tasks t on t.id = a.task_id")
    datasets: dict = {}
    for row in rows:
        meta = json.loads(row["metadata_json"])
        key = (meta["seed"], meta["size"])
        if key not in datasets:  # built here from reasoning-gym alone, not through the plugin
            datasets[key] = reasoning_gym.create_dataset(dataset, seed=meta["seed"],
                                                         size=meta["size"], **meta["config"])
        data = datasets[key]
        item = data[meta["index"]]
        assert json.loads(row["prompt_json"])[-1]["content"] == item["question"]
        expected = data.score_answer(extract_answer(row["completion"]), item)
        assert row["score"] == pytest.approx(expected)
        assert bool(row["passed"]) == (expected >= 1.0)


def test_stored_tasks_verify_a_right_answer_after_a_restart(run):
    dataset, db, _ = run
    from loop.store import Store

    store = Store.open(db)
    ids = [r["id"] for r in _rows(db, "select id from tasks")]
    gym.forget_entries()  # as a fresh process: entries rebuilt from the stored recipe
    verifier = ReasoningGymVerifier()
    for task in store.get_tasks(ids).values():
        reply = f"<answer>{task.reference}</answer>"
        attempt = Attempt(id="x", run_id="r", round_index=0, task_id=task.id, purpose="eval",
                          sample_index=0, messages=[], completion=reply)
        verdict = verifier.verify(task, attempt)
        assert (verdict.passed, verdict.score) == (True, 1.0), verdict.feedback


def test_stored_splits_are_disjoint_and_seeded(run):
    dataset, db, _ = run
    tasks = _rows(db, "select id, split, prompt_json from tasks")
    question = {t["id"]: json.loads(t["prompt_json"])[-1]["content"] for t in tasks}
    train = {question[t["id"]] for t in tasks if t["split"] == "train"}
    held_out = {question[t["id"]] for t in tasks if t["split"] == "eval"}
    assert len(train) == 12 and len(held_out) == 10 and train.isdisjoint(held_out)

    loaded = ReasoningGymTasks(dataset).load(OPTIONS, 0)  # the run's seed is 0
    again = ReasoningGymTasks(dataset).load(OPTIONS, 0)
    assert [t.id for t in loaded.eval] == [t.id for t in again.eval]
    assert {t["id"] for t in tasks if t["split"] == "eval"} == {t.id for t in loaded.eval}
    assert {t["id"] for t in tasks if t["split"] == "train"} <= {t.id for t in loaded.train}
    other = ReasoningGymTasks(dataset).load(OPTIONS, 1)
    assert held_out.isdisjoint(t.prompt[-1]["content"] for t in other.eval)
