"""The openai backend against real HTTP servers in the test process: answers come back in
prompt order with n samples, token ids and logprobs; requests go round-robin with a bounded
number in flight per endpoint; failures are retried or reported in one line."""

from __future__ import annotations

import threading
import time

import pytest
from openai_fake_server import FakeOpenAIServer, free_port

from loop import ModelRef, Sampling
from loop_openai import EndpointError, OpenAIBackend, OpenAIOptions
from loop_openai.completions import request_seed

PROMPTS = [[{"role": "user", "content": f"q{i}"}] for i in range(7)]


@pytest.fixture
def servers():
    started: list[FakeOpenAIServer] = []

    def start(**kwargs) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def session(*urls: str, model: str = "base-model", **options):
    opts = OpenAIOptions(**{"endpoints": list(urls), "backoff_s": 0.01, "backoff_max_s": 0.05,
                            **options})
    return OpenAIBackend().open(ModelRef(base=model), opts)


def test_answers_in_prompt_order_with_n_samples_ids_and_logprobs(servers):
    server = servers()
    out = session(server.url, max_concurrency=4).generate(
        PROMPTS, Sampling(n=3, temperature=1.0, max_new_tokens=50))
    assert [len(g) for g in out] == [3] * len(PROMPTS)
    for i, gens in enumerate(out):
        for k, g in enumerate(gens):  # the server lists choices in reverse: index order wins
            assert g.text == f"base-model|q{i}|{k}"
            assert g.token_ids == [ord(c) for c in g.text]
            assert g.logprobs == [-(ord(c) % 7) / 10 for c in g.text]
            assert g.finish_reason == "stop"
            assert g.prompt_tokens == len(f"q{i}")
    body = server.chat_requests()[0]["body"]
    assert body["n"] == 3 and body["logprobs"] is True and body["top_logprobs"] == 0
    assert body["return_tokens_as_token_ids"] is True and body["max_tokens"] == 50


def test_length_limit_is_reported(servers):
    server = servers()
    gens = session(server.url).generate(PROMPTS[:2], Sampling(n=2, max_new_tokens=5))
    assert all(g.finish_reason == "length" and len(g.token_ids) == 5 for gs in gens for g in gs)


def test_token_ids_on_the_choice_are_used(servers):
    server = servers(ids_on_choice=True, ids_in_logprobs=False)
    gens = session(server.url).generate(PROMPTS[:1], Sampling(n=1, max_new_tokens=50))
    assert gens[0][0].token_ids == [ord(c) for c in "base-model|q0|0"]
    assert server.chat_requests()[0]["body"]["return_token_ids"] is True


def test_without_ids_the_local_tokenizer_counts(servers, tiny_model_dir):
    """The tiny model's tokenizer is one token per character, id = ord - 28 (4 specials)."""
    server = servers(ids_in_logprobs=False, usage=False, models=(str(tiny_model_dir),))
    gens = session(server.url, model=str(tiny_model_dir)).generate(
        [[{"role": "user", "content": "12+35="}]], Sampling(n=1, max_new_tokens=200))
    text = gens[0][0].text
    assert gens[0][0].token_ids == [ord(c) - 28 for c in text]
    assert gens[0][0].prompt_tokens == len("12+35=")  # the chat template adds nothing here


def test_without_ids_or_tokenizer_ids_stay_empty(servers):
    server = servers(ids_in_logprobs=False, logprobs=False)
    gens = session(server.url, request_token_ids=False).generate(
        PROMPTS[:1], Sampling(n=2, max_new_tokens=50))
    assert [g.token_ids for g in gens[0]] == [[], []]
    assert gens[0][0].logprobs is None and gens[0][0].text == "base-model|q0|0"
    assert "return_tokens_as_token_ids" not in server.chat_requests()[0]["body"]


def test_greedy_asks_once_and_repeats(servers):
    server = servers()
    gens = session(server.url).generate(PROMPTS[:2], Sampling(n=4, temperature=0.0))
    assert [len(g) for g in gens] == [4, 4]
    assert all(g.text == "base-model|q0|0" for g in gens[0])
    assert [r["body"]["n"] for r in server.chat_requests()] == [1, 1]


