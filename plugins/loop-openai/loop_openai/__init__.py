"""loop-openai: the `openai` generation backend for `loop`: OpenAI-compatible servers (one or a
pool of `vllm serve`), with each round's LoRA adapter loaded at runtime."""

import loop
from loop_openai.backend import OpenAIBackend, OpenAISession
from loop_openai.options import OpenAIOptions
from loop_openai.transport import EndpointError

__all__ = ["EndpointError", "OpenAIBackend", "OpenAIOptions", "OpenAISession"]


@loop.hookimpl
def register_backends(register):
    register(OpenAIBackend())
