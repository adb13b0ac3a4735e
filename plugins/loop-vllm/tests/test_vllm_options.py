"""The vllm backend without vllm: options, the checks made before a worker starts, and the
one-line errors for a worker that is missing vllm or dies. Runs in the main venv (no vllm)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from loop import ModelRef
from loop_vllm.backend import VLLMBackend, check_interpreter
from loop_vllm.models import adapter_rank, check_max_model_len, locate
from loop_vllm.options import VLLMOptions
from loop_vllm.process import VLLMError
from loop_vllm.session import prompt_seed, shard, worker_env
from loop_vllm.worker import DEFAULT_LORA_RANKS, engine_kwargs, one_line


def test_options_forbid_unknown_keys_and_clashing_engine_kwargs():
    with pytest.raises(ValidationError, match="extra"):
        VLLMOptions(max_len=64)
    with pytest.raises(ValidationError, match="max_model_len: set by the backend or through"):
        VLLMOptions(engine_kwargs={"max_model_len": 64, "max_num_seqs": 8})
    assert VLLMOptions(engine_kwargs={"max_num_seqs": 8}).engine_kwargs == {"max_num_seqs": 8}


def test_python_option_must_name_an_interpreter(tmp_path):
    with pytest.raises(ValidationError, match="no such interpreter.*setup-cpu-venv.sh"):
        VLLMOptions(python=str(tmp_path / "missing" / "python"))
    assert VLLMOptions(python=sys.executable).python == os.path.abspath(sys.executable)


def test_env_values_become_strings():
    """`--set backend.options.env.VLLM_CPU_KVCACHE_SPACE=1` arrives as the number 1."""
    options = VLLMOptions(env={"VLLM_CPU_KVCACHE_SPACE": 1, "FLAG": True, "NAME": "x"})
    assert options.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "FLAG": "1", "NAME": "x"}


def test_backend_is_registered_under_the_name_vllm(monkeypatch):
    from loop.plugin_manager import build_registry, get_plugin_manager

    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "hf,vllm")
    backend = build_registry(get_plugin_manager()).get("backends", "vllm")
    assert isinstance(backend, VLLMBackend) and backend.Options is VLLMOptions


def test_max_model_len_above_the_model_limit_is_one_line(tiny_model_dir):
    check_max_model_len(str(tiny_model_dir), 128)  # the tiny model's max_position_embeddings
    with pytest.raises(ValueError) as info:
        check_max_model_len(str(tiny_model_dir), 256)
    message = str(info.value)
    assert "\n" not in message and "max_model_len=256" in message and "limit of 128" in message
    backend = VLLMBackend()
    backend.options = VLLMOptions(max_model_len=4096)
    with pytest.raises(ValueError, match="limit of 128"):
        backend.prepare(str(tiny_model_dir))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                    reason="vllm is installed in this interpreter")
def test_missing_vllm_in_the_interpreter_is_named_with_the_fix(tiny_model_dir):
    """The main venv has no vllm: prepare() says so, and so does a real worker started there."""
    with pytest.raises(VLLMError) as info:
        check_interpreter(sys.executable)
    message = str(info.value)
    assert f"vllm is not installed in {sys.executable}" in message
    assert "pip install vllm" in message and "setup-cpu-venv.sh" in message
    with pytest.raises(VLLMError) as info:  # the worker itself reports it over the pipe
        VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), VLLMOptions())
    assert str(info.value).startswith(f"vllm is not installed in {sys.executable}:")
    assert "\n" not in str(info.value)


def test_a_worker_that_dies_is_one_line_with_its_last_stderr_lines(tiny_model_dir, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading weights' >&2\necho '' >&2\n"
                    "echo 'RuntimeError: CUDA out of memory' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(VLLMError) as info:
        VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), VLLMOptions(python=str(fake)))
    message = str(info.value)
    assert "\n" not in message
    assert f"vllm worker ({fake}) exited with code 3" in message
    assert message.endswith("loading weights | RuntimeError: CUDA out of memory")


def test_adapter_folders_are_told_apart(tiny_model_dir, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q": 24}}))
    assert adapter_rank(lora) == 24
    files = locate(ModelRef(base=str(tiny_model_dir), adapter=str(lora)))
    assert (files.model, files.adapter, files.adapter_rank) == (
        str(Path(tiny_model_dir).resolve()), str(lora.resolve()), 24)
    full = locate(ModelRef(base=str(tiny_model_dir), adapter=str(tiny_model_dir)))
    assert (full.model, full.adapter) == (str(tiny_model_dir), None)  # full fine-tuning
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a LoRA adapter"):
        locate(ModelRef(base=str(tiny_model_dir), adapter=str(tmp_path / "empty")))


def test_engine_defaults_on_cpu_and_lora_rank_rounding():
    request = {"engine": {"dtype": "float32", "max_model_len": None, "enforce_eager": None,
                          "gpu_memory_utilization": None, "max_lora_rank": None},
               "model_limit": 8192, "adapter_rank": 12, "extra": {"max_num_seqs": 8}}
    cpu = engine_kwargs(request, on_cpu=True)
    assert cpu == {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3,
                   "enable_chunked_prefill": False, "max_num_batched_tokens": 8192,
                   "enable_lora": True, "max_loras": 1, "max_lora_rank": 16, "max_num_seqs": 8}
    short = {**request, "engine": {**request["engine"], "max_model_len": 128}}
    assert engine_kwargs(short, on_cpu=True)["max_num_batched_tokens"] == 4096
    chunked = {**request, "extra": {"enable_chunked_prefill": True}}
    assert "max_num_batched_tokens" not in engine_kwargs(chunked, on_cpu=True)
    gpu = engine_kwargs({**request, "adapter_rank": None}, on_cpu=False)
    assert gpu == {"dtype": "float32", "max_num_seqs": 8}  # vLLM's own defaults on a GPU
    explicit = {**request, "engine": {"enforce_eager": False, "max_lora_rank": 64}}
    assert engine_kwargs(explicit, on_cpu=True)["enforce_eager"] is False
    assert engine_kwargs(explicit, on_cpu=True)["max_lora_rank"] == 64
    assert engine_kwargs({**request, "adapter_rank": 9999}, on_cpu=True)["max_lora_rank"] == 9999
    assert 16 in DEFAULT_LORA_RANKS


def test_each_prompt_gets_its_own_seed():
    seeds = [prompt_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [prompt_seed(0, i) for i in range(1000)]
    assert prompt_seed(1, 0) != prompt_seed(0, 0)
    assert all(0 <= s < 2**30 for s in seeds)


def test_one_line_flattens_multiline_errors():
    error = ValueError("1 validation error for ModelConfig\n  Value error, too long\n    [type=x]")
    assert one_line(error) == ("ValueError: 1 validation error for ModelConfig Value error, "
                               "too long [type=x]")


def test_replicas_get_their_own_devices_and_contiguous_shares():
    assert shard(5, 2) == [range(0, 3), range(3, 5)]
    assert shard(1, 3) == [range(0, 1), range(1, 1), range(1, 1)]
    assert [len(r) for r in shard(10, 4)] == [3, 3, 2, 2]
    options = VLLMOptions(data_parallel_size=2, tensor_parallel_size=2,
                          env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert [worker_env(options, r)["CUDA_VISIBLE_DEVICES"] for r in (0, 1)] == ["4,5", "6,7"]
    few = VLLMOptions(data_parallel_size=3, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(VLLMError, match="needs 3 devices; CUDA_VISIBLE_DEVICES has 2"):
        worker_env(few, 2)


def test_an_interpreter_without_loop_vllm_is_told_how_to_install_it(tiny_model_dir, tmp_path):
    """`python -m loop_vllm.worker` fails at once in an interpreter that lacks the package."""
    bare = tmp_path / "python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")  # no site-packages
    bare.chmod(0o755)
    with pytest.raises(VLLMError) as info:
        VLLMBackend().open(ModelRef(base=str(tiny_model_dir)), VLLMOptions(python=str(bare)))
    assert str(info.value) == (f"loop-vllm is not installed in {bare}: {bare} -m pip install "
                               "--no-deps -e plugins/loop-vllm")
