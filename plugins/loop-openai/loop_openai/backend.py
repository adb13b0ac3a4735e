"""The `openai` generation backend: any OpenAI-compatible chat-completions server, or a pool of
them (e.g. several `vllm serve`), with the round's LoRA adapter loaded at runtime.

A session sends one request per prompt (its n samples in that request) to the endpoints
round-robin, at most `max_concurrency` in flight per endpoint, and returns the answers in prompt
order. Requests run as asyncio tasks on httpx inside `generate()`; the first request that fails
for good cancels the others and its one-line `EndpointError` is raised. A backend never writes to
the store.

Token-exact episodes (`token_exact`, default auto): `chat` is the local tokenizer's chat format
when the servers take token-id prompts on `POST /completions` and return the sampled ids
(vLLM's `return_token_ids`), which a first one-token request to each endpoint finds out the
first time an episode asks; `generate_ids` then continues each episode's ids there. Otherwise
`chat` is None, episodes go through `generate` on their messages, and one logged line says why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from typing import Any, Awaitable, Callable, TypeVar

import httpx
from pydantic import BaseModel

import loop
from loop_openai import lora
from loop_openai.completions import (
    Completion,
    ProtocolError,
    chat_request,
    completion_request,
    read_completion,
    read_token_completion,
    request_seed,
    samples_to_request,
)
from loop_openai.options import OpenAIOptions
from loop_openai.pool import EndpointPool
from loop_openai.tokens import LocalTokenizer
from loop_openai.transport import EndpointError, RetryPolicy, send

T = TypeVar("T")

log = logging.getLogger("loop_openai")
_UNDECIDED = object()  # `OpenAISession.chat` before its first use
PROBE_MESSAGES: list[loop.Message] = [{"role": "user", "content": "Hi"}]
_fallbacks_noted: set[tuple[tuple[str, ...], str]] = set()  # logged once per process


class OpenAIBackend(loop.Backend):
    name = "openai"
    Options = OpenAIOptions

    @property
    def can_load_adapters(self) -> bool:
        """False with lora: fixed: such a run can only evaluate (--rounds 0). The engine may ask
        this before a run starts instead of failing at the first trained round."""
        options = getattr(self, "options", None)
        return options is None or options.lora == "runtime"

    def prepare(self, model: str) -> str:
        """Before a run starts: the API key's variable is set, and every endpoint answers and
        serves the model (GET /models), so a wrong URL or name fails before anything is
        written. Called on the run's own copy, which carries the validated options. Returns what
        updaters train: with `lora: runtime` the local folder of `model` where it names one
        (loop.resolve_model), else the reference unchanged."""
        options: OpenAIOptions | None = getattr(self, "options", None)
        if options is None:  # the registered instance, not a run's copy: nothing to check
            return model
        headers = auth_headers(options)
        served = options.model or model
        policy = retry_policy(options)
        pool = EndpointPool(options.endpoints, options.max_concurrency,
                            cooldown_s=options.backoff_s, cooldown_max_s=options.backoff_max_s)

        async def check() -> None:
            async with httpx.AsyncClient() as client:
                listings = await asyncio.gather(*(
                    send(client, pool, policy, "GET", "/models", headers=headers, url=url)
                    for url in options.endpoints))
            for endpoint, response in listings:
                names = _model_names(response)
                if names is not None and served not in names:
                    shown = ", ".join(sorted(names)[:5]) or "nothing"
                    raise EndpointError(
                        f"endpoint {endpoint.url} does not serve model {served!r} (it serves: "
                        f"{shown}); set backend.options.model to the served name")

        run_sync(check)
        # With runtime LoRA the run may train locally on the same base: updaters need its folder
        # (an evaluation-only run may name a model that exists only on the server).
        if options.lora == "runtime":
            try:
                return loop.resolve_model(model)
            except loop.ModelNotFound:
                pass
        return model

    def open(self, model: loop.ModelRef, options: BaseModel | None = None) -> "OpenAISession":
        if options is None:
            raise ValueError("the openai backend needs options (at least endpoints)")
        return OpenAISession(model, options)


class OpenAISession(loop.GenerationSession):
    """Generation on the servers for one model reference. With an adapter (lora: runtime) the
    adapter is loaded into every endpoint here and unloaded by `close()`."""

    def __init__(self, ref: loop.ModelRef, options: OpenAIOptions):
        started = time.perf_counter()
        self.options = options
        self.headers = auth_headers(options)
        self.policy = retry_policy(options)
        self.base_model = options.model or ref.base
        self.adapter_name: str | None = None
        self.last_pool: EndpointPool | None = None  # the latest generate()'s pool (diagnostics)
        self._tokenizer_path = options.tokenizer or ref.base
        self._tokenizer: LocalTokenizer | None | bool = False  # False: not looked for yet
        self._chat: Any = _UNDECIDED
        if ref.adapter:
            lora.check_servable(ref.adapter, options.lora)
            name = lora.fresh_name(ref.adapter)

            async def load() -> None:
                async with httpx.AsyncClient() as client:
                    await lora.load(client, self._pool(), self.policy, self.headers, name,
                                    ref.adapter)

            run_sync(load)
            self.adapter_name = name
        self.load_seconds = time.perf_counter() - started

    @property
    def model_name(self) -> str:
        """What requests name as `model`: the loaded adapter, else the served base model."""
        return self.adapter_name or self.base_model

    def generate(self, prompts: list[list[loop.Message]], sampling: loop.Sampling,
                 progress: Any = None,
                 batch_size: int | None = None) -> list[list[loop.Generation]]:
        """n generations per prompt, in prompt order. `progress(prompts=1, tokens=k)` is called
        as each prompt's answers arrive (k: tokens generated for it). `batch_size` is ignored:
        the servers batch; `max_concurrency` bounds the requests in flight."""
        if not prompts:
            return []
        return run_sync(lambda: self._generate_all(prompts, sampling, progress, self._one))

    @property
    def chat(self) -> loop.ChatFormat | None:
        """The chat format of token-exact episodes, or None (episodes then re-render their
        messages). Decided on first use; see `token_exact`."""
        if self._chat is _UNDECIDED:
            self._chat = self._token_path()
        return self._chat

    def generate_ids(self, prompts: list[list[int]], sampling: loop.Sampling,
                     progress: Any = None,
                     batch_size: int | None = None) -> list[list[loop.Generation]]:
        """n continuations of each token-id prompt (an episode's ids so far), in prompt order,
        through `POST /completions`: each sample's ids and log-probabilities exactly as the
        server returned them. Same progress, concurrency and errors as `generate`."""
        if not prompts:
            return []
        return run_sync(lambda: self._generate_all(prompts, sampling, progress, self._one_ids))

    def close(self) -> None:
        if self.adapter_name is None:
            return
        name, self.adapter_name = self.adapter_name, None

        async def unload() -> None:
            async with httpx.AsyncClient() as client:
                await lora.unload(client, self._pool(), self.policy, self.headers, name,
                                  self.options.endpoints)

        run_sync(unload)

    # ----- internals ---------------------------------------------------------------------------

    def _pool(self) -> EndpointPool:
        options = self.options
        return EndpointPool(options.endpoints, options.max_concurrency,
                            cooldown_s=options.backoff_s, cooldown_max_s=options.backoff_max_s)

    async def _generate_all(self, prompts: list[Any], sampling: loop.Sampling, progress: Any,
                            one: Callable[..., Awaitable[tuple[list[loop.Generation], int]]]
                            ) -> list[list[loop.Generation]]:
        pool = self.last_pool = self._pool()
        results: list[list[loop.Generation]] = [[] for _ in prompts]
        pending = iter(range(len(prompts)))
        limits = httpx.Limits(max_connections=pool.slots, max_keepalive_connections=pool.slots)

        async with httpx.AsyncClient(limits=limits) as client:
            async def worker() -> None:
                for i in pending:  # workers share one iterator: each prompt is taken once
                    results[i], tokens = await one(client, pool, prompts[i], sampling, i)
                    if progress:
                        progress(prompts=1, tokens=tokens)

            await first_error([worker() for _ in range(min(pool.slots, len(prompts)))])
        return results

    async def _one(self, client: httpx.AsyncClient, pool: EndpointPool,
                   messages: list[loop.Message], sampling: loop.Sampling,
                   index: int) -> tuple[list[loop.Generation], int]:
        expected = samples_to_request(sampling)
        body = chat_request(self.model_name, messages, sampling,
                            request_seed(sampling.seed, index), self.options.request_token_ids,
                            self.options.extra_body)
        try:
            endpoint, response = await send(client, pool, self.policy, "POST",
                                            "/chat/completions", body, self.headers)
        except EndpointError as exc:
            if exc.status == 400 and "token_ids" in str(exc):
                raise EndpointError(f"{exc} (a server without vLLM's extensions: set "
                                    "backend.options.request_token_ids=false)", 400) from None
            raise
        generations = self._generations(read_completion(response, endpoint.url, expected),
                                        messages)
        tokens = sum(g.completion_tokens for g in generations)
        if expected < sampling.n:  # greedy: every sample is the same answer
            generations = generations * sampling.n
        return generations, tokens

    async def _one_ids(self, client: httpx.AsyncClient, pool: EndpointPool, ids: list[int],
                       sampling: loop.Sampling, index: int) -> tuple[list[loop.Generation], int]:
        expected = samples_to_request(sampling)
        body = completion_request(self.model_name, ids, sampling,
                                  request_seed(sampling.seed, index), self.options.extra_body)
        endpoint, response = await send(client, pool, self.policy, "POST", "/completions", body,
                                        self.headers)
        completion = read_token_completion(response, endpoint.url, expected, ids)
        generations = [loop.Generation(text=a.text, token_ids=a.token_ids or [],
                                       prompt_tokens=len(ids), finish_reason=a.finish_reason,
                                       logprobs=a.logprobs) for a in completion.answers]
        tokens = sum(g.completion_tokens for g in generations)
        if expected < sampling.n:  # greedy: every sample is the same answer
            generations = generations * sampling.n
        return generations, tokens

    def _token_path(self) -> loop.ChatFormat | None:
        """The local tokenizer's chat format when token-exact episodes work here, else None
        (after logging why, once), or an EndpointError with `token_exact: true`."""
        mode = self.options.token_exact
        if mode is False:
            return None
        chat, reason = None, None
        tokenizer = self._local_tokenizer() if self.options.request_token_ids else None
        if not self.options.request_token_ids:
            reason = "backend.options.request_token_ids is false"
        elif tokenizer is None:
            reason = (f"no local tokenizer at {self._tokenizer_path!r} to render them (set "
                      "backend.options.tokenizer to the served model's tokenizer folder)")
        else:
            chat = tokenizer.chat()
            try:
                ids = chat.prompt_ids(PROBE_MESSAGES)
            except Exception as exc:  # noqa: BLE001 - a template that cannot render a prompt
                reason = f"the tokenizer's chat template fails: {' '.join(str(exc).split())}"
            else:
                reason = run_sync(lambda: self._probe(ids))
        if reason is None:
            return chat
        if mode is True:
            raise EndpointError(f"token-exact episodes (backend.options.token_exact: true) "
                                f"cannot run: {reason}")
        key = (tuple(self.options.endpoints), reason)
        if key not in _fallbacks_noted:
            _fallbacks_noted.add(key)
            log.warning("openai backend: episodes re-render their messages each turn, so they "
                        "are not token-exact (fine to evaluate, not to train on): %s", reason)
        return None

    async def _probe(self, ids: list[int]) -> str | None:
        """Ask every endpoint for one token continuing `ids` on the token path; None when all
        return the ids as asked, else why not. A server that cannot be reached raises."""
        body = completion_request(self.model_name, ids,
                                  loop.Sampling(n=1, temperature=0.0, max_new_tokens=1), 0,
                                  self.options.extra_body)
        pool = self._pool()

        async def one(client: httpx.AsyncClient, url: str) -> str | None:
            try:
                endpoint, response = await send(client, pool, self.policy, "POST",
                                                "/completions", body, self.headers, url=url)
                read_token_completion(response, endpoint.url, 1, ids)
            except ProtocolError as exc:  # it answered, but not with what the path needs
                return str(exc)
            except EndpointError as exc:
                if exc.status is not None:  # it refused (no such route, no token prompts)
                    return str(exc)
                raise
            return None

        async with httpx.AsyncClient() as client:
            reasons = await asyncio.gather(*(one(client, url) for url in self.options.endpoints))
        return next((r for r in reasons if r), None)

    def _generations(self, completion: Completion,
                     messages: list[loop.Message]) -> list[loop.Generation]:
        prompt_tokens = completion.prompt_tokens
        if prompt_tokens is None:
            tokenizer = self._local_tokenizer()
            prompt_tokens = tokenizer.prompt_length(messages) if tokenizer else 0
        out = []
        for answer in completion.answers:
            token_ids = answer.token_ids
            if token_ids is None:
                tokenizer = self._local_tokenizer()
                token_ids = tokenizer.completion_ids(answer.text) if tokenizer else []
            out.append(loop.Generation(text=answer.text, token_ids=token_ids,
                                       prompt_tokens=prompt_tokens,
                                       finish_reason=answer.finish_reason,
                                       logprobs=answer.logprobs))
        return out

    def _local_tokenizer(self) -> LocalTokenizer | None:
        if self._tokenizer is False:  # looked for once, on first need
            self._tokenizer = LocalTokenizer.load(self._tokenizer_path)
        return self._tokenizer


def auth_headers(options: OpenAIOptions) -> dict[str, str]:
    if options.api_key_env is None:
        return {}
    key = os.environ.get(options.api_key_env)
    if not key:
        raise EndpointError(f"environment variable {options.api_key_env} (named by "
                            "backend.options.api_key_env) is not set")
    return {"Authorization": f"Bearer {key}"}


def retry_policy(options: OpenAIOptions) -> RetryPolicy:
    return RetryPolicy(retries=options.retries, backoff_s=options.backoff_s,
                       backoff_max_s=options.backoff_max_s, timeout_s=options.timeout_s)


def _model_names(response: httpx.Response) -> set[str] | None:
    """The model ids a GET /models lists; None when the answer is not such a list (the server
    is then not checked: not every compatible server implements it the same way)."""
    try:
        data = response.json()["data"]
        return {str(item["id"]) for item in data}
    except (ValueError, KeyError, TypeError):
        return None


async def first_error(coroutines: list[Awaitable[None]]) -> None:
    """Run the coroutines as tasks; the first exception cancels the rest and is raised as
    itself (not wrapped in an ExceptionGroup), so the caller sees one clear error."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as grouped:
        first = grouped.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code. Inside a running event loop (a
    notebook, an async application) it runs on a helper thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(lambda: asyncio.run(make())).result()
