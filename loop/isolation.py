"""Calling plugin code without trusting it: a per-call time limit, and every failure (an exception,
`sys.exit`, a hang) turned into a value the engine records instead of a crashed round.

The call runs in a daemon thread: Python cannot kill a thread, so a call that hangs is abandoned
(it is reported and its item gets an error row) and the round goes on. Code the model wrote never
runs this way: it goes through a sandboxed subprocess (the code-task plugin).
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Callable

from loop import records
from loop.plugins import short_repr, trace, tracing


class PluginFailure(Exception):
    """A plugin call that raised, exited or timed out; `reason` is one line."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def call_plugin(fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any) -> Any:
    """Return fn(*args, **kwargs), or raise PluginFailure (never anything else but Ctrl-C).

    With LOOP_TRACE_PLUGINS set, each call prints one line to stderr: the component and function,
    the seconds it took, and a short repr of its result (or why it failed)."""
    if not tracing():
        return _call(fn, timeout_s, *args, **kwargs)
    started = time.perf_counter()
    try:
        value = _call(fn, timeout_s, *args, **kwargs)
    except PluginFailure as exc:
        trace(f"call {describe_callable(fn)} {time.perf_counter() - started:.3f}s "
              f"failed: {exc.reason}")
        raise
    trace(f"call {describe_callable(fn)} {time.perf_counter() - started:.3f}s -> "
          f"{short_repr(value)}")
    return value


def describe_callable(fn: Callable[..., Any]) -> str:
    """`verifier 'math'.verify_batch` for a component's method (the kind is its loop base class),
    the dotted name for a plain function such as a reward."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type) and not inspect.ismodule(owner):
        kinds = (records.Verifier, records.Critic, records.TaskSource, records.Backend,
                 records.Updater)
        kind = next((k.__name__.lower() for k in kinds if isinstance(owner, k)),
                    type(owner).__name__)
        name = getattr(owner, "name", "") or type(owner).__name__
        return f"{kind} {name!r}.{getattr(fn, '__name__', '?')}"
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}" if module else qualname


def _call(fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any) -> Any:
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
