"""One backend session from a round's evaluation to the next round's generation: real `loop run`s
on a scripted backend that logs every open, generate and close, and an updater that logs how many
sessions are open while it trains.

What must hold: the model is opened once per checkpoint (rounds + 1 opens, not one per sampling
stage); generation samples from the same checkpoint it would have opened itself; no session is
open while the trainer runs or after the run, even a failed one; a stage that reuses a session
reports no load time, and one that opens a session reports its load time.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from scripted_runs import cli_with_plugin
from tiny_model import tiny_task_yaml

LEDGER_PLUGIN = '''
import json
import os

import loop
from loop.testing import NoopUpdater, ScriptedBackend, ScriptedSession

OPEN = set()


def log(**event):
    with open(os.environ["LEDGER"], "a") as f:
        f.write(json.dumps(event) + "\\n")


class LedgerSession(ScriptedSession):
    def __init__(self, respond, model, number):
        super().__init__(respond, model)
        self.number = number
        self.load_seconds = 5.0  # what opening it would have cost

    def generate(self, prompts, sampling, progress=None, batch_size=64):
        log(event="generate", session=self.number, model=self.model.adapter,
            temperature=sampling.temperature)
        if os.path.exists(os.environ["LEDGER"] + ".fail") and sampling.temperature > 0:
            raise RuntimeError("the backend died mid-request")
        out = super().generate(prompts, sampling, progress, batch_size)
        self.model_seconds += 1.0
        return out

    def close(self):
        log(event="close", session=self.number)
        OPEN.discard(self.number)


class Ledger(ScriptedBackend):
    name = "ledger"

    def open(self, model, options=None):
        number = len(self.sessions)
        log(event="open", session=number, model=model.adapter)
        OPEN.add(number)
        session = LedgerSession(lambda prompt, k, sampling: "42", model, number)
        self.sessions.append(session)
        return session


class Counting(NoopUpdater):
    name = "counting"

    def update(self, context):
        log(event="train", round=context.round_index, open=len(OPEN))
        return super().update(context)


@loop.hookimpl
def register_backends(register):
    register(Ledger())


@loop.hookimpl
def register_updaters(register):
    register(Counting())
'''

SETTINGS = ["--model", "scripted-ledger", "--set", "backend.name=ledger", "--method", "counting",
            "--set", "select.prompts_per_round=4", "--set", "generate.n=2",
            "--set", "evaluate.problems=6"]


def loop_cli(folder: Path, *args: str):
    return cli_with_plugin(folder, "ledger.py", LEDGER_PLUGIN, [*args, "--db", "loop.db"],
                           env={"LEDGER": str(folder / "ledger.jsonl")})


def loop_run(folder: Path, *args: str):
    return loop_cli(folder, "run", "task.yaml", *SETTINGS, *args)


def ledger(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "ledger.jsonl").read_text().splitlines()]


def stage_stats(folder: Path, stage: str) -> dict[int, dict]:
    conn = sqlite3.connect(folder / "loop.db")
    rows = conn.execute("select idx, stages_json from rounds order by idx").fetchall()
    conn.close()
    return {idx: json.loads(stages)[stage] for idx, stages in rows
            if stage in json.loads(stages)}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "task.yaml").write_text(tiny_task_yaml(train_size=20, eval_size=10))
    return tmp_path


def test_one_open_per_checkpoint_and_none_while_training(folder):
    result = loop_run(folder, "--rounds", "3", "--name", "kept")
    assert result.exit_code == 0, result.output
    events = ledger(folder)
    opens = [e for e in events if e["event"] == "open"]
    # round 0's evaluation opens the base model; each round's evaluation opens its checkpoint,
    # which the next round's generation samples from without opening it again
    assert len(opens) == 3 + 1
    assert opens[0]["model"] is None
    assert [Path(e["model"]).parent.name for e in opens[1:]] == ["round-1", "round-2", "round-3"]
    generations = [e for e in events if e["event"] == "generate" and e["temperature"] > 0]
    assert len(generations) == 3
    for i, (gen, opened) in enumerate(zip(generations, opens)):
        # round i+1 samples from the checkpoint round i's evaluation opened
        assert (gen["session"], gen["model"]) == (opened["session"], opened["model"])
    trains = [e for e in events if e["event"] == "train"]
    assert [t["round"] for t in trains] == [1, 2, 3]
    assert all(t["open"] == 0 for t in trains)  # the trainer had the memory to itself
    closed = {e["session"] for e in events if e["event"] == "close"}
    assert closed == {e["session"] for e in opens}  # nothing left open after the run


def test_a_reused_session_reports_no_load_time(folder):
    assert loop_run(folder, "--rounds", "2", "--name", "timing").exit_code == 0
    generate, evaluate = stage_stats(folder, "generate"), stage_stats(folder, "evaluate")
    assert [generate[i]["load_seconds"] for i in (1, 2)] == [0.0, 0.0]
    assert [evaluate[i]["load_seconds"] for i in (0, 1, 2)] == [5.0, 5.0, 5.0]
    # model time is per use (1 s and a little real time), not the session's running total (2 s
    # by the time a reused session has generated twice)
    for stats in (generate[1], generate[2], evaluate[0], evaluate[1], evaluate[2]):
        assert 1.0 <= stats["model_seconds"] < 1.5


def test_a_session_whose_generation_failed_is_closed_and_not_reused(folder):
    (folder / "ledger.jsonl.fail").write_text("")
    failed = loop_run(folder, "--rounds", "1", "--name", "broken")
    assert failed.exit_code != 0
    events = ledger(folder)
    opens = [e["session"] for e in events if e["event"] == "open"]
    closes = [e["session"] for e in events if e["event"] == "close"]
    assert opens == [0] and closes == [0]  # the failed session closed, once
    (folder / "ledger.jsonl.fail").unlink()
    resumed = loop_cli(folder, "resume", "broken")
    assert resumed.exit_code == 0, resumed.output
    events = ledger(folder)[len(events):]
    assert [e["event"] for e in events][:2] == ["open", "generate"]  # a fresh session
    assert sorted(e["session"] for e in events if e["event"] == "close") == sorted(
        e["session"] for e in events if e["event"] == "open")
