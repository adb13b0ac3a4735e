"""End to end: `loop run` through the CLI on the tiny in-process model, every stage for real
(hf backend, math verifier, binary reward, TRL SFT with LoRA), then `loop runs` / `loop show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app

REPO = Path(__file__).resolve().parent.parent

OBSERVER = '''
import json, os
import loop

LOG = os.environ["OBSERVER_LOG"]

@loop.hookimpl
def round_started(run_id, round_index, config):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"event": "started", "round": round_index}) + "\\n")

@loop.hookimpl
def round_finished(run_id, round_index, summary):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"event": "finished", "round": round_index,
                             "pass_at_1": summary["eval"]["pass_at_1"]}) + "\\n")
'''

TINY_SETTINGS = [
    "--set", "select.prompts_per_round=48", "--set", "generate.n=4",
    "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
    "--set", "evaluate.problems=60", "--set", "evaluate.max_new_tokens=6",
    "--set", "train.learning_rate=1e-3", "--set", "train.epochs=2",
    "--set", "train.lora.r=8", "--set", "train.lora.alpha=16", "--set", "train.max_length=32",
]


def _lora_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.slow
def test_loop_run_end_to_end_on_tiny_model(tmp_path, weak_adder_dir, tiny_task_file, monkeypatch):
    plugins = tmp_path / "observers"
    plugins.mkdir()
    (plugins / "observer.py").write_text(OBSERVER)
    (plugins / "broken_observer.py").write_text(
        "import loop\n\n@loop.hookimpl\ndef round_started(round_index):\n"
        "    raise RuntimeError('observer bug')\n")
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("OBSERVER_LOG", str(log))
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(tiny_task_file), "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
        "--model", str(weak_adder_dir), "--rounds", "2", "--name", "e2e", "--db", str(db),
        "--plugins-dir", str(plugins), *TINY_SETTINGS,
        "--set", "train.options.references=unsolved",
    ])
    assert result.exit_code == 0, result.output
    assert "held-out pass@1" in result.output  # the per-round lines and final table
    # A failing observer is reported and the run goes on.
    assert "plugin 'file:broken_observer.py' failed in round_started: RuntimeError: observer bug" \
        in result.output

    import sqlite_utils

    conn = sqlite_utils.Database(db)
    counts = {t: conn[t].count for t in ("runs", "rounds", "tasks", "attempts", "verdicts",
                                         "rewards", "mistakes", "updates", "evaluations")}
    assert counts["runs"] == 1 and counts["rounds"] == 3 and counts["evaluations"] == 3
    assert counts["updates"] == 2
    train = conn.execute("select count(*) from attempts where purpose='train'").fetchone()[0]
    evals = conn.execute("select count(*) from attempts where purpose='eval'").fetchone()[0]
    assert train == 2 * 48 * 4 and evals == 3 * 60
    assert counts["verdicts"] == train + evals  # one verifier
    assert counts["rewards"] == train
    assert counts["mistakes"] > 0 and counts["tasks"] == 2 * 48 + 60
    run = next(conn["runs"].rows)
    assert run["status"] == "finished"
    config = json.loads(run["config_json"])
    assert config["rounds"] == 2 and config["seed"] == 0 and config["model"] == str(weak_adder_dir)
    assert json.loads(run["versions_json"])["trl"]

    # Round 0 evaluates the untouched model; each later round trains an adapter that changed.
    rounds = list(conn["rounds"].rows_where(order_by="idx"))
    assert [r["stage"] for r in rounds] == ["done"] * 3
    assert rounds[0]["model_out"] is None and rounds[1]["model_in"] is None
    assert rounds[2]["model_in"] == rounds[1]["model_out"]
    first, second = Path(rounds[1]["model_out"]), Path(rounds[2]["model_out"])
    w1, w2 = _lora_tensors(first), _lora_tensors(second)
    lora_b = [k for k in w1 if "lora_B" in k]
    assert lora_b and all(w1[k].abs().sum() > 0 for k in lora_b)  # PEFT starts B at zero
    assert any((w1[k] - w2[k]).abs().sum() > 0 for k in w1)
    updates = list(conn["updates"].rows_where(order_by="round_idx"))
    assert all(u["dataset_size"] > 0 and len(u["adapter_sha256"]) == 64 for u in updates)
    assert all(json.loads(u["metrics_json"])["steps"] > 0 for u in updates)
    # sft's `references: unsolved`: each update also trained on the one-line solution of every
    # prompt of its round that no sample solved (arithmetic tasks carry one), train tasks only
    unsolved = dict(conn.execute(
        "select round_idx, sum(solved = 0) from (select a.round_idx, a.task_id, max(v.passed) "
        "as solved from attempts a join verdicts v on v.attempt_id = a.id where a.purpose = "
        "'train' group by a.round_idx, a.task_id) group by round_idx").fetchall())
    assert sum(unsolved.values()) > 0
    assert [json.loads(u["metrics_json"])["reference_rows"] for u in updates] == \
        [unsolved[u["round_idx"]] for u in updates]
    assert not list(Path(run["run_dir"]).glob(".tmp-*"))  # no half-written checkpoint left

    # Observers saw each round start and finish, in order.
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["round"]) for e in events] == [
        ("started", 0), ("finished", 0), ("started", 1), ("finished", 1), ("started", 2),
        ("finished", 2)]

    shown = CliRunner().invoke(app, ["show", "e2e", "--db", str(db), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert set(data["run"]) >= {"id", "name", "status", "task", "model"}
    assert data["run"]["status"] == "finished" and data["run"]["name"] == "e2e"
    assert [r["index"] for r in data["rounds"]] == [0, 1, 2]
    for r in data["rounds"]:
        assert set(r) >= {"index", "stage", "train", "eval", "timings", "tokens_per_s"}
        assert set(r["train"]) >= {"prompts", "attempts", "passed"}
        assert set(r["eval"]) >= {"n", "pass_at_1"} and r["eval"]["n"] == 60
    assert data["rounds"][1]["train"] == {**data["rounds"][1]["train"], "prompts": 48,
                                          "attempts": 192}
    assert data["rounds"][1]["timings"]["generate"] > 0
    assert data["rounds"][1]["tokens_per_s"]["generate"] > 0
    assert [e["pass_at_1"] for e in events if e["event"] == "finished"] == [
        r["eval"]["pass_at_1"] for r in data["rounds"]]

    # Where the time went: the backend's and the trainer's own clocks split each stage into
    # work and overhead; the round's clock covers its stages and the gaps between them.
    for r in data["rounds"]:
        time = r["time"]
        stages = time["stages"]
        assert time["wall_seconds"] >= sum(s["seconds"] for s in stages.values()) - 1e-6
        assert time["overhead_seconds"] == pytest.approx(
            time["wall_seconds"] - time["work_seconds"], abs=1e-3)
        assert 0 < time["overhead_share"] < 1
        sampled = ["evaluate"] + (["generate", "train"] if r["index"] else [])
        for name in sampled:
            stage = stages[name]
            assert stage["reported"] and 0 < stage["work_seconds"] <= stage["seconds"], name
            # generation samples from the session the previous evaluation opened on the same
            # checkpoint (loop.kept_session): it loads nothing; the others load their model
            if name == "generate":
                assert stage["load_seconds"] == 0, name
            else:
                assert stage["load_seconds"] > 0, name
    assert data["run"]["resumes"] == 0
    # every round's answers were made searchable when the round ended (loop.search_index)
    assert conn.execute("select indexed_rowid, stale from search_index where fts = "
                        "'attempts_fts'").fetchone() == (
        conn.execute("select max(rowid) from attempts").fetchone()[0], 0)
    assert data["time"]["wall_seconds"] >= data["time"]["rounds_seconds"] > 0

    listed = CliRunner().invoke(app, ["runs", "--db", str(db), "--json"])
    assert json.loads(listed.output) == [{"id": run["id"], "name": "e2e", "status": "finished",
                                          "task": "arithmetic", "created": run["created"]}]
    table = CliRunner().invoke(app, ["show", run["id"][:10], "--db", str(db)])
    assert table.exit_code == 0 and "pass@1" in table.output
    assert "where the time went" in table.output and "overhead" in table.output
    assert f"{data['rounds'][2]['eval']['pass_at_1']:.3f}" in table.output


def test_show_unknown_run_is_one_line(tmp_path):
    from loop.store import Store

    db = tmp_path / "s.db"
    Store.open(db)
    result = CliRunner().invoke(app, ["show", "nope", "--db", str(db)])
    assert result.exit_code == 1 and "no run 'nope'" in result.output


def test_show_without_store(tmp_path):
    result = CliRunner().invoke(app, ["runs", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no store at" in result.output
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto", "grpo", "nft", "redi"])
def test_every_update_method_runs_a_round_from_the_store(tmp_path, weak_adder_dir, tiny_task_file,
                                                        method):
    """`loop run --method M`: the updater builds its data from the round's stored attempts,
    trains a LoRA adapter that is published as the round's model, and logs its dataset and
    loss to `updates`; group methods train on the stored sampling log-probs."""
    db = tmp_path / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(tiny_task_file), "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
        "--model", str(weak_adder_dir), "--rounds", "1", "--name", method, "--db", str(db),
        "--method", method, *TINY_SETTINGS, "--set", "train.max_steps=3",
        # fewer prompts and held-out problems than the end-to-end run: the update is the subject
        "--set", "select.prompts_per_round=16", "--set", "evaluate.problems=8",
    ])
    assert result.exit_code == 0, result.output
    shown = json.loads(CliRunner().invoke(app, ["show", method, "--db", str(db), "--json"]).output)
    update = shown["rounds"][1]["update"]
    assert update["method"] == method and update["dataset_size"] > 0
    metrics = update["metrics"]
    assert metrics["steps"] == 3 and metrics["grad_norm_mean"] > 0
    assert metrics["loss_first"] is not None and metrics["train_tokens"] > 0
    if method in ("grpo", "nft", "redi"):
        # nft's ratio is against the sampling policy; grpo's (by default) against TRL's own
        assert metrics["groups"] > 0 and metrics["behaviour_logprobs"] is (method == "nft")
        assert metrics["dataset_size"] == 4 * metrics["groups"]
    weights = _lora_tensors(next(tmp_path.glob("**/round-1/adapter")))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
