"""The `openai` backend's options (`backend.options` in a run config).

The run's config is stored in the database, so no secret may live here: an API key is read from
the environment variable that `api_key_env` names, and a literal `api_key` is refused.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Request keys the backend sets itself: `extra_body` may not change them, or the contract
# (n answers per prompt, logprobs, token ids) would silently break.
RESERVED_KEYS = frozenset({
    "model", "messages", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "seed", "logprobs", "top_logprobs", "stream", "return_tokens_as_token_ids", "return_token_ids",
    "prompt", "echo",
})


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    endpoints: list[str] = Field(min_length=1, description=(
        "base URLs of OpenAI-compatible servers, e.g. http://host:8000/v1; requests are spread "
        "over them round-robin"))
    model: str | None = Field(default=None, min_length=1, description=(
        "the served model name (default: the run's model, which is what `vllm serve PATH` "
        "serves it as)"))
    api_key: None = Field(default=None, description=(
        "refused: the config is stored with the run; name an environment variable in "
        "api_key_env instead"))
    api_key_env: str | None = Field(default=None, min_length=1, description=(
        "name of the environment variable holding the API key (sent as a Bearer token); "
        "none: no Authorization header"))
    max_concurrency: int = Field(default=8, ge=1, le=1024, description=(
        "requests in flight per endpoint (one request = one prompt with its n samples)"))
    timeout_s: float = Field(default=600.0, gt=0.0, le=86_400.0, description=(
        "seconds to wait for one response (a request that times out is retried)"))
    retries: int = Field(default=3, ge=0, le=50, description=(
        "extra tries of a request after a connection error, a timeout, HTTP 408/429 or 5xx; "
        "other HTTP 4xx errors are not retried"))
    backoff_s: float = Field(default=0.5, ge=0.0, le=600.0, description=(
        "delay before the first retry; it doubles with each retry, with random jitter"))
    backoff_max_s: float = Field(default=30.0, ge=0.0, le=3600.0, description=(
        "upper bound of one retry delay"))
    lora: Literal["runtime", "fixed"] = Field(default="runtime", description=(
        "runtime: load each round's LoRA adapter into every server through vLLM's "
        "POST /v1/load_lora_adapter (vllm serve --enable-lora, "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; the adapter folder must be readable by the "
        "server) under a fresh name and generate with it; fixed: the servers' model never "
        "changes, so a run that trained an adapter cannot use them (evaluation only)"))
    request_token_ids: bool = Field(default=True, description=(
        "ask for token ids (vLLM: return_tokens_as_token_ids, return_token_ids); turn off for "
        "servers that reject unknown request fields, e.g. api.openai.com"))
    tokenizer: str | None = Field(default=None, min_length=1, description=(
        "local tokenizer folder (the served model's tokenizer and chat template): renders "
        "token-exact episodes, and counts tokens when a server returns no token ids or usage "
        "(default: the run's model when it is a local folder); without one, episodes re-render "
        "messages and token_ids stay empty where the server gives none"))
    token_exact: bool | Literal["auto"] = Field(default="auto", description=(
        "episodes on token ids: the local tokenizer renders them and POST /completions "
        "continues the ids (prompt as token ids, vLLM's return_token_ids); auto: when a first "
        "small request shows the servers return the ids, else episodes re-render messages each "
        "turn (one logged line says why); true: a one-line error instead of that fallback; "
        "false: always messages"))
    extra_body: dict[str, Any] = Field(default_factory=dict, description=(
        "extra fields for every chat-completions and completions request (e.g. top_k, "
        "repetition_penalty, chat_template_kwargs); may not override the fields the backend "
        "sets"))

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_http_urls(cls, value: list[str]) -> list[str]:
        cleaned = []
        for url in value:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) base URL (e.g. http://host:8000/v1)")
            if parts.query or parts.fragment:
                raise ValueError(f"{url!r}: a base URL has no query or fragment")
            cleaned.append(url.strip().rstrip("/"))
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("an endpoint is listed twice")
        return cleaned

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_literal_key(cls, value: Any) -> None:
        if value is not None:
            raise ValueError("a key in the config would be stored with the run; put it in an "
                             "environment variable and set api_key_env to its name")
        return None

    @field_validator("extra_body")
    @classmethod
    def _extra_body_keeps_the_contract(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(RESERVED_KEYS & set(value))
        if clash:
            raise ValueError(f"sets {', '.join(clash)}, which the backend controls")
        return value

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "OpenAIOptions":
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be >= backoff_s")
        if self.token_exact is True and not self.request_token_ids:
            raise ValueError("token_exact: true needs token ids from the server; it cannot be "
                             "combined with request_token_ids: false")
        return self
