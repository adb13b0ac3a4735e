"""Sampled held-out evaluation (evaluate.samples): real `loop run`s on the doubles whose every
answer follows a rule the test applies itself, so the stored pass@k is checked to the last digit;
the greedy figures, training and selection are the same as without it; `loop show`, `loop report`
and `loop compare` print it.

The `sampler` backend answers "a+b=": greedily (temperature 0) right when a is even; sampled,
sample k is right when the stage's temperature is 0.5 and k < (a + seed) % 4, seed being the
stage's sampling seed. A wrong seed, temperature or sample numbering gives other counts.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest

from loop.updates import derive_seed
from scripted_runs import cli_with_plugin
from tiny_model import tiny_task_yaml

SAMPLER_PLUGIN = '''
import re

import loop
from loop.testing import ScriptedBackend, ScriptedSession


def reply(question, k, sampling):
    a, b = map(int, re.search(r"(\\d+)\\s*\\+\\s*(\\d+)", question).groups())
    if sampling.temperature == 0:
        ok = a % 2 == 0
    else:
        ok = sampling.temperature == 0.5 and k < (a + sampling.seed) % 4
    return str(a + b) if ok else str(a + b + 1)


class Sampler(ScriptedBackend):
    name = "sampler"

    def open(self, model, options=None):
        def respond(prompt, k, sampling):
            return reply(next(m["content"] for m in prompt if m["role"] == "user"), k, sampling)

        session = ScriptedSession(respond, model)
        self.sessions.append(session)
        return session


@loop.hookimpl
def register_backends(register):
    register(Sampler())
'''

SAMPLES = 3
SETTINGS = ["--model", "scripted-sampler", "--set", "backend.name=sampler", "--method", "noop",
            "--rounds", "2", "--set", "select.prompts_per_round=6", "--set", "generate.n=2",
            "--set", "generate.temperature=1.0", "--set", "evaluate.problems=12"]
SAMPLED = ["--set", f"evaluate.samples={SAMPLES}", "--set", "evaluate.temperature=0.5",
           "--set", "evaluate.pass_k=[1, 2, 3]"]


def loop_cli(folder: Path, *args: str):
    return cli_with_plugin(folder, "sampler.py", SAMPLER_PLUGIN, list(args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One store with two runs of the same config: `plain` (no samples) and `sampled`."""
    folder = tmp_path_factory.mktemp("pass_at_k")
    (folder / "task.yaml").write_text(tiny_task_yaml(train_size=40, eval_size=20))
    for name, extra in (("plain", []), ("sampled", SAMPLED)):
        result = loop_cli(folder, "run", "task.yaml", "--name", name, "--db", "loop.db",
                          *SETTINGS, *extra)
        assert result.exit_code == 0, result.output
    conn = sqlite3.connect(folder / "loop.db")
    conn.row_factory = sqlite3.Row
    return folder, conn


def run_id(conn, name):
    return conn.execute("select id from runs where name = ?", [name]).fetchone()[0]


def first_operand(prompt_json: str) -> int:
    question = next(m["content"] for m in json.loads(prompt_json) if m["role"] == "user")
    return int(re.match(r"\s*(\d+)", question).group(1))


def expected_pass_at_k(conn, rid: str, idx: int) -> dict[str, float]:
    """The rule's pass@k for round idx, from the held-out prompts alone (math.comb, not the
    estimator under test)."""
    seed = derive_seed(0, idx, "evaluate-samples")
    operands = [first_operand(r[0]) for r in conn.execute(
        "select distinct t.prompt_json from attempts a join tasks t on t.id = a.task_id "
        "where a.run_id = ? and a.round_idx = ? and a.purpose = 'eval'", [rid, idx])]
    assert len(operands) == 12
    out = {}
    for k in (1, 2, 3):
        values = []
        for a in operands:
            c = min(SAMPLES, (a + seed) % 4)
            values.append(1 - math.comb(SAMPLES - c, k) / math.comb(SAMPLES, k))
        out[str(k)] = sum(values) / len(values)
    return out


