"""Calling plugin code without trusting it: a per-call time limit, and every failure (an exception,
`sys.exit`, a hang) turned into a value the engine records instead of a crashed round.

The call runs in a daemon thread: Python cannot kill a thread, so a call that hangs is abandoned
(it is reported and its item gets an error row) and the round goes on. Code the model wrote never
runs this way: it goes through a sandboxed subprocess (the code-task plugin).
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class PluginFailure(Exception):
    """A plugin call that raised, exited or timed out; `reason` is one line."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def call_plugin(fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any) -> Any:
    """Return fn(*args, **kwargs), or raise PluginFailure (never anything else but Ctrl-C)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit and friends included: a plugin may not stop us
            outcome["error"] = exc

    if timeout_s is None:
        target()
    else:
        worker = threading.Thread(target=target, daemon=True, name="loop-plugin-call")
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            raise PluginFailure(f"did not return within {timeout_s:g} s", timed_out=True)
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise PluginFailure(f"raised {type(exc).__name__}" + (f": {text}" if text else ""))
    return outcome.get("value")
