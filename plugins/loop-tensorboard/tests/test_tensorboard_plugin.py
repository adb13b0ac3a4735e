"""loop-tensorboard without a model: which scalars a summary gives, where the event files go,
and that what is written reads back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import gc
import importlib.metadata
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import loop_tensorboard
from loop.plugin_manager import get_plugin_manager
from loop.store import Store, open_db
from loop_tensorboard import scalars, where, write_round

SUMMARY = {
    "index": 2, "stage": "done",
    "train": {"prompts": 16, "attempts": 64, "passed": 8, "solved_prompts": 6, "repairs": 5,
              "repaired": 2, "replayed": 0, "truncated_share": None},
    "eval": {"n": 32, "pass_at_1": 0.15625, "truncated_share": 0.0,
             "mean_completion_tokens": 3.5},
    "timings": {"generate": 2.5, "train": 3.25},
    "tokens_per_s": {"generate": 96.2},
    "errors": {"verifier": 1, "reward": 0},
    "update": {"method": "sft", "dataset_size": 7,
               "metrics": {"dataset_size": 999, "steps": 3, "train_loss": 0.5,
                           "grad_norm_mean": 0.25, "loss_first": float("nan"),
                           "skipped": "no", "converged": True, "per_class": {"a": 1.5}}},
}


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(where.ENV, raising=False)


def test_scalars_of_a_round_summary():
    assert scalars(SUMMARY) == {
        "train/prompts": 16.0, "train/attempts": 64.0, "train/passed": 8.0,
        "train/solved_prompts": 6.0, "train/repairs": 5.0, "train/repaired": 2.0,
        "train/replayed": 0.0,
        "train/solve_rate": 6 / 16, "train/passed_share": 8 / 64,
        "eval/n": 32.0, "eval/pass_at_1": 0.15625, "eval/truncated_share": 0.0,
        "eval/mean_completion_tokens": 3.5,
        "timings/generate": 2.5, "timings/train": 3.25, "tokens_per_s/generate": 96.2,
        "errors/verifier": 1.0, "errors/reward": 0.0,
        # update's own dataset_size wins over the metric of that name; text, bools, NaN dropped
        "update/dataset_size": 7.0, "update/steps": 3.0, "update/train_loss": 0.5,
        "update/grad_norm_mean": 0.25, "update/per_class/a": 1.5,
    }


def test_round_zero_has_no_shares_and_no_update():
    round0 = {"index": 0, "train": {"prompts": 0, "attempts": 0, "passed": 0,
                                    "solved_prompts": 0},
              "eval": {"pass_at_1": None}, "update": None}
    assert scalars(round0) == {"train/prompts": 0.0, "train/attempts": 0.0, "train/passed": 0.0,
                               "train/solved_prompts": 0.0}


def test_written_scalars_read_back_per_round(tmp_path):
    write_round(tmp_path, 0, {"eval/pass_at_1": 0.125})
    write_round(tmp_path, 1, {"eval/pass_at_1": 0.25, "update/train_loss": 1.75})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/pass_at_1", "update/train_loss"]
    assert [(e.step, e.value) for e in events.Scalars("eval/pass_at_1")] == [(0, 0.125), (1, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("update/train_loss")] == [(1, 1.75)]


def _store_with_run(tmp_path, run_id: str, run_dir) -> Store:
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(loop_tensorboard, name="tensorboard")
    store = Store(open_db(tmp_path / "s.db", pm))  # open_db calls prepare_db: remembered
    store.create_run(run_id=run_id, name="r", task="t", model="m", config={}, seed=0,
                     rounds_planned=1, versions={}, git_sha=None, run_dir=str(run_dir))
    return store


def test_log_dir_is_the_runs_folder_found_through_the_store(tmp_path, monkeypatch):
    store = _store_with_run(tmp_path, "run-a", tmp_path / "runs" / "run-a")
    assert where.log_dir("run-a") == tmp_path / "runs" / "run-a" / "tensorboard"
    assert where.log_dir("run-b") == where.Path("tensorboard") / "run-b"  # not in any store
    monkeypatch.setenv(where.ENV, str(tmp_path / "tb"))
    assert where.log_dir("run-a") == tmp_path / "tb" / "run-a"
    monkeypatch.delenv(where.ENV)
    del store
    gc.collect()  # a store nobody holds any more is forgotten, not kept open
    assert where.log_dir("run-a") == where.Path("tensorboard") / "run-a"


def test_the_hook_writes_into_the_run_folder(tmp_path):
    store = _store_with_run(tmp_path, "run-c", tmp_path / "runs" / "run-c")
    loop_tensorboard.round_finished(run_id="run-c", round_index=2, summary=SUMMARY)
    events = EventAccumulator(str(tmp_path / "runs" / "run-c" / "tensorboard"))
    events.Reload()
    expected = scalars(SUMMARY)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, value in expected.items():
        [event] = events.Scalars(tag)
        assert event.step == 2 and event.value == pytest.approx(value, rel=1e-6)
    assert store.get_run("run-c")["run_dir"]  # still open and readable


def test_importing_the_plugin_does_not_import_torch():
    probe = "import sys, loop_tensorboard; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_hooks_and_entry_point():
    pm = get_plugin_manager(load_entrypoints=False, builtins=False)
    pm.register(loop_tensorboard, name="tensorboard")
    hooks = sorted(h.name for h in pm.get_hookcallers(loop_tensorboard))
    assert hooks == ["prepare_db", "round_finished"]
    try:
        dist = importlib.metadata.distribution("loop-tensorboard")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("loop-tensorboard is not installed (bare checkout)")
    eps = [ep for ep in dist.entry_points if ep.group == "loop"]
    assert [(ep.name, ep.value) for ep in eps] == [("tensorboard", "loop_tensorboard")]
