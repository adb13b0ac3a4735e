"""Token-exact episodes on the openai backend, against the fake server in the test process: a
server that continues token-id prompts on `POST /completions` and returns the ids (as vLLM
does with `return_token_ids`) gets episodes whose stored ids and log-probabilities are exactly
what it returned, each turn continuing the ids so far; a server without that keeps the messages
fallback with one logged line; answers that do not fit are one-line errors."""

from __future__ import annotations

import logging

import pytest
from openai_fake_server import FakeOpenAIServer, free_port
from pydantic import ValidationError

import loop
from loop import ModelRef, Sampling
from loop.episodes import EpisodeSettings, run_episodes
from loop_openai import EndpointError, OpenAIBackend, OpenAIOptions
from loop_openai.completions import ProtocolError, request_seed

EOS = 2  # the tiny test tokenizer's <eos>


def tiny_text(ids: list[int]) -> str:
    """The tiny test tokenizer's decoding: one character per id, id = ord - 28 (4 specials)."""
    return "".join(chr(i + 28) for i in ids if i >= 4)


def answer_ids(prompt: list[int], k: int, model: str) -> list[int]:
    """Three tokens that depend on the prompt (ids 40-89: characters of the tiny tokenizer)."""
    return [40 + (sum(prompt) + 7 * k + 3 * j) % 50 for j in range(3)]


@pytest.fixture(autouse=True)
def fresh_fallback_notes(monkeypatch):
    """The fallback line is logged once per process and reason: each test starts afresh (a port
    reused by a later test's server would otherwise make the same reason)."""
    import loop_openai.backend

    monkeypatch.setattr(loop_openai.backend, "_fallbacks_noted", set())


@pytest.fixture
def servers():
    started: list[FakeOpenAIServer] = []

    def start(**kwargs) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**{"answer_ids": answer_ids, "eos_id": EOS,
                                     "text_of": tiny_text, "answer": lambda *_: "ok",
                                     **kwargs}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def session(server_or_url, model: str, **options):
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    opts = OpenAIOptions(**{"endpoints": [url], "backoff_s": 0.01, "backoff_max_s": 0.05,
                            **options})
    return OpenAIBackend().open(ModelRef(base=model), opts)


class Echo(loop.Episode):
    """A text world: after each model turn it says "again N" (reward 0.5), done after 3 turns."""

    def __init__(self):
        self.turns = 0

    def respond(self, text: str) -> loop.Step:
        self.turns += 1
        return loop.Step(observation=f"again {self.turns}", reward=0.5, done=self.turns >= 3)


class EchoEnv(loop.Environment):
    name = "echo"

    def episode(self, task):
        return Echo()


SETTINGS = EpisodeSettings(max_turns=4, max_tokens=100, tool_timeout_s=5, environment="echo")
TASKS = [loop.Task(source="t", split="train", prompt=[{"role": "user", "content": q}],
                   reference="") for q in ("12+35=", "40+41=")]
GREEDY = Sampling(n=1, temperature=0, max_new_tokens=20, seed=3)