def test_stored_pass_at_k_is_exactly_the_rule(runs):
    _, conn = runs
    rid = run_id(conn, "sampled")
    rows = conn.execute("select round_idx, samples, sample_temperature, pass_at_k_json "
                        "from evaluations where run_id = ? order by round_idx", [rid]).fetchall()
    assert [r["round_idx"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert (r["samples"], r["sample_temperature"]) == (SAMPLES, 0.5)
        stored = json.loads(r["pass_at_k_json"])
        want = expected_pass_at_k(conn, rid, r["round_idx"])
        assert stored.keys() == want.keys()
        for k in want:
            assert stored[k] == pytest.approx(want[k], abs=1e-12), (r["round_idx"], k)
    # the rounds' seeds differ, so their figures do (the seed really reached the backend)
    assert len({r["pass_at_k_json"] for r in rows}) > 1


def test_sampled_answers_are_eval_attempts_numbered_from_one_with_the_stage_seed(runs):
    _, conn = runs
    rid = run_id(conn, "sampled")
    for idx in range(3):
        rows = conn.execute(
            "select a.sample_index, a.seed, a.completion, t.prompt_json, t.reference "
            "from attempts a join tasks t on t.id = a.task_id where a.run_id = ? and a.round_idx = ? "
            "and a.purpose = 'eval'", [rid, idx]).fetchall()
        assert sorted({r["sample_index"] for r in rows}) == list(range(SAMPLES + 1))
        assert len(rows) == 12 * (1 + SAMPLES)
        seed = derive_seed(0, idx, "evaluate-samples")
        for r in rows:
            a = first_operand(r["prompt_json"])
            if r["sample_index"] == 0:
                assert r["seed"] == derive_seed(0, idx, "evaluate")
                right = a % 2 == 0
            else:
                assert r["seed"] == seed
                right = r["sample_index"] - 1 < (a + seed) % 4
            assert (r["completion"] == r["reference"]) == right


def test_greedy_figures_training_and_selection_are_unchanged(runs):
    folder, conn = runs
    plain, sampled = run_id(conn, "plain"), run_id(conn, "sampled")

    def greedy(rid):
        return conn.execute(
            "select round_idx, n, passed, pass_at_1, truncated_share, mean_completion_tokens "
            "from evaluations where run_id = ? order by round_idx", [rid]).fetchall()

    def answers(rid, where):
        return conn.execute(
            f"select round_idx, task_id, purpose, sample_index, depth, completion, seed "
            f"from attempts where run_id = ? and {where} order by 1, 2, 3, 4, 5", [rid]).fetchall()

    assert [tuple(r) for r in greedy(plain)] == [tuple(r) for r in greedy(sampled)]
    # pass@1 is the greedy answers' alone: even first operands, whatever the samples did
    assert all(r["passed"] < r["n"] for r in greedy(sampled))
    for where in ("purpose = 'train'", "purpose = 'eval' and sample_index = 0"):
        assert ([tuple(r) for r in answers(plain, where)]
                == [tuple(r) for r in answers(sampled, where)])
    # held out stays held out: no train attempt of a held-out task, and the updater got the
    # round's train attempts only (the noop checkpoint counts what it was given)
    eval_tasks = {r[0] for r in conn.execute(
        "select task_id from attempts where run_id = ? and purpose = 'eval'", [sampled])}
    train_tasks = {r[0] for r in conn.execute(
        "select task_id from attempts where run_id = ? and purpose = 'train'", [sampled])}
    assert eval_tasks and not eval_tasks & train_tasks
    for idx, path in conn.execute("select round_idx, adapter_path from updates where run_id = ?",
                                  [sampled]):
        given = json.loads((folder / path / "update.json").read_text())["samples"]
        trained = conn.execute("select count(*) from attempts where run_id = ? and round_idx = ? "
                               "and purpose = 'train'", [sampled, idx]).fetchone()[0]
        assert given == trained
    # a failed sample is no regression: the view compares greedy answers only
    failed_samples = conn.execute(
        "select count(*) from attempt_results where run_id = ? and purpose = 'eval' "
        "and sample_index > 0 and not passed", [sampled]).fetchone()[0]
    assert failed_samples > 0
    assert conn.execute("select count(*) from regressions where run_id = ?",
                        [sampled]).fetchone()[0] == 0


def test_show_prints_pass_at_k_in_text_and_json(runs):
    folder, conn = runs
    rid = run_id(conn, "sampled")
    shown = loop_cli(folder, "show", "sampled", "--db", "loop.db", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    for r in data["rounds"]:
        ev = r["eval"]
        assert ev["samples"] == SAMPLES and ev["sample_temperature"] == 0.5
        assert ev["pass_at_k"] == pytest.approx(expected_pass_at_k(conn, rid, r["index"]))
    # the per-verifier held-out rate (shown for round 0) is the greedy answers', as pass@1 is
    math_rates = data["rounds"][0]["verifiers"]["math"]
    assert math_rates["eval_n"] == 12
    assert math_rates["eval_pass_rate"] == data["rounds"][0]["eval"]["pass_at_1"]
    plain = json.loads(loop_cli(folder, "show", "plain", "--db", "loop.db", "--json").output)
    assert all(r["eval"]["pass_at_k"] is None and r["eval"]["samples"] == 0
               for r in plain["rounds"])

    text = loop_cli(folder, "show", "sampled", "--db", "loop.db")
    assert text.exit_code == 0, text.output
    assert "pass@3" in text.output and f"n={SAMPLES}" in text.output
    for r in data["rounds"]:
        assert f"{r['eval']['pass_at_k']['2']:.3f}" in text.output
    assert "pass@3" not in loop_cli(folder, "show", "plain", "--db", "loop.db").output


def test_report_shows_pass_at_k(runs, tmp_path):
    folder, _ = runs
    result = loop_cli(folder, "report", "sampled", "--db", "loop.db", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    shown = json.loads(loop_cli(folder, "show", "sampled", "--db", "loop.db", "--json").output)
    assert "pass@1 (sampled)" in page and "pass@3 (sampled)" in page
    for r in shown["rounds"]:
        for value in r["eval"]["pass_at_k"].values():
            assert f"<td>{value:.3f}</td>" in page


def test_compare_shows_pass_at_k_beside_pass_at_1(runs):
    folder, _ = runs
    shown = json.loads(loop_cli(folder, "show", "sampled", "--db", "loop.db", "--json").output)
    out = loop_cli(folder, "compare", "plain", "sampled", "--db", "loop.db", "--json")
    assert out.exit_code == 0, out.output
    by_name = {r["name"]: r for r in json.loads(out.output)["runs"]}
    assert by_name["plain"]["pass_at_k"] == []
    got = by_name["sampled"]["pass_at_k"]
    assert [g["round"] for g in got] == [0, 1, 2]
    for g, r in zip(got, shown["rounds"]):
        assert g["pass_at_k"] == r["eval"]["pass_at_k"] and g["samples"] == SAMPLES
    text = loop_cli(folder, "compare", "plain", "sampled", "--db", "loop.db")
    assert text.exit_code == 0, text.output
    assert "held-out pass@k per round (sampled)" in text.output
    assert f"pass@2 (n={SAMPLES} T=0.5)" in text.output
    assert f"{shown['rounds'][2]['eval']['pass_at_k']['3']:.3f}" in text.output


def test_k_beyond_the_samples_stops_the_run_before_anything_is_written(tmp_path):
    (tmp_path / "task.yaml").write_text(tiny_task_yaml())
    result = loop_cli(tmp_path, "run", "task.yaml", "--db", "loop.db", *SETTINGS,
                      "--set", "evaluate.samples=2", "--set", "evaluate.pass_k=[1, 4]")
    assert result.exit_code != 0
    assert "evaluate: pass_k 4 is not within 1..samples (2)" in result.output
    assert not (tmp_path / "loop.db").exists()
