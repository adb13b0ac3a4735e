"""A real `loop run --rounds 1` on the doubles (the parity scripted backend and the noop updater,
tests/scripted_runs.py) with the plugin loaded from its entry point: the event files under the
run's folder hold, per round, the numbers `loop show --json` prints for it, and those are what
the parity rule gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from loop.cli import app

pytestmark = pytest.mark.slow  # a few seconds: a whole run, tensorboard's reader

SETTINGS = ["--set", "select.prompts_per_round=24", "--set", "generate.n=4",
            "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=40",
            "--set", "evaluate.max_new_tokens=6"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(show --json of the run, its event accumulator, the parity rule's counts), from one run
    on the doubles (the parity backend, the noop updater) for this module."""
    import loop.cli.common
    # tests/, on sys.path through the root conftest
    from scripted_runs import expected_counts, scripted_run
    from tiny_model import tiny_task_yaml

    folder = tmp_path_factory.mktemp("tb")
    task = folder / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=200, eval_size=40))
    db = folder / "store" / "loop.db"
    scripted_run(folder, [task, "--rounds", "1", "--name", "tb", "--db", db, *SETTINGS],
                 plugins="math,tensorboard", env={"LOOP_DB": str(db)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop.cli.common, "_PM", None)
        shown = CliRunner().invoke(app, ["show", "tb", "--db", str(db), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    import sqlite_utils

    run_dir = Path(sqlite_utils.Database(db)["runs"].get(data["run"]["id"])["run_dir"])
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return data, events, expected_counts(db, "tb")


def value(events: EventAccumulator, tag: str, step: int) -> float:
    found = [e.value for e in events.Scalars(tag) if e.step == step]
    assert len(found) == 1, (tag, step, found)
    return found[0]


def test_named_scalars_equal_loop_show(run):
    data, events, counts = run
    assert [r["index"] for r in data["rounds"]] == [0, 1]
    for r in data["rounds"]:
        step = r["index"]
        assert value(events, "eval/pass_at_1", step) == pytest.approx(r["eval"]["pass_at_1"])
        assert r["eval"]["pass_at_1"] == counts[step]["eval_passed"] / 40  # the parity rule
        assert value(events, "eval/n", step) == r["eval"]["n"] == 40
        for stage, seconds in r["timings"].items():
            assert value(events, f"timings/{stage}", step) == pytest.approx(seconds, rel=1e-6)
        for stage, speed in r["tokens_per_s"].items():
            assert value(events, f"tokens_per_s/{stage}", step) == pytest.approx(speed, rel=1e-6)
        assert value(events, "errors/verifier", step) == r["errors"]["verifier"]
    trained = data["rounds"][1]
    train = trained["train"]
    assert value(events, "train/solve_rate", 1) == pytest.approx(
        train["solved_prompts"] / train["prompts"])
    assert value(events, "train/passed_share", 1) == pytest.approx(
        train["passed"] / train["attempts"])
    assert value(events, "train/repairs", 1) == train["repairs"]
    assert (train["prompts"], train["attempts"], train["passed"], train["solved_prompts"]) == (
        24, 24 * 4, counts[1]["passed"], counts[1]["solved"])
    metrics = trained["update"]["metrics"]  # the noop updater's: what it was given
    assert metrics == {"dataset_size": 24 * 4, "passed": counts[1]["passed"]}
    assert value(events, "update/dataset_size", 1) == 24 * 4
    assert value(events, "update/passed", 1) == counts[1]["passed"]
    assert "timings/generate" in events.Tags()["scalars"]
    assert not [e for e in events.Scalars("eval/pass_at_1") if e.step > 1]


def test_every_number_of_loop_show_is_a_scalar(run):
    data, events, _ = run
    from loop_tensorboard import scalars

    tags = set(events.Tags()["scalars"])
    for r in data["rounds"]:
        expected = scalars(r)
        assert expected.keys() <= tags
        for tag, number in expected.items():
            assert value(events, tag, r["index"]) == pytest.approx(number, rel=1e-6)
    assert tags == set().union(*(scalars(r).keys() for r in data["rounds"]))  # nothing else