def test_an_episode_stores_exactly_the_ids_and_logprobs_the_server_returned(servers,
                                                                            tiny_model_dir):
    server = servers(models=(str(tiny_model_dir),))
    remote = session(server, str(tiny_model_dir))
    results = run_episodes(remote, EchoEnv(), TASKS, GREEDY, SETTINGS)
    chat = remote.chat
    assert isinstance(chat, loop.TokenizerChat)
    assert server.chat_requests() == []  # every turn went over the token path
    probe, *turns = server.completion_log
    assert probe["body"]["max_tokens"] == 1 and len(turns) == 3 * len(TASKS)
    answers = {tuple(t["body"]["prompt"]): t for t in turns}
    tokenizer = remote._local_tokenizer().tokenizer
    for (result,) in results:
        assert result.end_reason == "done"
        assert [t.role for t in result.turns] == ["assistant", "user"] * 2 + ["assistant"]
        ids = list(result.prompt_ids)
        assert ids == chat.prompt_ids(result.prompt)
        for turn in result.turns:
            if turn.role == "assistant":
                answer = answers[tuple(ids)]  # sent as the ids so far, never re-rendered
                body, (choice,) = answer["body"], answer["choices"]
                assert turn.token_ids == choice["token_ids"] and turn.token_ids[-1] == EOS
                assert turn.logprobs == choice["logprobs"]["token_logprobs"]
                assert turn.text == choice["text"] and turn.trained
                assert body["logprobs"] == 0 and body["echo"] is False
                assert body["return_token_ids"] is True and body["n"] == 1
                assert body["model"] == str(tiny_model_dir)
            else:
                assert turn.token_ids == chat.continuation_ids([{"role": "user",
                                                                 "content": turn.text}])
            ids += turn.token_ids
        # Token-exact: the ids are the chat template's rendering of the whole conversation.
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
            result.messages, tokenize=False)


def test_generate_ids_gives_n_samples_in_order_and_repeats_a_greedy_one(servers, tiny_model_dir):
    server = servers(models=(str(tiny_model_dir),))
    remote = session(server, str(tiny_model_dir))
    prompts = [[1, 40, 41], [1, 50, 51, 52]]
    seen = []
    out = remote.generate_ids(prompts, Sampling(n=3, temperature=1.0, max_new_tokens=10, seed=9),
                              progress=lambda **counts: seen.append(counts))
    for i, (prompt, gens) in enumerate(zip(prompts, out)):
        assert [g.token_ids for g in gens] == [answer_ids(prompt, k, "") + [EOS]
                                               for k in range(3)]
        assert all(g.prompt_tokens == len(prompt) and g.finish_reason == "stop" for g in gens)
    bodies = {tuple(r["body"]["prompt"]): r["body"] for r in server.completion_requests()}
    assert [bodies[tuple(p)]["seed"] for p in prompts] == [request_seed(9, i) for i in range(2)]
    assert sorted(c["tokens"] for c in seen) == [12, 12] and all(c["prompts"] == 1 for c in seen)
    greedy = remote.generate_ids(prompts[:1], Sampling(n=2, temperature=0, max_new_tokens=2))
    assert [g.token_ids for g in greedy[0]] == [answer_ids(prompts[0], 0, "")[:2]] * 2
    assert greedy[0][0].finish_reason == "length"
    assert server.completion_requests()[-1]["body"]["n"] == 1


@pytest.mark.parametrize("case", ["no completions route", "ids not returned", "no tokenizer",
                                  "request_token_ids false", "prompt changed"])
def test_without_the_token_path_episodes_fall_back_to_messages_with_one_line(
        case, servers, tiny_model_dir, caplog):
    model = "base-model" if case == "no tokenizer" else str(tiny_model_dir)
    server = servers(models=(model,), completions=case != "no completions route",
                     completion_ids=case != "ids not returned",
                     ids_in_logprobs=case != "ids not returned",
                     mangle=(lambda c: {**c, "prompt_token_ids": [1, *c["prompt_token_ids"]]})
                     if case == "prompt changed" else None)
    options = {"request_token_ids": False} if case == "request_token_ids false" else {}
    with caplog.at_level(logging.WARNING, logger="loop_openai"):
        remote = session(server, model, **options)
        results = run_episodes(remote, EchoEnv(), TASKS[:1], GREEDY, SETTINGS)
        again = session(server, model, **options)  # a second session: no second line
        assert again.chat is None
    assert remote.chat is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "not token-exact" in line and "\n" not in line
    assert {"no completions route": "HTTP 404", "ids not returned": "has no token ids",
            "no tokenizer": "backend.options.tokenizer",
            "request_token_ids false": "request_token_ids is false",
            "prompt changed": "changed the prompt's token ids"}[case] in line
    (result,) = results[0]
    assert [t.role for t in result.turns] == ["assistant", "user"] * 2 + ["assistant"]
    chats = server.chat_requests()
    assert len(chats) == 3  # one per model turn, each re-sending the whole conversation
    assert [len(c["body"]["messages"]) for c in chats] == [1, 3, 5]
    assert len(server.completion_requests()) == (0 if case in ("no tokenizer",
                                                               "request_token_ids false") else 2)


