"""A stand-in for the `vllm` package at the import boundary of `loop_vllm.worker`: enough of
`LLM`, `SamplingParams`, `vllm.platforms` and `vllm.lora.request` for the worker to load, answer
requests and report progress, with no model. Put its folder on the worker's PYTHONPATH (never
the test process's: the main venv has no vllm and must not seem to).

Answers are deterministic functions of the request, so tests can predict them:
sample k of a prompt (token ids p) under adapter id a is `fake_answer(p, k, seed, a)`, ending with
the first stop token unless max_tokens cuts it ("length"); each sampled token t has the
log-probability `fake_logprob(t)`. Every request is appended as a JSON line to $FAKE_VLLM_LOG.
$FAKE_VLLM_MODE=misaligned returns one log-probability too few per sample.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

__version__ = "0.0+fake"


def fake_answer(prompt: list[int], k: int, seed: int, adapter: int) -> list[int]:
    """Three content tokens (ids 4-93, the tiny test tokenizer's characters)."""
    h = (sum(prompt) * 31 + len(prompt) * 7 + k * 13 + seed + adapter * 1000) % 90
    return [4 + (h + 17 * j) % 90 for j in range(3)]


def fake_logprob(token: int) -> float:
    return -((token % 5) + 1) / 10


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _Logprob:
    def __init__(self, value: float):
        self.logprob = value


class _Engine:
    def __init__(self, max_model_len: int):
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.engine_core = SimpleNamespace(shutdown=lambda: None)

    def step(self, outputs):  # the worker wraps this to report progress
        return outputs


class LLM:
    def __init__(self, model: str, **kwargs):
        self.model = model
        self.kwargs = kwargs
        self.llm_engine = _Engine(kwargs.get("max_model_len") or 128)
        self.prefix_resets = 0

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        misaligned = os.environ.get("FAKE_VLLM_MODE") == "misaligned"
        adapter = lora_request.lora_int_id if lora_request is not None else 0
        outputs = []
        for prompt, p in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            if len(ids) > self.llm_engine.model_config.max_model_len:
                raise ValueError(f"prompt of {len(ids)} tokens is longer than max_model_len")
            completions = []
            for k in range(p.n):
                tokens = fake_answer(ids, k, p.seed, adapter) + list(p.stop_token_ids[:1])
                finish = "stop"
                if len(tokens) > p.max_tokens:
                    tokens, finish = tokens[:p.max_tokens], "length"
                steps = [{t: _Logprob(fake_logprob(t))} for t in tokens]
                completions.append(SimpleNamespace(
                    index=k, token_ids=tokens, finish_reason=finish,
                    logprobs=steps[:-1] if misaligned else steps))
            outputs.append(SimpleNamespace(finished=True, outputs=completions))
        log = os.environ.get("FAKE_VLLM_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps({
                    "prompts": prompts, "logprobs": [p.logprobs for p in params],
                    "seeds": [p.seed for p in params], "max_tokens": [p.max_tokens for p in params],
                    "lora": None if lora_request is None else {
                        "name": lora_request.lora_name, "id": lora_request.lora_int_id,
                        "path": lora_request.lora_path},
                    "engine": {k: v for k, v in self.kwargs.items()
                               if isinstance(v, (str, int, float, bool, type(None)))},
                }) + "\n")
        return self.llm_engine.step(outputs)
