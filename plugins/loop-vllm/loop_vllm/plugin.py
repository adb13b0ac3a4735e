"""The plugin entry point (group `loop`, name `vllm`): registers the `vllm` backend.

Kept apart from `loop_vllm/__init__.py` so that the worker's interpreter, which has vllm but
not loop, can import the package."""

import loop
from loop_vllm.backend import VLLMBackend


@loop.hookimpl
def register_backends(register):
    register(VLLMBackend())
