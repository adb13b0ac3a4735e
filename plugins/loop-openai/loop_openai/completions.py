"""The chat-completions protocol: the request body for one prompt, and the answers read back;
and, for token-exact episodes, the completions protocol on token ids (at the end of the file).

One request carries one prompt and asks for its `n` samples, each with the log-probability of
every sampled token (`logprobs: true, top_logprobs: 0`). Token ids are asked for with vLLM's
extensions: `return_tokens_as_token_ids` (each logprob entry's token reads "token_id:N") and
`return_token_ids` (newer vLLM: `token_ids` on each choice, `prompt_token_ids` on the response).
Servers that do not know these fields ignore them (vLLM logs them) or reject them (api.openai.com:
set `request_token_ids: false`). A server's answer that is not a chat completion is a
`ProtocolError`: retrying a misconfigured server does not help, so it is not retried.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

import loop
from loop_openai.transport import EndpointError

TOKEN_ID = re.compile(r"token_id:(\d+)")
# vLLM's stand-in for the log-probability of an impossible token (-inf is not valid JSON); a
# non-finite value from another server is stored as this too.
FLOOR_LOGPROB = -9999.0


class ProtocolError(EndpointError):
    """The server answered 2xx with something that is not the chat completion asked for."""


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed sent with prompt `prompt_index`: fixed by the sampling seed and the prompt's
    place, so a rerun draws the same samples whichever endpoint serves the request."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def samples_to_request(sampling: loop.Sampling) -> int:
    """Greedy decoding (temperature 0) gives one answer however often it is asked: request one
    and repeat it, as the `hf` backend does."""
    return sampling.n if sampling.temperature > 0 else 1


def chat_request(model: str, messages: list[loop.Message], sampling: loop.Sampling, seed: int,
                 request_token_ids: bool, extra_body: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": samples_to_request(sampling),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "logprobs": True,
        "top_logprobs": 0,
        "stream": False,
    }
    if request_token_ids:
        body["return_tokens_as_token_ids"] = True
        body["return_token_ids"] = True
    body.update(extra_body)
    return body


# ----- the response, as far as the backend reads it (other fields are ignored) -----------------

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TokenLogprob(_Lenient):
    token: str
    logprob: float | None = None


class _Logprobs(_Lenient):
    content: list[_TokenLogprob] | None = None


class _Message(_Lenient):
    content: str | None = None


class _Choice(_Lenient):
    index: int = 0
    message: _Message
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None
    token_ids: list[int] | None = None


class _Usage(_Lenient):
    prompt_tokens: int | None = None


class _ChatCompletion(_Lenient):
    choices: list[_Choice]
    usage: _Usage | None = None
    prompt_token_ids: list[int] | None = None


@dataclass(frozen=True)
class Answer:
    """One sample as the server gave it; `token_ids` and `logprobs` are None when it gave none."""

    text: str
    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class Completion:
    answers: list[Answer]
    prompt_tokens: int | None  # None: the server did not say


def _parse(response: httpx.Response, url: str, expected: int, model: type, what: str) -> Any:
    """The response as `model` with `expected` choices, or a ProtocolError with one line."""
    try:
        data = json.loads(response.content)
    except ValueError:
        start = " ".join(response.text[:60].split())
        raise ProtocolError(f"endpoint {url}: the answer is not JSON (starts with {start!r})")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ProtocolError(f"endpoint {url}: the answer is not {what}: {where}: "
                            f"{err['msg']}") from None
    if len(parsed.choices) != expected:
        raise ProtocolError(f"endpoint {url}: asked for {expected} answers (n), got "
                            f"{len(parsed.choices)}")
    return parsed


def read_completion(response: httpx.Response, url: str, expected: int) -> Completion:
    """The `expected` answers in a chat-completions response, in choice order."""
    parsed = _parse(response, url, expected, _ChatCompletion, "a chat completion")
    choices = sorted(parsed.choices, key=lambda c: c.index)
    prompt_tokens = parsed.usage.prompt_tokens if parsed.usage else None
    if prompt_tokens is None and parsed.prompt_token_ids is not None:
        prompt_tokens = len(parsed.prompt_token_ids)
    return Completion([_answer(c) for c in choices], prompt_tokens)


def _answer(choice: _Choice) -> Answer:
    entries = choice.logprobs.content if choice.logprobs else None
    token_ids = choice.token_ids
    if token_ids is None and entries:
        matches = [TOKEN_ID.fullmatch(e.token) for e in entries]
        if all(matches):
            token_ids = [int(m.group(1)) for m in matches]
    logprobs = None
    if entries is not None and all(e.logprob is not None for e in entries):
        logprobs = [e.logprob if math.isfinite(e.logprob) else FLOOR_LOGPROB for e in entries]
        if token_ids is not None and len(logprobs) != len(token_ids):
            logprobs = None  # not aligned with the tokens: useless for importance weights
    finish = "length" if choice.finish_reason == "length" else "stop"
    return Answer(choice.message.content or "", token_ids, logprobs, finish)


# ----- token ids in, token ids out: the (legacy) completions endpoint ---------------------------
#
# Token-exact episodes continue a list of token ids: `POST /completions` with `prompt` as that
# list (the OpenAI API accepts arrays of token ids) and vLLM's `return_token_ids`, which puts the
# sampled ids on each choice (`token_ids`) and the prompt's ids as the server used them
# (`prompt_token_ids`). `logprobs: 0` asks for the sampled token's log-probability only
# (`logprobs.token_logprobs`); `return_tokens_as_token_ids` writes `logprobs.tokens` as
# "token_id:N", a second copy of the ids that is checked against the first.

def completion_request(model: str, prompt_ids: list[int], sampling: loop.Sampling, seed: int,
                       extra_body: dict[str, Any]) -> dict[str, Any]:
    """The body for `sampling.n` continuations of a token-id prompt. `extra_body` comes first,
    so it can never change what the backend asks for (`echo`, a text prompt, ...)."""
    return {
        **extra_body,
        "model": model,
        "prompt": list(prompt_ids),
        "n": samples_to_request(sampling),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "logprobs": 0,
        "echo": False,
        "stream": False,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }


class _TextLogprobs(_Lenient):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None


class _TextChoice(_Lenient):
    index: int = 0
    text: str | None = None
    finish_reason: str | None = None
    logprobs: _TextLogprobs | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class _TextCompletion(_Lenient):
    choices: list[_TextChoice]


def read_token_completion(response: httpx.Response, url: str, expected: int,
                          prompt_ids: list[int]) -> Completion:
    """The `expected` answers of a completions response to a token-id prompt, each with the ids
    the server sampled and one log-probability per id. Anything less is a ProtocolError with
    one line: no ids (a server without `return_token_ids`), log-probabilities missing or not one
    per id, two copies of the ids that disagree, or a prompt the server changed (e.g. by adding
    a BOS token), after which the ids would no longer be the sequence the model saw."""
    parsed = _parse(response, url, expected, _TextCompletion, "a completion")
    answers = []
    for choice in sorted(parsed.choices, key=lambda c: c.index):
        if choice.prompt_token_ids is not None and choice.prompt_token_ids != list(prompt_ids):
            raise ProtocolError(
                f"endpoint {url}: the server changed the prompt's token ids (sent "
                f"{len(prompt_ids)}, it used {len(choice.prompt_token_ids)}), so the episode's "
                "ids would not be what the model saw")
        ids = choice.token_ids
        tokens = choice.logprobs.tokens if choice.logprobs else None
        if ids is None and tokens:  # only "token_id:N" strings (return_tokens_as_token_ids)
            matches = [TOKEN_ID.fullmatch(t) for t in tokens]
            ids = [int(m.group(1)) for m in matches] if all(matches) else None
        if ids is None:
            raise ProtocolError(f"endpoint {url}: the completion has no token ids (the server "
                                "ignores vLLM's return_token_ids)")
        values = choice.logprobs.token_logprobs if choice.logprobs else None
        if values is None or len(values) != len(ids) or any(v is None for v in values):
            count = "no" if values is None else str(len([v for v in values if v is not None]))
            raise ProtocolError(f"endpoint {url}: the completion has {count} log-probabilities "
                                f"for {len(ids)} sampled tokens")
        if tokens is not None and all(TOKEN_ID.fullmatch(t) for t in tokens) and [
                int(TOKEN_ID.fullmatch(t).group(1)) for t in tokens] != ids:
            raise ProtocolError(f"endpoint {url}: the completion's token_ids and its logprobs' "
                                "tokens disagree")
        logprobs = [v if math.isfinite(v) else FLOOR_LOGPROB for v in values]
        finish = "length" if choice.finish_reason == "length" else "stop"
        answers.append(Answer(choice.text or "", list(ids), logprobs, finish))
    return Completion(answers, len(prompt_ids))
