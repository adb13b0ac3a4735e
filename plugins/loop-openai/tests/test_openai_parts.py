"""The backend's parts on their own: options, backoff delays, error messages, endpoint choice,
reading completions."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import ValidationError

from loop.resolve import validate_options
from loop.config import ConfigError
from loop_openai import OpenAIBackend, OpenAIOptions
from loop_openai.completions import ProtocolError, read_completion
from loop_openai.pool import EndpointPool
from loop_openai.transport import RetryPolicy, server_message


def options_error(**raw) -> str:
    with pytest.raises(ConfigError) as info:
        validate_options(OpenAIBackend(), raw, "backend")
    return str(info.value)


def test_options_are_checked_with_one_line_errors():
    assert options_error() == "config error: backend.options: endpoints: Field required"
    assert "is not an http(s) base URL" in options_error(endpoints=["localhost:8000"])
    assert "listed twice" in options_error(endpoints=["http://a/v1", "http://a/v1/"])
    assert "extra_body: Value error, sets n, seed, which the backend controls" in options_error(
        endpoints=["http://a/v1"], extra_body={"seed": 1, "n": 2, "top_k": 5})
    assert "api_key: Value error, a key in the config would be stored" in options_error(
        endpoints=["http://a/v1"], api_key="sk-x")
    assert "backoff_max_s must be >= backoff_s" in options_error(
        endpoints=["http://a/v1"], backoff_s=5, backoff_max_s=1)
    assert options_error(endpoints=["http://a/v1"], lora="merged").startswith(
        "config error: backend.options: lora: Input should be 'runtime' or 'fixed'")
    assert options_error(endpoints=["http://a/v1"], temprature=1).endswith("unknown key")
    good = OpenAIOptions(endpoints=["http://a:8000/v1/", " https://b/v1"],
                         extra_body={"top_k": 5})
    assert good.endpoints == ["http://a:8000/v1", "https://b/v1"]


def test_backoff_doubles_with_jitter_up_to_the_cap():
    policy = RetryPolicy(backoff_s=0.5, backoff_max_s=3.0)
    for retry, base in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base / 4  # really random
    assert 2.0 <= policy.delay(0, retry_after=2.0) <= 2.0
    assert policy.delay(0, retry_after=100.0) == 3.0  # a server's wish, capped


@pytest.mark.parametrize("body, expected", [
    ({"error": {"message": "bad  max_tokens\n value"}}, "bad max_tokens value"),
    ({"object": "error", "message": "vLLM says no", "code": 400}, "vLLM says no"),
    ({"detail": "Not Found"}, "Not Found"),
    ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ("x" * 400, "x" * 300 + "..."),
])
def test_server_messages_are_one_short_line(body, expected):
    content = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
    assert server_message(httpx.Response(400, content=content)) == expected


def test_pool_goes_round_robin_and_respects_the_bound():
    async def scenario():
        pool = EndpointPool(["a", "b", "c"], max_concurrency=2)
        taken = [await pool.acquire() for _ in range(6)]
        assert [e.url for e in taken] == ["a", "b", "c", "a", "b", "c"]
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # every slot is taken
        pool.release(taken[1])
        assert (await asyncio.wait_for(waiter, 1)).url == "b"
    asyncio.run(scenario())


def test_pool_skips_cooling_endpoints_and_prefers_untried_ones():
    now = [100.0]

    async def scenario():
        pool = EndpointPool(["a", "b"], max_concurrency=1, cooldown_s=1.0, cooldown_max_s=4.0,
                            clock=lambda: now[0])
        a = pool.by_url("a")
        pool.refused(a)
        pool.refused(a)  # twice: cooling for 2 s
        assert a.down_until == 102.0
        first = await pool.acquire()
        assert first.url == "b"
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # b is busy and a is cooling: wait
        now[0] = 102.5
        assert (await asyncio.wait_for(waiter, 1)).url == "a"
        pool.release(first)
        pool.release(pool.by_url("a"))
        # a request that failed on b goes to a even when b comes first in turn
        assert (await pool.acquire(avoid=frozenset({"b"}))).url == "a"
        pool.answered(a)
        assert a.refusals == 0 and a.down_until == 0.0
    asyncio.run(scenario())


def test_a_request_waits_for_a_healthy_endpoint_rather_than_retry_where_it_failed():
    async def scenario():
        pool = EndpointPool(["a", "b"], max_concurrency=1)
        busy = await pool.acquire()  # a
        assert busy.url == "a"
        waiter = asyncio.ensure_future(pool.acquire(avoid=frozenset({"b"})))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # b is free, but this request failed there and a is up
        pool.release(busy)
        assert (await asyncio.wait_for(waiter, 1)).url == "a"
    asyncio.run(scenario())


def _response(payload) -> httpx.Response:
    return httpx.Response(200, content=json.dumps(payload).encode())


def test_reading_a_vllm_completion():
    choice = {"index": 0, "message": {"content": "45"}, "finish_reason": "stop",
              "logprobs": {"content": [{"token": "token_id:24", "logprob": -0.5},
                                       {"token": "token_id:25", "logprob": float("-inf")},
                                       {"token": "token_id:2", "logprob": -0.1}]}}
    truncated = {"index": 1, "message": {"content": None}, "finish_reason": "length",
                 "logprobs": None}
    completion = read_completion(_response({"choices": [truncated, choice],
                                            "usage": {"prompt_tokens": 6}}), "u", 2)
    first, second = completion.answers
    assert completion.prompt_tokens == 6
    assert (first.text, first.token_ids, first.finish_reason) == ("45", [24, 25, 2], "stop")
    assert first.logprobs == [-0.5, -9999.0, -0.1]  # -inf is stored as vLLM's floor
    assert (second.text, second.token_ids, second.logprobs, second.finish_reason) == \
        ("", None, None, "length")


def test_misaligned_logprobs_are_dropped_and_prompt_ids_count():
    choice = {"message": {"content": "ab"}, "finish_reason": "eos", "token_ids": [1, 2, 3],
              "logprobs": {"content": [{"token": "a", "logprob": -1.0}]}}
    completion = read_completion(_response({"choices": [choice], "prompt_token_ids": [5, 6]}),
                                 "u", 1)
    answer = completion.answers[0]
    assert answer.token_ids == [1, 2, 3] and answer.logprobs is None
    assert answer.finish_reason == "stop" and completion.prompt_tokens == 2


def test_a_choice_without_a_message_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"^endpoint u: the answer is not a chat completion: "
                                            r"choices\.0\.message: Field required$"):
        read_completion(_response({"choices": [{"text": "completions API"}]}), "u", 1)


def test_options_model_forbids_unknown_keys_directly():
    with pytest.raises(ValidationError):
        OpenAIOptions(endpoints=["http://a/v1"], max_concurency=2)