def test_seeds_are_per_prompt_and_reproducible(servers):
    server = servers()
    s = session(server.url, max_concurrency=3)
    s.generate(PROMPTS, Sampling(n=1, seed=5))
    first = {r["body"]["messages"][0]["content"]: r["body"]["seed"] for r in server.chat_requests()}
    server.requests.clear()
    s.generate(PROMPTS, Sampling(n=1, seed=5))
    again = {r["body"]["messages"][0]["content"]: r["body"]["seed"] for r in server.chat_requests()}
    assert first == again == {f"q{i}": request_seed(5, i) for i in range(len(PROMPTS))}
    assert len(set(first.values())) == len(PROMPTS)


def test_round_robin_over_two_servers(servers):
    a, b = servers(), servers()
    out = session(a.url, b.url, max_concurrency=8).generate(
        [[{"role": "user", "content": f"p{i}"}] for i in range(10)], Sampling(n=1))
    assert [g[0].text for g in out] == [f"base-model|p{i}|0" for i in range(10)]
    # alternating: the first prompt to server a, the second to b, and so on
    for server, first in ((a, 0), (b, 1)):
        got = sorted(r["body"]["messages"][0]["content"] for r in server.chat_requests())
        assert got == sorted(f"p{i}" for i in range(first, 10, 2))


def test_concurrency_is_bounded_per_endpoint(servers):
    a, b = servers(delay=0.1), servers(delay=0.1)
    started = time.perf_counter()
    session(a.url, b.url, max_concurrency=3).generate(
        [[{"role": "user", "content": f"p{i}"}] for i in range(24)], Sampling(n=1))
    elapsed = time.perf_counter() - started
    assert a.peak == b.peak == 3  # the bound is reached and never passed
    assert elapsed >= 0.1 * 24 / 6 * 0.9  # 24 requests of 0.1 s, 6 at a time


def test_progress_counts_prompts_and_tokens(servers):
    server = servers()
    seen = {"prompts": 0, "tokens": 0}

    def progress(prompts=0, tokens=0, **_):
        seen["prompts"] += prompts
        seen["tokens"] += tokens

    out = session(server.url).generate(PROMPTS, Sampling(n=2), progress=progress)
    assert seen == {"prompts": len(PROMPTS),
                    "tokens": sum(len(g.token_ids) for gens in out for g in gens)}


def test_5xx_then_success_is_retried_with_backoff(servers):
    server = servers()
    server.script.extend([("status", 500, {"message": "boom"}), ("status", 503, b"busy")])
    s = session(server.url, max_concurrency=1, retries=2, backoff_s=0.1, backoff_max_s=1.0)
    out = s.generate(PROMPTS[:1], Sampling(n=1))
    assert out[0][0].text == "base-model|q0|0"
    times = [r["time"] for r in server.chat_requests()]
    assert len(times) == 3
    # backoff doubles, half of it random: waits in [0.05, 0.1] then [0.1, 0.2]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1


def test_429_and_dropped_connection_are_retried(servers):
    server = servers()
    server.script.extend([("status", 429, {"error": {"message": "slow down"}}), ("drop",)])
    out = session(server.url, max_concurrency=1, retries=2).generate(PROMPTS[:2], Sampling())
    assert [g[0].text for g in out] == ["base-model|q0|0", "base-model|q1|0"]
    assert len(server.chat_requests()) == 4


def test_unreachable_endpoint_is_one_line_after_n_tries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as info:
        session(url, retries=2).generate(PROMPTS[:3], Sampling())
    assert str(info.value) == f"endpoint {url} unreachable after 3 tries (connection refused)"


def test_a_dead_endpoint_is_avoided_and_the_live_one_does_the_work(servers):
    live = servers()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(30)]
    out = session(dead, live.url, max_concurrency=2, retries=2).generate(prompts, Sampling())
    assert [g[0].text for g in out] == [f"base-model|p{i}|0" for i in range(30)]
    assert len(live.chat_requests()) == 30


def test_all_endpoints_dead_names_them_all():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    with pytest.raises(EndpointError) as info:
        session(*urls, retries=3).generate(PROMPTS[:1], Sampling())
    message = str(info.value)
    assert message.startswith("all 4 tries failed: ") and "\n" not in message
    assert all(f"{u} unreachable" in message for u in urls)


