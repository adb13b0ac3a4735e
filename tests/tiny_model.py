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
