"""Episodes end to end on real models: the tiny in-process model through the hf backend, a
gym-style text environment and TRL's SFT (every stage for real), and the default model on the
calculator task (its episodes' ids are the chat template's own rendering)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app

REPO = Path(__file__).resolve().parent.parent

# One observation and two rewards; their sum (1.0) passes the `environment` verdict when the
# model's second turn ends by itself, and the environment's tokens sit between the model's turns.
TWO_TURNS = '''
class Again:
    def __init__(self, **fields):
        self.turn = 0

    def reset(self):
        return None

    def step(self, text):
        self.turn += 1
        return ("Again." if self.turn == 1 else None), 0.5, self.turn >= 2, {}
'''


@pytest.mark.slow
def test_tiny_model_episodes_are_sampled_stored_and_trained_token_exactly(
        tmp_path, weak_adder_dir, tiny_task_file):
    (tmp_path / "again.py").write_text(TWO_TURNS)
    db = tmp_path / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(tiny_task_file), "--model", str(weak_adder_dir), "--rounds", "1",
        "--name", "ep", "--db", str(db),
        "--set", f"task.environment.gym={tmp_path / 'again.py'}:Again",
        "--set", "task.verifiers=[]", "--set", "select.prompts_per_round=8",
        "--set", "generate.n=2", "--set", "generate.temperature=1.0",
        "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=6",
        "--set", "evaluate.max_new_tokens=6", "--set", "train.max_length=64",
        "--set", "train.lora.r=4", "--set", "train.lora.alpha=8",
    ])
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    turns = con.execute(
        "select a.id, t.role, t.token_ids_json, t.trained from turns t join attempts a on "
        "a.id = t.attempt_id where a.purpose = 'train' order by a.id, t.idx").fetchall()
    by_attempt: dict[str, list] = {}
    for attempt_id, role, ids, trained in turns:
        by_attempt.setdefault(attempt_id, []).append((role, json.loads(ids), trained))
    assert len(by_attempt) == 8 * 2
    assert all([r for r, _, _ in t] == ["assistant", "user", "assistant"]
               for t in by_attempt.values())
    # the observation's tokens are the template's rendering of it, never trained
    assert all(t[1][2] == 0 and t[1][1] == [ord(c) - 28 for c in "Again."]
               for t in by_attempt.values())
    # the rewards' sum (1.0) passes exactly the episodes that reached the end of the game (a
    # first turn cut at max_new_tokens ends its episode with `length`, reward 0.5 or none)
    judged = con.execute(
        "select a.purpose, a.end_reason, a.env_reward, v.passed from verdicts v join attempts a "
        "on a.id = v.attempt_id where v.verifier = 'environment'").fetchall()
    assert len(judged) == 8 * 2 + 2 * 6
    assert all(passed == (end == "done") == (reward == 1.0) for _, end, reward, passed in judged)
    assert any(passed for purpose, _, _, passed in judged if purpose == "train")
    size, metrics = con.execute("select dataset_size, metrics_json from updates").fetchone()
    assert size > 0 and json.loads(metrics)["steps"] > 0
    assert json.loads(metrics)["episodes_truncated"] == 0
    shown = CliRunner().invoke(app, ["show", "ep", "--db", str(db), "--json"])
    rounds = json.loads(shown.output)["rounds"]
    ends = rounds[1]["episodes"]["generate"]["end_reasons"]
    assert sum(ends.values()) == 16 and ends["done"] == sum(
        p for purpose, _, _, p in judged if purpose == "train")


@pytest.mark.slow
def test_the_default_model_runs_calculator_episodes_token_exactly(tmp_path):
    """SmolLM2 with the calculator's worked exchange: some held-out episodes call the tool, the
    tool's results are stored, and each episode's ids decode to the template's rendering."""
    from transformers import AutoTokenizer

    from loop.models import resolve_model

    db = tmp_path / "loop.db"
    result = CliRunner().invoke(app, [
        "run", str(REPO / "tasks" / "calculator.yaml"), "--rounds", "0", "--db", str(db),
        "--set", "evaluate.problems=6", "--set", "evaluate.max_new_tokens=48"])
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    rows = con.execute("select id, prompt_ids_json, messages_json, end_reason from attempts"
                       ).fetchall()
    assert len(rows) == 6
    tool_results = con.execute("select text from turns where role = 'tool' and error is null"
                               ).fetchall()
    assert tool_results and all(text.isdigit() for (text,) in tool_results)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    for attempt_id, prompt_ids, messages, end in rows:
        turns = con.execute("select token_ids_json from turns where attempt_id = ? order by idx",
                            [attempt_id]).fetchall()
        ids = json.loads(prompt_ids) + [i for (t,) in turns for i in json.loads(t)]
        # the stored messages are the whole episode: the prompt, then every turn
        rendered = tokenizer.apply_chat_template(json.loads(messages), tokenize=False)
        decoded = tokenizer.decode(ids)
        # the ids as sampled and appended turn by turn are the template's own rendering of the
        # whole conversation (up to the template's newline after the last turn's end token)
        assert decoded.count("<|im_start|>") == rendered.count("<|im_start|>")
        if end == "answer":  # ended on its own end token
            assert decoded == rendered.removesuffix("\n")
        else:
            assert rendered.startswith(decoded.rsplit("<|im_start|>assistant\n", 1)[0])