def test_ids_only_in_the_logprobs_tokens_are_enough(servers, tiny_model_dir):
    """A vLLM without `return_token_ids` still writes each token as "token_id:N"
    (`return_tokens_as_token_ids`): the token path reads the ids from there."""
    server = servers(models=(str(tiny_model_dir),), completion_ids=False)
    remote = session(server, str(tiny_model_dir))
    (result,) = run_episodes(remote, EchoEnv(), TASKS[:1], GREEDY, SETTINGS)[0]
    assert isinstance(remote.chat, loop.TokenizerChat) and server.chat_requests() == []
    first = server.completion_log[1]["choices"][0]
    assert "token_ids" not in first
    assert result.turns[0].token_ids == [int(t.split(":")[1]) for t in first["logprobs"]["tokens"]]
    assert result.turns[0].logprobs == first["logprobs"]["token_logprobs"]


def test_token_exact_true_is_a_one_line_error_and_false_never_asks(servers, tiny_model_dir,
                                                                   caplog):
    server = servers(models=(str(tiny_model_dir),), completions=False)
    strict = session(server, str(tiny_model_dir), token_exact=True)
    with pytest.raises(EndpointError) as info:
        run_episodes(strict, EchoEnv(), TASKS[:1], GREEDY, SETTINGS)
    message = str(info.value)
    assert message.startswith("token-exact episodes (backend.options.token_exact: true) cannot "
                              "run: endpoint ") and "HTTP 404" in message and "\n" not in message
    with caplog.at_level(logging.WARNING, logger="loop_openai"):
        off = session(servers(models=(str(tiny_model_dir),)), str(tiny_model_dir),
                      token_exact=False)
        assert off.chat is None
    assert caplog.records == []
    with pytest.raises(ValidationError, match="cannot be combined with request_token_ids"):
        OpenAIOptions(endpoints=["http://h/v1"], token_exact=True, request_token_ids=False)
    with pytest.raises(ValidationError, match="prompt, which the backend controls"):
        OpenAIOptions(endpoints=["http://h/v1"], extra_body={"prompt": [1]})


def test_an_unreachable_server_is_an_error_not_a_fallback(tiny_model_dir):
    remote = session(f"http://127.0.0.1:{free_port()}/v1", str(tiny_model_dir), retries=0)
    with pytest.raises(EndpointError, match="unreachable"):
        remote.chat


def _drop_one_logprob(choice):
    choice["logprobs"]["token_logprobs"] = choice["logprobs"]["token_logprobs"][:-1]
    return choice


def _other_ids(choice):
    return {**choice, "token_ids": [i + 1 for i in choice["token_ids"]]}


@pytest.mark.parametrize("breakage, message", [
    (("mangle", _drop_one_logprob), "has 3 log-probabilities for 4 sampled tokens"),
    (("mangle", lambda c: {**c, "logprobs": None}), "has no log-probabilities for 4 sampled"),
    (("mangle", lambda c: {**c, "prompt_token_ids": c["prompt_token_ids"][1:]}),
     "the server changed the prompt's token ids (sent 3, it used 2)"),
    (("mangle", _other_ids), "token_ids and its logprobs' tokens disagree"),
    (("ids", False), "the completion has no token ids"),
    (("script", ("garbage", "<html>oops</html>")), "the answer is not JSON"),
    (("script", ("garbage", '{"choices": [{"text": 5}]}')), "is not a completion: choices.0"),
    (("script", ("garbage", '{"choices": []}')), "asked for 1 answers (n), got 0"),
])
def test_answers_that_do_not_fit_are_one_line_errors(breakage, message, servers,
                                                     tiny_model_dir):
    server = servers(models=(str(tiny_model_dir),))
    remote = session(server, str(tiny_model_dir), retries=0)
    assert remote.chat is not None  # the probe passed; now the server goes wrong
    kind, value = breakage
    if kind == "mangle":
        server.mangle = value
    elif kind == "ids":
        server.completion_ids = server.ids_in_logprobs = value
    else:
        server.script.append(value)
    with pytest.raises(ProtocolError) as info:
        remote.generate_ids([[1, 40, 41]], Sampling(n=1, max_new_tokens=10))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"endpoint {server.url}: ")


