"""Where the tests find vLLM: the CPU venv that setup-cpu-venv.sh builds at the repo root (or
$LOOP_VLLM_PYTHON, e.g. a GPU machine's interpreter with vllm), and the engine settings that fit
the tiny test models (128 positions) on a shared CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = Path(os.environ.get("LOOP_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")

needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.is_file(),
    reason=f"no vLLM interpreter at {VLLM_PYTHON}: build it with "
           "plugins/loop-vllm/setup-cpu-venv.sh (make test does) or set LOOP_VLLM_PYTHON",
)

# Engine settings for the tiny models (the CPU values of loop_vllm.worker): their
# max_position_embeddings is 128; 1 GiB of KV cache; eager mode; fp32 so greedy output matches the hf backend.
ENGINE = {"python": str(VLLM_PYTHON), "dtype": "float32", "max_model_len": 128,
          "enforce_eager": True, "gpu_memory_utilization": 0.3,
          "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
