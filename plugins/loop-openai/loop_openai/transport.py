"""One HTTP request to a pool of endpoints, retried with exponential backoff and jitter.

What is retried: connection errors (the endpoint is then left alone for a cool-down, see
`pool`), timeouts, a connection dropped mid-answer, HTTP 408, 409, 429 and 5xx. What is not:
any other HTTP 4xx (the request itself is wrong; retrying cannot help), which is raised at once
with the server's own message. Every failure surfaces as an `EndpointError` whose message is one
line naming the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import httpx

from loop_openai.pool import Endpoint, EndpointPool

RETRYABLE_STATUS = frozenset({408, 409, 429})
MESSAGE_CHARS = 300  # a server's error message is cut to this many characters


class EndpointError(RuntimeError):
    """A request failed for good; `str()` is one line naming the endpoint and the reason.
    `status` is the HTTP status of a refused request (None: no answer, or retries ran out)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 600.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based): the backoff doubles each
        time up to the cap; half of it is random (so many clients do not retry in step), and a
        server's Retry-After is honoured up to the cap."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** retry)
        wait = base / 2 + random.uniform(0, base / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))


@dataclass(frozen=True)
class _Failure:
    url: str
    kind: str  # "unreachable", "timed out", "dropped the connection", "answered HTTP 503"
    detail: str


async def send(client: httpx.AsyncClient, pool: EndpointPool, policy: RetryPolicy, method: str,
               path: str, body: Any = None, headers: dict[str, str] | None = None,
               url: str | None = None) -> tuple[Endpoint, httpx.Response]:
    """Send `method path` (path relative to an endpoint's base URL) to the pool's next endpoint,
    or to the endpoint `url` when given, and return it with its successful (< 400) response.
    Retries go to another endpoint when one is free."""
    failures: list[_Failure] = []
    for attempt in range(policy.retries + 1):
        if url is None:
            endpoint = await pool.acquire(avoid=frozenset(f.url for f in failures))
        else:
            endpoint = await pool.acquire_url(url)
        retry_after = None
        try:
            response = await client.request(method, endpoint.url + path, json=body,
                                            headers=headers, timeout=policy.httpx_timeout())
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            pool.refused(endpoint)
            failures.append(_Failure(endpoint.url, "unreachable", _describe(exc)))
        except httpx.TimeoutException:
            failures.append(_Failure(endpoint.url, "timed out",
                                     f"no answer within {policy.timeout_s:g} s"))
        except httpx.TransportError as exc:
            failures.append(_Failure(endpoint.url, "dropped the connection", _describe(exc)))
        else:
            pool.answered(endpoint)
            status = response.status_code
            if status < 400:
                return endpoint, response
            message = server_message(response)
            if status not in RETRYABLE_STATUS and status < 500:
                raise EndpointError(f"endpoint {endpoint.url}: {method} {path} answered "
                                    f"HTTP {status}: {message}", status=status)
            failures.append(_Failure(endpoint.url, f"answered HTTP {status}", message))
            retry_after = _retry_after(response)
        finally:
            pool.release(endpoint)
        if attempt < policy.retries:
            await asyncio.sleep(policy.delay(attempt, retry_after))
    raise EndpointError(_summary(failures))


def server_message(response: httpx.Response) -> str:
    """The error message in a response body: OpenAI's {"error": {"message"}}, vLLM's
    {"message"}, FastAPI's {"detail"}, else the text itself; one line, cut short."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    message = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or data.get("message") or data.get("detail")
    message = str(message) if message else (text or response.reason_phrase or "no message")
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + "..."


def _describe(exc: BaseException) -> str:
    """The cause of a transport error in a few words: httpx says "All connection attempts
    failed" where the OS said "connection refused", so the chain of causes is searched."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _tries(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


def _summary(failures: list[_Failure]) -> str:
    last = failures[-1]
    urls = list(dict.fromkeys(f.url for f in failures))
    if len(urls) == 1:
        return f"endpoint {last.url} {last.kind} after {_tries(len(failures))} ({last.detail})"
    parts = []
    for url in urls:
        mine = [f for f in failures if f.url == url]
        parts.append(f"{url} {mine[-1].kind} ({_tries(len(mine))}; {mine[-1].detail})")
    return f"all {_tries(len(failures))} failed: " + "; ".join(parts)
