"""`loop run` with `backend.name=openai` through the CLI, against a server in the test process
that adds correctly: options are validated and endpoints checked before anything is written, the
key stays out of the store, and a trained round's adapter is loaded into the server."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import sqlite_utils
from openai_fake_server import FakeOpenAIServer, free_port
from typer.testing import CliRunner

from loop.cli import app
from loop.store import unpack_logprobs

SECRET = "sk-never-store-me-1234"


def adder(messages, k, model) -> str:
    a, b = re.fullmatch(r"(\d+)\+(\d+)=", messages[-1]["content"]).groups()
    return str(int(a) + int(b))


@pytest.fixture(autouse=True)
def load_openai_plugin(isolated_env, monkeypatch):
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", os.environ["LOOP_LOAD_PLUGINS"] + ",openai")


def run(task_file, *args: str, db: Path):
    return CliRunner().invoke(app, ["run", str(task_file), "--db", str(db),
                                    "--set", "backend.name=openai", *args])


def test_eval_only_run_against_a_server(tmp_path, tiny_task_file, monkeypatch):
    monkeypatch.setenv("OPENAI_TEST_KEY", SECRET)
    db = tmp_path / "store" / "loop.db"
    with FakeOpenAIServer(models=("adder",), answer=adder) as server:
        result = run(tiny_task_file, "--model", "adder", "--rounds", "0", "--name", "remote",
                     "--set", f"backend.options.endpoints=[{server.url}]",
                     "--set", "backend.options.api_key_env=OPENAI_TEST_KEY",
                     "--set", "evaluate.problems=20", db=db)
        assert result.exit_code == 0, result.output
        chats = server.chat_requests()
    assert len(chats) == 20
    assert {r["headers"]["Authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert server.requests[0]["path"] == "/v1/models"  # checked before the run started
    shown = json.loads(CliRunner().invoke(app, ["show", "remote", "--db", str(db),
                                                "--json"]).output)
    assert shown["rounds"][0]["eval"]["pass_at_1"] == 1.0  # the server adds correctly
    conn = sqlite_utils.Database(db)
    attempt = next(conn.query("select * from attempts where purpose = 'eval' limit 1"))
    assert json.loads(attempt["token_ids_json"]) == [ord(c) for c in attempt["completion"]]
    assert len(unpack_logprobs(attempt["logprobs_f32"])) == len(attempt["completion"])
    config = json.loads(next(conn.query("select config_json from runs"))["config_json"])
    assert config["backend"]["options"]["api_key_env"] == "OPENAI_TEST_KEY"
    assert SECRET.encode() not in db.read_bytes()


def test_a_key_in_the_config_is_refused(tmp_path, tiny_task_file):
    result = run(tiny_task_file, "--set", "backend.options.endpoints=[http://127.0.0.1:1/v1]",
                 "--set", f"backend.options.api_key={SECRET}", db=tmp_path / "loop.db")
    assert result.exit_code == 2
    assert "backend.options: api_key: Value error, a key in the config would be stored" \
        in result.output
    assert not (tmp_path / "loop.db").exists()


def test_unreachable_endpoint_fails_before_the_run_exists(tmp_path, tiny_task_file):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run(tiny_task_file, "--set", f"backend.options.endpoints=[{url}]",
                 "--set", "backend.options.retries=1", "--set", "backend.options.backoff_s=0.01",
                 db=tmp_path / "loop.db")
    assert result.exit_code == 2
    assert f"model error: endpoint {url} unreachable after 2 tries (connection refused)" \
        in " ".join(result.output.split())


def test_a_model_the_server_does_not_serve_is_named(tmp_path, tiny_task_file):
    with FakeOpenAIServer(models=("served-a", "served-b")) as server:
        result = run(tiny_task_file, "--model", "other",
                     "--set", f"backend.options.endpoints=[{server.url}]",
                     db=tmp_path / "loop.db")
    assert result.exit_code == 2
    assert (f"endpoint {server.url} does not serve model 'other' (it serves: served-a, served-b); "
            "set backend.options.model to the served name") in " ".join(result.output.split())


@pytest.mark.slow
def test_a_trained_round_is_evaluated_through_its_runtime_adapter(tmp_path, tiny_model_dir,
                                                                  tiny_task_file):
    """Round 1 trains a real LoRA adapter on the tiny model (TRL SFT on the server's correct
    answers); its evaluation then loads that folder into the server and asks for it by name."""
    db = tmp_path / "store" / "loop.db"
    with FakeOpenAIServer(models=(str(tiny_model_dir),), answer=adder) as server:
        result = run(tiny_task_file, "--model", str(tiny_model_dir), "--rounds", "1",
                     "--set", f"backend.options.endpoints=[{server.url}]",
                     "--set", "select.prompts_per_round=8", "--set", "generate.n=2",
                     "--set", "evaluate.problems=10", "--set", "train.max_length=32",
                     "--set", "train.lora.r=8", db=db)
        assert result.exit_code == 0, result.output
    loads = [r["body"] for r in server.requests if r["path"] == "/v1/load_lora_adapter"]
    run_row = next(sqlite_utils.Database(db).query("select * from runs"))
    adapter = Path(run_row["run_dir"]) / "round-1" / "adapter"
    assert [body["lora_path"] for body in loads] == [str(adapter.resolve())]
    assert (adapter / "adapter_config.json").is_file()
    name = loads[0]["lora_name"]
    models = [r["body"]["model"] for r in server.chat_requests()]
    # round 0 eval and round 1 generation on the base model, round 1 eval on the adapter
    assert models == [str(tiny_model_dir)] * (10 + 8) + [name] * 10
    assert server.adapters == {}  # unloaded when the evaluation finished


def test_a_fixed_server_refuses_training_rounds_before_the_run_exists(tmp_path, tiny_task_file):
    db = tmp_path / "store" / "loop.db"
    with FakeOpenAIServer(models=("adder",), answer=adder) as server:
        result = run(tiny_task_file, "--model", "adder", "--rounds", "1",
                     "--set", f"backend.options.endpoints=[{server.url}]",
                     "--set", "backend.options.lora=fixed", db=db)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: backend error: openai cannot load this run's adapters (its server's model is "
        "fixed), so this config is evaluation-only: use --rounds 0"]
    assert not db.exists() or "runs" not in sqlite_utils.Database(db).table_names() or \
        sqlite_utils.Database(db)["runs"].count == 0
