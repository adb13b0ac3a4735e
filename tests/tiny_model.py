"""A tiny Llama and a character-level tokenizer, built in-process (no download), for fast real loops.

The tokenizer has one token per printable ASCII character plus <pad>/<bos>/<eos>/<unk> and a
minimal chat template (messages' contents concatenated; an assistant turn ends with <eos>), so the
`hf` backend and TRL's conversational datasets treat it like any chat model. `weak_adder` trains the
1 M-parameter model briefly on 2-digit addition ("12+35=" -> "47") until its greedy exact match
reaches a low bar, which gives the loop a model that is sometimes right: the state self-improvement
starts from. Results are cached on disk (LOOP_TEST_CACHE, default ~/.cache/loop-tests).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
)
VERSION = "v1"


def test_cache() -> Path:
    return Path(os.environ.get("LOOP_TEST_CACHE") or Path.home() / ".cache" / "loop-tests")


def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(i) for i in range(32, 127)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def random_tiny_model(out: Path, seed: int = 0, hidden: int = 128, layers: int = 4) -> Path:
    """Save a random-weight tiny Llama + tokenizer to `out` (an HF folder) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _exact_match(model, tok, problems: list[tuple[int, int]]) -> float:
    import torch

    tok.padding_side = "left"
    enc = tok([f"{a}+{b}=" for a, b in problems], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == str(a + b) for t, (a, b) in zip(texts, problems)) / len(problems)


def weak_adder(target: float = 0.15, max_steps: int = 3000, seed: int = 0) -> Path:
    """A tiny model trained on 2-digit addition until greedy exact match >= `target` (cached)."""
    out = test_cache() / f"tiny-adder-{VERSION}-{seed}-{target}"
    if (out / "config.json").is_file():
        return out
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    random_tiny_model(tmp, seed=seed)
    tok = char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    rng = random.Random(1000 + seed)  # not the task's seed: training data ≠ the tests' eval split
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    probe, train = pairs[:200], pairs[200:3200]
    data = Dataset.from_list([{"prompt": f"{a}+{b}=", "completion": f"{a + b}"} for a, b in train])

    class StopAtTarget(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % 50 == 0:
                model.eval()
                reached = _exact_match(model, tok, probe) >= target
                model.train()
                if reached:
                    control.should_training_stop = True

    args = SFTConfig(
        output_dir=str(tmp / "_trainer"), per_device_train_batch_size=64, learning_rate=2e-3,
        lr_scheduler_type="constant_with_warmup", warmup_steps=50, max_steps=max_steps,
        logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, max_length=32,
        completion_only_loss=True, disable_tqdm=True, seed=seed, bf16=False,
        gradient_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         callbacks=[StopAtTarget()])
    trainer.train()
    shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def tiny_task_yaml(train_size: int = 200, eval_size: int = 40, critics: list[str] | None = None) -> str:
    """A task file for the tiny adder: 2-digit additions in its bare "a+b=" format."""
    text = (f'source: arithmetic\noptions: {{digits: 2, operations: ["+"], train_size: {train_size}, '
            f'eval_size: {eval_size}, prompt: "{{a}}{{op}}{{b}}=",\n          system_prompt: null}}\n'
            "verifiers: [math]\nrewards: [binary]\n")
    if critics:
        text += f"critics: [{', '.join(critics)}]\n"
    return text


# ----- scripted doubles for bookkeeping tests (no model: loop.testing) ------------------------

ADDER_PLUGIN = '''
"""A scripted backend for 2-digit addition ("12+35=" -> "47"): right for some prompts, wrong in
several ways for others. Which answer a sample gets depends on the question, the turn, the sample
index, the stage's seed and temperature, and the content of the round's checkpoint, so a resume
that used another seed or model would store other rows."""
import hashlib
import re
from pathlib import Path

import loop
from loop.testing import ScriptedBackend, ScriptedSession


class Adder(ScriptedBackend):
    name = "adder"

    def open(self, model, options=None):
        tag = Path(model.adapter, "update.json").read_text() if model.adapter else "base"
        session = ScriptedSession(lambda prompt, k, sampling: answer(prompt, k, sampling, tag),
                                  model)
        self.sessions.append(session)
        return session


def answer(prompt, k, sampling, tag):
    question = next(m["content"] for m in prompt if m["role"] == "user")
    a, b = map(int, re.match(r"\\s*(\\d+)\\s*\\+\\s*(\\d+)", question).groups())
    turn = sum(m["role"] == "assistant" for m in prompt)
    key = f"{question}|{turn}|{k}|{sampling.seed}|{sampling.temperature}|{tag}"
    pick = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 6
    return [str(a + b), str(a + b), str(a + b + 1), str(a * b), "none", "1234567890"][pick]


@loop.hookimpl
def register_backends(register):
    register(Adder())
'''


def write_adder_plugin(folder: Path) -> Path:
    """Write the `adder` scripted backend (ADDER_PLUGIN) as a loose plugin file into `folder`
    (for --plugins-dir / LOOP_PLUGINS_DIR) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adder.py").write_text(ADDER_PLUGIN)
    return folder


# `loop run` settings that put a run on the doubles: the adder backend, the noop update method.
SCRIPTED_SETTINGS = ["--model", "scripted-adder", "--set", "backend.name=adder",
                     "--method", "noop"]


def scripted_run(folder: Path, *args: str, task_text: str | None = None, name: str = "r",
                 plugins: Path | None = None, command: str = "run"):
    """`loop run` in this process (typer's CliRunner) on the doubles: the `adder` backend
    (written into `plugins`, default folder/plugins) and the `noop` update method, with the tiny
    adder's task file (or `task_text`) and the store folder/loop.db. Returns (the CLI result,
    a sqlite3 connection to the store with sqlite3.Row rows). `command="resume"` resumes run
    `name` instead (args are then extra CLI arguments)."""
    import sqlite3

    from typer.testing import CliRunner

    from loop.cli import app

    plugins = write_adder_plugin(plugins or folder / "plugins")
    db = folder / "loop.db"
    if command == "resume":
        cli = ["resume", name, "--db", str(db), "--plugins-dir", str(plugins), *args]
    else:
        task = folder / "task.yaml"
        task.write_text(task_text if task_text is not None else tiny_task_yaml())
        cli = ["run", str(task), "--name", name, "--db", str(db), "--plugins-dir", str(plugins),
               *SCRIPTED_SETTINGS, *args]
    result = CliRunner().invoke(app, cli)
    conn = sqlite3.connect(db) if db.exists() else None
    if conn is not None:
        conn.row_factory = sqlite3.Row
    return result, conn
