"""The pipe protocol between a session (the loop process) and its worker (the vLLM process).

One JSON object per line, both ways; standard library only, because both sides import it and the
worker's interpreter may have nothing but vllm. The worker writes protocol lines to a private
copy of its stdout and points fd 1 at stderr, so log lines of vLLM (which prints to stdout) can
never corrupt the stream.

Session → worker:
    {"op": "load", "protocol": N, "model": PATH, "model_limit": INT | null,
     "adapter_rank": INT | null, "engine": {named LLM kwargs}, "extra": {more LLM kwargs}}
    {"op": "generate", "prompts": [[token ids], ...], "adapter": PATH | null, "sampling":
     {"n", "temperature", "top_p", "max_tokens", "seeds": [one per prompt], "stop_token_ids"}}
    {"op": "close"}                      (closing stdin means the same)
Worker → session:
    {"op": "ready", "protocol": N, "vllm": VERSION, "max_model_len": INT, "platform": STR,
     "engine": {the LLM kwargs used}, "seconds": FLOAT}
    {"op": "progress", "prompts": INT, "tokens": INT}       (any number, during a generate)
    {"op": "result", "outputs": [[{"token_ids", "finish_reason", "logprobs"}, ...], ...]}
    {"op": "error", "kind": KIND, "message": ONE LINE}      (answers load or generate; after
                                                             a load error the worker exits)
"""

from __future__ import annotations

import json
from typing import IO, Any

PROTOCOL = 1

# Error kinds the worker reports; the session turns each into one line for the user.
MISSING_VLLM = "missing_vllm"  # `import vllm` failed in the worker's interpreter
BAD_REQUEST = "bad_request"  # vLLM refused the request (e.g. a prompt longer than max_model_len)
ENGINE = "engine"  # the engine failed to start or to generate
PROTOCOL_MISMATCH = "protocol"  # the worker's copy of loop_vllm is another version


def send(stream: IO[bytes], message: dict[str, Any]) -> None:
    """Write one message as a JSON line and flush it (the reader waits for the newline)."""
    stream.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def receive(stream: IO[bytes]) -> dict[str, Any] | None:
    """Read one message; None at end of stream (the other side closed or died)."""
    line = stream.readline()
    if not line:
        return None
    return json.loads(line)
