"""A real `loop run --rounds 1` on the tiny in-process model with the plugin loaded from its entry
point: the event files under the run's folder hold, per round, the numbers `loop show --json`
prints for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from loop.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SETTINGS = ["--set", "select.prompts_per_round=24", "--set", "generate.n=4",
            "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=40",
            "--set", "evaluate.max_new_tokens=6", "--set", "train.learning_rate=1e-3",
            "--set", "train.max_length=32", "--set", "train.lora.r=8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, weak_adder_dir):
    """(show --json of the run, its event accumulator), from one real run for this module."""
    import loop.cli.common
    from tiny_model import tiny_task_yaml  # tests/, on sys.path through the root conftest

    folder = tmp_path_factory.mktemp("tb")
    task = folder / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=200, eval_size=40))
    db = folder / "store" / "loop.db"
    with pytest.MonkeyPatch.context() as mp:  # the autouse isolated_env is per test
        mp.setenv("LOOP_LOAD_PLUGINS", "hf,math,trl,tensorboard")
        mp.setenv("LOOP_DB", str(db))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("LOOP_TENSORBOARD_DIR", raising=False)
        mp.setattr(loop.cli.common, "_PM", None)
        mp.chdir(folder)
        result = CliRunner().invoke(app, [
            "run", str(task), "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
            "--model", str(weak_adder_dir), "--rounds", "1", "--name", "tb", "--db", str(db),
            *SETTINGS])
        assert result.exit_code == 0, result.output
        shown = CliRunner().invoke(app, ["show", "tb", "--db", str(db), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    import sqlite_utils

    run_dir = Path(sqlite_utils.Database(db)["runs"].get(data["run"]["id"])["run_dir"])
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return data, events


def value(events: EventAccumulator, tag: str, step: int) -> float:
    found = [e.value for e in events.Scalars(tag) if e.step == step]
    assert len(found) == 1, (tag, step, found)
    return found[0]


def test_named_scalars_equal_loop_show(run):
    data, events = run
    assert [r["index"] for r in data["rounds"]] == [0, 1]
    for r in data["rounds"]:
        step = r["index"]
        assert value(events, "eval/pass_at_1", step) == pytest.approx(r["eval"]["pass_at_1"])
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
    metrics = trained["update"]["metrics"]
    assert metrics["steps"] > 0  # the weak adder solves some prompts: SFT trained
    assert value(events, "update/steps", 1) == metrics["steps"]
    assert value(events, "update/train_loss", 1) == pytest.approx(metrics["train_loss"], rel=1e-6)
    assert value(events, "update/grad_norm_mean", 1) == pytest.approx(metrics["grad_norm_mean"],
                                                                        rel=1e-6)
    assert "timings/generate" in events.Tags()["scalars"]
    assert not [e for e in events.Scalars("eval/pass_at_1") if e.step > 1]


def test_every_number_of_loop_show_is_a_scalar(run):
    data, events = run
    from loop_tensorboard import scalars

    tags = set(events.Tags()["scalars"])
    for r in data["rounds"]:
        expected = scalars(r)
        assert expected.keys() <= tags
        for tag, number in expected.items():
            assert value(events, tag, r["index"]) == pytest.approx(number, rel=1e-6)
    assert tags == set().union(*(scalars(r).keys() for r in data["rounds"]))  # nothing else
