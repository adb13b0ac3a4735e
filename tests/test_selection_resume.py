"""The select stage with the curriculum on, through real `loop run`s on the doubles (the `adder`
scripted backend, the `noop` update method): every round's stored choice is what
loop.selection.choose_prompts makes of the history the earlier rounds stored (group rules and
extra prompts included), and a run killed around its select stage and resumed selects the same
prompts and stores exactly the rows of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from loop.config import SelectConfig
from test_resume import assert_consistent, loop_env, loop_fork, snapshot
from tiny_model import SCRIPTED_SETTINGS, tiny_task_yaml, write_adder_plugin

pytestmark = pytest.mark.slow  # starts `loop` processes

# 30 train tasks, 12+ prompts a round for 3 rounds: later rounds take frontier tasks, skip the
# all-equal ones and, by round 3, reuse tasks.
TASK = tiny_task_yaml(train_size=30, eval_size=8)
CURRICULUM = ["--set", "select.curriculum.enabled=true", "--set", "select.curriculum.share=0.5",
              # noop keeps no groups; `on` asks for the group rules regardless
              "--set", "select.curriculum.groups=on", "--set", "select.curriculum.extra_share=0.5"]
SETTINGS = [*SCRIPTED_SETTINGS, "--rounds", "3", "--set", "select.prompts_per_round=12",
            "--set", "generate.n=4", "--set", "generate.temperature=1.0",
            "--set", "generate.max_new_tokens=5", "--set", "evaluate.problems=8",
            "--set", "evaluate.max_new_tokens=5", *CURRICULUM]


def start(folder: Path, name: str, failpoint: str | None = None):
    plugins = write_adder_plugin(folder / "plugins")
    task = folder / "task.yaml"
    task.write_text(TASK)
    args = ["run", str(task), "--name", name, "--db", str(folder / "loop.db"), *SETTINGS]
    return loop_fork(args, loop_env(plugins, {"LOOP_FAILPOINT": failpoint} if failpoint else {}),
                     folder)


def selections(db: Path) -> dict[int, dict]:
    """Per training round, the select stage's stored stats without its timing."""
    conn = sqlite3.connect(db)
    rows = conn.execute("select idx, stages_json from rounds where idx > 0 order by idx")
    out = {idx: json.loads(stages)["select"] for idx, stages in rows}
    conn.close()
    for stats in out.values():
        stats.pop("seconds")
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curriculum")
    done = start(folder, "ref")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "loop.db", snapshot(folder / "loop.db")


def test_each_round_selects_what_the_curriculum_makes_of_the_stored_history(reference):
    from loop.selection import choose_prompts
    from loop.store import Store, open_db
    from loop.updates import derive_seed
    from loop_math.arithmetic import ArithmeticTasks

    db, _ = reference
    store = Store(open_db(db))
    run = store.get_run("ref")
    config = json.loads(run["config_json"])
    select = SelectConfig.model_validate(config["select"])
    train = ArithmeticTasks().load(config["task"]["options"], config["seed"]).train
    history = store.task_history(run["id"])
    chosen = selections(db)
    for idx, stats in chosen.items():
        before = {t: {r: v for r, v in rounds.items() if r < idx} for t, rounds in history.items()}
        before = {t: rounds for t, rounds in before.items() if rounds}
        expected = choose_prompts(train, before, {}, select,
                                  derive_seed(config["seed"], idx, "select"), groups=True)
        assert stats["task_ids"] == [t.id for t in expected.tasks], idx
        assert stats["curriculum"] == {"frontier": expected.frontier, "groups": True,
                                       "skipped": len(expected.skipped), "extra": expected.extra}
        # the choice is the curriculum's, not today's selection
        if idx > 1:
            plain = choose_prompts(train, before, {}, SelectConfig(prompts_per_round=12), 0)
            assert stats["task_ids"] != [t.id for t in plain.tasks]
    # the history made the curriculum act: frontier tasks, extra prompts, skipped tasks
    assert chosen[1]["curriculum"]["frontier"] == [] and chosen[1]["count"] == 12
    assert all(chosen[i]["curriculum"]["frontier"] for i in (2, 3))
    assert all(chosen[i]["count"] > 12 for i in (2, 3))
    assert all(chosen[i]["curriculum"]["skipped"] for i in (2, 3))
    held_out = {t.id for t in ArithmeticTasks().load(config["task"]["options"],
                                                     config["seed"]).eval}
    assert not held_out & {t for s in chosen.values() for t in s["task_ids"]}


@pytest.mark.parametrize("point", ["select.before_commit:3", "select.after_commit:2",
                                   "generate.in_batch:20"])
def test_killed_and_resumed_run_selects_the_same_prompts(point, reference, tmp_path):
    db, expected = reference
    killed = start(tmp_path, "chaos", failpoint=point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    resumed = loop_fork(["resume", "chaos", "--db", str(tmp_path / "loop.db")],
                        loop_env(tmp_path / "plugins"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert selections(tmp_path / "loop.db") == selections(db)
    assert snapshot(tmp_path / "loop.db") == expected
    assert_consistent(tmp_path)
