"""A `jsonl` row reaches the environment whole: every field of the line is kept with its task
(`metadata["row"]`), survives the store, and is what a TRL environment's `reset(**row)` gets, in
an episode on the scripted backend and in a run that is killed mid-episode and resumed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from loop.doubles import ScriptedBackend
from loop.environments import FactoryEnvironment, task_fields
from loop.episodes import EpisodeSettings, run_episodes
from loop.schema import ModelRef, Sampling
from loop.store import Store, open_db
from loop_math.jsonl import JsonlOptions, JsonlTasks

# Rows with fields of every JSON kind beyond the two the source reads, some under other keys.
ROWS = [
    {"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}\n#### {2 * i}",
     "id": f"p{i}", "level": i % 3, "weight": i / 4, "tags": ["add", f"t{i}"],
     "meta": {"origin": "made up", "checked": i % 2 == 0, "note": None}, "ünïcode": "é✓"}
    for i in range(1, 9)
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _load(path: Path, **options):
    return JsonlTasks().load(JsonlOptions(path=str(path), question_field="problem",
                                          answer_field="solution", **options), seed=3)


def _by_question(rows: list[dict]) -> dict[str, dict]:
    return {r["problem"]: r for r in rows}


def test_every_field_of_a_row_is_kept_with_its_task_and_survives_the_store(tmp_path):
    tasks = _load(_write(tmp_path / "p.jsonl", ROWS), eval_size=3)
    everything = tasks.train + tasks.eval
    assert len(everything) == len(ROWS)
    expected = _by_question(ROWS)
    for task in everything:
        row = expected[task.prompt[-1]["content"]]
        assert task.metadata["row"] == row
        assert task_fields(task) == row  # what reset(**row) and make(**fields) get
        assert task.reference == str(2 * int(row["id"][1:]))
    store = Store(open_db(tmp_path / "loop.db"))
    store.upsert_tasks(everything)
    back = store.get_tasks([t.id for t in everything])
    assert {i: t.metadata for i, t in back.items()} == {t.id: t.metadata for t in everything}
    assert all(task_fields(back[t.id]) == expected[t.prompt[-1]["content"]] for t in everything)


def test_the_row_does_not_change_task_ids_or_splits(tmp_path):
    """Keeping the row is metadata only: the same questions get the same ids and splits as a file
    holding nothing but question and answer."""
    plain = [{"problem": r["problem"], "solution": r["solution"]} for r in ROWS]
    full = _load(_write(tmp_path / "full.jsonl", ROWS), eval_size=3)
    bare = _load(_write(tmp_path / "bare.jsonl", plain), eval_size=3)
    assert [t.id for t in full.train] == [t.id for t in bare.train]
    assert [t.id for t in full.eval] == [t.id for t in bare.eval]
    assert [t.metadata["row"] for t in bare.train] == [
        {"problem": t.prompt[-1]["content"], "solution": t.metadata["solution"]}
        for t in bare.train]


class Recorder:
    """A TRL environment_factory class: records what `reset` got, rewards a row's `level`."""

    seen: list[dict] = []

    def reset(self, **row):
        type(self).seen.append(row)
        self.row = row
        return f"Level {row['level']}."

    def get_reward(self):
        return float(self.row["level"])


def test_a_factory_environment_gets_every_field_of_its_row_in_reset(tmp_path):
    tasks = _load(_write(tmp_path / "p.jsonl", ROWS), eval_size=3)
    store = Store(open_db(tmp_path / "loop.db"))
    store.upsert_tasks(tasks.train)
    stored = list(store.get_tasks([t.id for t in tasks.train]).values())  # as a round reads them
    Recorder.seen = []
    session = ScriptedBackend(completions=["The answer is 2."]).open(ModelRef(base="x"))
    out = run_episodes(session, FactoryEnvironment(Recorder), stored,
                       Sampling(n=2, temperature=1.0, max_new_tokens=50),
                       EpisodeSettings(max_turns=2, max_tokens=500, tool_timeout_s=5,
                                       environment="Recorder"))
    expected = _by_question(ROWS)
    rows = [expected[t.prompt[-1]["content"]] for t in stored]
    assert Recorder.seen == [r for r in rows for _ in range(2)]  # one fresh instance per episode
    assert [[e.env_reward for e in group] for group in out] == [[float(r["level"])] * 2
                                                                for r in rows]
    assert all(group[0].prompt[-1]["content"].endswith(f"Level {r['level']}.")
               for group, r in zip(out, rows))


ENV_FILE = '''
import json


class Recorder:
    def reset(self, **row):
        with open("resets.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\\n")
        self.level = row["level"]

    def get_reward(self):
        return 1.0 if self.level == 1 else 0.0
'''


def _run(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    environ.update(LOOP_DB=str(folder / "loop.db"), **env)
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], env=environ, cwd=folder,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_run_passes_each_row_to_reset_and_a_resume_still_does(tmp_path):
    """`loop run` with the jsonl source and a factory environment, killed inside the episode
    loop and resumed: every reset, before the kill and after the resume (the tasks read back from
    the store), got exactly one row of the file, and the run's rewards follow the rows."""
    _write(tmp_path / "p.jsonl", ROWS)
    (tmp_path / "env.py").write_text(ENV_FILE)
    args = ["run", "jsonl", "--name", "r", "--rounds", "1",
            "--set", "task.options.path=p.jsonl", "--set", "task.options.eval_size=3",
            "--set", "task.options.question_field=problem",
            "--set", "task.options.answer_field=solution",
            "--set", "task.environment.factory=env.py:Recorder", "--set", "task.verifiers=[]",
            "--set", "backend.name=scripted", "--set", "train.method=noop",
            "--set", "generate.n=2", "--set", "select.prompts_per_round=5",
            "--set", "evaluate.problems=3",
            "--set", 'backend.options.completions=["The answer is 2."]']
    dead = _run(args, tmp_path, LOOP_FAILPOINT="generate.in_episode")
    assert dead.returncode == -9, dead.stderr
    before = (tmp_path / "resets.jsonl").read_text().splitlines()
    resumed = _run(["resume", "r"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    lines = (tmp_path / "resets.jsonl").read_text().splitlines()
    assert len(lines) > len(before) > 0
    canon = {json.dumps(r, ensure_ascii=False, sort_keys=True) for r in ROWS}
    assert set(lines) <= canon
    con = sqlite3.connect(tmp_path / "loop.db")
    rewards = con.execute(
        "select t.metadata_json, r.value from rewards r join attempts a on a.id = r.attempt_id "
        "join tasks t on t.id = a.task_id where r.reward_fn = 'Recorder'"
    ).fetchall()
    con.close()
    assert rewards
    assert all(value == (1.0 if json.loads(meta)["row"]["level"] == 1 else 0.0)
               for meta, value in rewards)