def test_an_endpoint_that_comes_back_is_used(servers):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    s = session(url, retries=6, backoff_s=0.2, backoff_max_s=0.4)
    late: list[FakeOpenAIServer] = []
    timer = threading.Timer(0.3, lambda: late.append(servers(port=port)))
    timer.start()
    out = s.generate(PROMPTS[:2], Sampling())
    timer.join()
    assert [g[0].text for g in out] == ["base-model|q0|0", "base-model|q1|0"]


def test_timeout_is_retried_then_reported(servers):
    server = servers()
    server.rules["slow"] = ("hang", 3.0)
    started = time.perf_counter()
    with pytest.raises(EndpointError) as info:
        session(server.url, timeout_s=0.3, retries=1).generate(
            [[{"role": "user", "content": "slow"}]], Sampling())
    assert str(info.value) == (f"endpoint {server.url} timed out after 2 tries "
                               "(no answer within 0.3 s)")
    assert time.perf_counter() - started < 2.0


def test_a_hang_then_an_answer_succeeds(servers):
    server = servers()
    server.script.append(("hang", 2.0))
    out = session(server.url, timeout_s=0.3, max_concurrency=1).generate(PROMPTS[:1], Sampling())
    assert out[0][0].text == "base-model|q0|0"


def test_http_400_is_not_retried_and_shows_the_servers_message(servers):
    server = servers()
    server.script.append(("status", 400, {"error": {"message": "max_tokens is too large"}}))
    with pytest.raises(EndpointError) as info:
        session(server.url, max_concurrency=1, retries=5).generate(PROMPTS[:1], Sampling())
    assert str(info.value) == (f"endpoint {server.url}: POST /chat/completions answered HTTP 400: "
                               "max_tokens is too large")
    assert len(server.chat_requests()) == 1


def test_unknown_model_is_a_404_with_the_servers_message(servers):
    server = servers()
    with pytest.raises(EndpointError, match="HTTP 404: The model `other` does not exist"):
        session(server.url, model="other").generate(PROMPTS[:1], Sampling())


def test_first_failure_cancels_the_other_requests(servers):
    server = servers()
    server.rules["q0"] = ("status", 400, {"message": "bad prompt"})
    server.rules["q"] = ("hang", 5.0)  # every other prompt would take 5 s
    started = time.perf_counter()
    with pytest.raises(EndpointError, match="bad prompt"):
        session(server.url, max_concurrency=8).generate(PROMPTS, Sampling())
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("action, expected", [
    (("garbage", "<html>oops</html>"), "the answer is not JSON (starts with '<html>oops</html>')"),
    (("garbage", '{"object": "list"}'), "the answer is not a chat completion: choices: Field "
                                        "required"),
    (("garbage", '{"choices": [{"index": 0, "message": {"content": "x"}}]}'),
     "asked for 2 answers (n), got 1"),
])
def test_wrong_answers_are_protocol_errors(servers, action, expected):
    server = servers()
    server.script.append(action)
    with pytest.raises(EndpointError) as info:
        session(server.url, max_concurrency=1).generate(PROMPTS[:1], Sampling(n=2))
    assert str(info.value) == f"endpoint {server.url}: {expected}"
    assert len(server.chat_requests()) == 1  # not retried


def test_api_key_comes_from_the_environment(servers, monkeypatch):
    server = servers()
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    session(server.url, api_key_env="MY_KEY").generate(PROMPTS[:1], Sampling())
    assert server.chat_requests()[0]["headers"]["Authorization"] == "Bearer sk-test-123"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(EndpointError, match="environment variable MY_KEY .* is not set"):
        session(server.url, api_key_env="MY_KEY")


def test_a_server_that_rejects_the_token_id_fields_gets_a_hint(servers):
    server = servers()
    server.rules["q0"] = ("status", 400, {"error": {
        "message": "Unrecognized request argument supplied: return_tokens_as_token_ids"}})
    with pytest.raises(EndpointError) as info:
        session(server.url).generate(PROMPTS[:1], Sampling())
    assert str(info.value).endswith(
        "HTTP 400: Unrecognized request argument supplied: return_tokens_as_token_ids (a server "
        "without vLLM's extensions: set backend.options.request_token_ids=false)")
