"""loop.timing: a round's wall time split into the model's and verifiers' work and loop's own
overhead, as `loop show` prints it (the end-to-end run in test_e2e checks it on a real run)."""

from __future__ import annotations

import pytest

from loop.summary import _run_wall
from loop.timing import round_time, run_time, stage_time


def test_each_stage_counts_its_own_work():
    gen = stage_time("generate", {"seconds": 10.0, "model_seconds": 8.5, "load_seconds": 1.0})
    assert gen == {"seconds": 10.0, "work_seconds": 8.5, "load_seconds": 1.0,
                   "overhead_seconds": 1.5, "reported": True}
    ev = stage_time("evaluate", {"seconds": 6.0, "model_seconds": 4.0, "verify_seconds": 1.5})
    assert ev["work_seconds"] == 5.5 and ev["overhead_seconds"] == 0.5
    assert stage_time("verify", {"seconds": 3.0})["overhead_seconds"] == 0.0
    for bookkeeping in ("select", "reward", "mistakes"):
        assert stage_time(bookkeeping, {"seconds": 0.2})["overhead_seconds"] == 0.2
    train = stage_time("train", {"seconds": 20.0, "model_seconds": 17.0, "load_seconds": 0.8})
    assert train["work_seconds"] == 17.0 and train["overhead_seconds"] == 3.0


def test_a_component_that_reports_no_model_time_is_all_work_and_flagged():
    s = stage_time("generate", {"seconds": 10.0})
    assert s["work_seconds"] == 10.0 and s["overhead_seconds"] == 0.0 and not s["reported"]
    # a clock that claims more than the stage took is capped at the stage
    assert stage_time("train", {"seconds": 5.0, "model_seconds": 9.0})["overhead_seconds"] == 0.0


def test_round_time_counts_the_gaps_between_stages_as_overhead():
    stages = {"select": {"seconds": 0.1}, "generate": {"seconds": 10.0, "model_seconds": 9.0},
              "verify": {"seconds": 1.0}, "reward": {"seconds": 0.1},
              "mistakes": {"seconds": 0.2}, "train": {"seconds": 5.0, "model_seconds": 4.0},
              "evaluate": {"seconds": 4.0, "model_seconds": 3.0, "verify_seconds": 0.5},
              "done": {"seconds": 21.4, "resumed": False}}
    t = round_time(stages)
    assert t["wall_seconds"] == 21.4
    assert t["work_seconds"] == pytest.approx(9.0 + 1.0 + 4.0 + 3.5)
    assert t["between_stages_seconds"] == pytest.approx(21.4 - 20.4)
    assert t["overhead_seconds"] == pytest.approx(21.4 - 17.5)
    assert t["overhead_share"] == pytest.approx((21.4 - 17.5) / 21.4)
    assert list(t["stages"]) == ["select", "generate", "verify", "reward", "mistakes", "train",
                                 "evaluate"]


def test_a_resumed_round_is_timed_by_its_stages_only():
    stages = {"generate": {"seconds": 10.0, "model_seconds": 9.0},
              "verify": {"seconds": 1.0}, "done": {"seconds": 2.0, "resumed": True}}
    t = round_time(stages)
    assert t["wall_seconds"] == 11.0 and t["between_stages_seconds"] == 0.0
    assert t["overhead_seconds"] == pytest.approx(1.0)


def test_run_time_adds_start_up_and_refuses_a_resumed_span():
    rounds = [round_time({"evaluate": {"seconds": 4.0, "model_seconds": 3.0,
                                       "verify_seconds": 1.0}, "done": {"seconds": 4.5}}),
              round_time({"generate": {"seconds": 10.0, "model_seconds": 9.0},
                          "done": {"seconds": 10.5}})]
    t = run_time(rounds, 17.0)
    assert t["rounds_seconds"] == 15.0 and t["outside_rounds_seconds"] == 2.0
    assert t["work_seconds"] == 13.0 and t["overhead_seconds"] == 4.0
    assert t["overhead_share"] == pytest.approx(4.0 / 17.0)
    assert run_time(rounds, None)["outside_rounds_seconds"] == 0.0
    finished = {"status": "finished", "created": "2026-01-01T00:00:00+00:00",
                "finished": "2026-01-01T00:01:30+00:00", "resumes": 0}
    assert _run_wall(finished) == 90.0
    assert _run_wall({**finished, "resumes": 1}) is None  # it lay dead for part of that span
    assert _run_wall({**finished, "status": "failed"}) is None