GAME = '''
class Game:
    """A gym-style text game: "N+1=" after each move, done after two."""

    def __init__(self):
        self.turns = 0

    def reset(self):
        return "Go."

    def step(self, text):
        self.turns += 1
        return f"{self.turns}+1=", 0.5, self.turns >= 2, {}


def make(**fields):
    return Game()
'''


@pytest.mark.parametrize("token_path", [True, False])
def test_a_loop_run_stores_the_servers_ids_or_falls_back_with_one_line(
        token_path, servers, tiny_model_dir, tiny_task_file, tmp_path, monkeypatch, caplog):
    """`loop run` with an environment through the server: on the token path the store's turns
    hold exactly the ids and log-probabilities the server returned, each turn continuing the
    stored ids so far; on a server without /completions the run still finishes, on messages,
    and one warning says so."""
    import json
    import os
    import sqlite3

    from typer.testing import CliRunner

    from loop.cli import app
    from loop.store import unpack_logprobs

    monkeypatch.setenv("LOOP_LOAD_PLUGINS", os.environ["LOOP_LOAD_PLUGINS"] + ",openai")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "game.py").write_text(GAME)
    server = servers(models=(str(tiny_model_dir),), completions=token_path)
    db = tmp_path / "store" / "loop.db"
    with caplog.at_level(logging.WARNING, logger="loop_openai"):
        result = CliRunner().invoke(app, [
            "run", str(tiny_task_file), "--model", str(tiny_model_dir), "--rounds", "0",
            "--db", str(db), "--set", "backend.name=openai",
            "--set", f"backend.options.endpoints=[{server.url}]",
            "--set", "task.environment.gym=game.py:make", "--set", "evaluate.problems=3",
            "--set", "evaluate.max_new_tokens=10"])
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(db)
    episodes = con.execute("select id, prompt_ids_json, token_ids_json from attempts "
                           "order by id").fetchall()
    turns = {attempt: con.execute(
        "select role, token_ids_json, logprobs_f32 from turns where attempt_id = ? order by idx",
        (attempt,)).fetchall() for attempt, _, _ in episodes}
    con.close()
    assert len(episodes) == 3
    assert all([t[0] for t in turns[a]] == ["assistant", "user", "assistant"] for a in turns)
    warnings = [r.getMessage() for r in caplog.records]
    if not token_path:
        assert len(warnings) == 1 and "not token-exact" in warnings[0] and "HTTP 404" in warnings[0]
        assert all(json.loads(prompt_ids) == [] for _, prompt_ids, _ in episodes)
        assert len(server.chat_requests()) == 6
        return
    assert warnings == [] and server.chat_requests() == []
    sent = {tuple(entry["body"]["prompt"]): entry["choices"][0]
            for entry in server.completion_log[1:]}
    assert len(sent) == 6
    for attempt, prompt_ids, token_ids in episodes:
        ids = json.loads(prompt_ids)
        for role, turn_ids, logprobs in turns[attempt]:
            if role == "assistant":
                choice = sent[tuple(ids)]  # this turn continued exactly the stored ids so far
                assert json.loads(turn_ids) == choice["token_ids"]
                assert unpack_logprobs(logprobs) == pytest.approx(
                    choice["logprobs"]["token_logprobs"], abs=1e-6)  # stored as float32
            ids += json.loads(turn_ids)
        assert ids == json.loads(prompt_ids) + json.loads(token_ids)
