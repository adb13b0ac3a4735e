"""The `vllm` backend's options (`backend.options` in a run config, or `--set
backend.options.KEY=VALUE`): where the worker runs and how its engine is built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Engine keywords the backend sets itself (model, enable_lora) or through an option of the same
# name: setting them again in `engine_kwargs` would make two values for one setting.
NAMED_ENGINE_KEYS = {
    "model", "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size",
    "data_parallel_size", "max_lora_rank", "enforce_eager", "seed", "enable_lora",
}

DType = Literal["auto", "float32", "bfloat16", "float16"]


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    python: str | None = Field(default=None, description=(
        "interpreter that runs the worker and has vllm installed (default: this one); on CPU "
        "machines the venv built by plugins/loop-vllm/setup-cpu-venv.sh: .venv-vllm/bin/python"))
    dtype: DType = Field(default="float32", description=(
        "weights dtype; float32 matches the hf backend token for token, bfloat16 is the usual "
        "choice on a GPU, auto takes the model's own"))
    max_model_len: int | None = Field(default=None, ge=8, description=(
        "prompt + answer tokens per sequence (default: the model's limit); lower saves KV memory"))
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0, description=(
        "share of GPU memory vLLM may take (default: vLLM's 0.92 on a GPU; 0.3 on CPU, where it "
        "is the share of RAM reserved for the KV cache)"))
    tensor_parallel_size: int = Field(default=1, ge=1, le=1024,
                                      description="GPUs per model replica")
    data_parallel_size: int = Field(default=1, ge=1, le=1024, description=(
        "model replicas, one worker process each on its own tensor_parallel_size GPUs "
        "(CUDA_VISIBLE_DEVICES); prompts are split between them"))
    max_lora_rank: int | None = Field(default=None, ge=1, le=4096, description=(
        "largest LoRA rank the engine accepts (default: the adapter's rank rounded up to one "
        "vLLM supports)"))
    enforce_eager: bool | None = Field(default=None, description=(
        "skip torch.compile and CUDA graphs (default: vLLM's choice on a GPU; true on CPU, where "
        "compiling takes 70-100 s per start)"))
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description=(
        "engine seed; each request also gets its own seed from the run's sampling seed"))
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "further vllm.LLM keywords, passed as given (e.g. max_num_seqs, enable_prefix_caching)"))
    env: dict[str, str | int | float | bool] = Field(default_factory=dict, description=(
        "environment variables for the worker (e.g. VLLM_CPU_KVCACHE_SPACE: 1, "
        "CUDA_VISIBLE_DEVICES); values are passed as strings"))
    startup_timeout_s: float = Field(default=1800.0, gt=0.0, le=86_400.0, description=(
        "how long the worker may take to import vllm and load the model"))
    close_timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0, description=(
        "how long close() waits for the worker to exit before killing it"))
    log: str | None = Field(default=None, description=(
        "file that receives the worker's stderr (vLLM's log), appended; by default only its "
        "last lines are kept, for error messages"))

    @field_validator("python")
    @classmethod
    def _interpreter_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{value}: no such interpreter (on CPU, build it with "
                             "plugins/loop-vllm/setup-cpu-venv.sh)")
        if not os.access(path, os.X_OK):
            raise ValueError(f"{value}: not executable")
        # Absolute, but not resolved: a venv's bin/python is a symlink whose target is the
        # base interpreter, which would leave the venv.
        return str(path.absolute())

    @field_validator("env")
    @classmethod
    def _env_as_strings(cls, value: dict[str, Any]) -> dict[str, str]:
        # `--set backend.options.env.X=1` parses 1 as a number; the environment holds strings.
        return {key: (str(int(v)) if isinstance(v, bool) else str(v)) for key, v in value.items()}

    @field_validator("engine_kwargs")
    @classmethod
    def _no_duplicate_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(NAMED_ENGINE_KEYS & set(value))
        if clash:
            raise ValueError(f"{', '.join(clash)}: set by the backend or through its own "
                             "option, not engine_kwargs")
        return value
