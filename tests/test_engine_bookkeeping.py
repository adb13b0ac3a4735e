"""The quick tier's share of the crash test: a run that dies inside a stage, resumed in the same
process, stores exactly the rows and checkpoints of an uninterrupted run. On the doubles (the
`adder` scripted backend, the `noop` update method), in this process: the fail point raises
`Crash` instead of SIGKILLing (tests/test_resume.py kills real processes at every fail point)."""

from __future__ import annotations

import sqlite3

import pytest

import loop.rounds
from test_resume import RUN_SETTINGS, TASK, assert_consistent, snapshot
from tiny_model import scripted_run


class Crash(BaseException):
    """A fail point's death in this process: no `except Exception` sees it, the open
    transaction rolls back, and the run row stays `running`."""


def _run(folder, **kw):
    result, conn = scripted_run(folder, *RUN_SETTINGS, task_text=TASK, name="r", **kw)
    return result, conn


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_LOAD_PLUGINS", "math")
        folder = tmp_path_factory.mktemp("reference")
        result, _ = _run(folder)
        assert result.exit_code == 0, result.output
        return snapshot(folder / "loop.db")


@pytest.mark.parametrize("point", ["refine.in_batch:3", "mistakes.before_commit",
                                   "train.after_rename:2", "verify.in_batch:10",
                                   "evaluate-samples.in_batch:5", "evaluate.before_commit:2"])
def test_crash_inside_a_stage_then_resume_gives_the_uninterrupted_rows(point, reference,
                                                                        tmp_path, monkeypatch):
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "math")
    name, _, nth = point.partition(":")
    passes = {"count": 0}
    real = loop.rounds.failpoint

    def crash_at(where):
        if where == name:
            passes["count"] += 1
            if passes["count"] >= int(nth or 1):
                raise Crash(where)
        real(where)

    monkeypatch.setattr(loop.rounds, "failpoint", crash_at)
    with pytest.raises(Crash):
        _run(tmp_path)
    monkeypatch.setattr(loop.rounds, "failpoint", real)
    conn = sqlite3.connect(tmp_path / "loop.db")
    assert conn.execute("select status from runs").fetchone()[0] == "running"
    conn.close()
    resumed, _ = scripted_run(tmp_path, name="r", command="resume")
    assert resumed.exit_code == 0, resumed.output
    assert snapshot(tmp_path / "loop.db") == reference
    assert_consistent(tmp_path)
