"""Guarded plugin calls: every call into plugin code that a round makes goes through here.

A per-call time limit, a check of what came back, and every failure (an exception, `sys.exit`, a
hang, a wrong shape) turned into a value the engine records instead of a crashed round: an
`infra` (or `timeout`) verdict naming the plugin and the item, a NULL reward, no critique, a
warning for an observer hook.

During a run (`plugins.isolation: process`, the default) verifier, reward and critic calls go to
the run's pool of worker processes (loop.plugin_workers): a call past its time limit is killed,
and a worker that dies (os._exit, a segfault, its memory cap, the OOM killer) costs only the
items it was working on. A chunk whose worker died or ran past its limit is tried again item by
item, so one poisoned answer does not cost its neighbours their verdicts. Otherwise
(in_process, or no run: a unit test, `loop verify`) the call runs in a daemon thread of this
process: Python cannot kill a thread, so a call that hangs is abandoned (it is reported and its
item gets an error row) and the round goes on. Code the model wrote never runs this way: it goes
through a sandboxed subprocess (the code-task plugin).
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
import traceback as tb
from typing import Any, Callable, Protocol

from loop import interfaces
from loop.plugin_manager import short_repr, trace, tracing
from loop.schema import Attempt, Critique, Task, Verdict


TRACEBACK_CHARS = 4000  # a verdict's details["traceback"] keeps at most this much (the end)


class PluginFailure(Exception):
    """A plugin call that raised, exited or timed out; `reason` is one line. For an exception,
    `traceback` is its formatted traceback (at most TRACEBACK_CHARS, the innermost part) and
    `where` the `file:line in function` of the innermost frame of plugin code (else None).
    `crashed`: the worker process running the call died (loop.plugin_workers)."""

    def __init__(self, reason: str, timed_out: bool = False, traceback: str | None = None,
                 where: str | None = None, crashed: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.crashed = crashed
        self.traceback = traceback
        self.where = where

    def details(self) -> dict[str, str]:
        """What an error verdict keeps in its `details`: `where` and `traceback`, when known."""
        return {k: v for k, v in (("where", self.where), ("traceback", self.traceback)) if v}


_STDLIB = tuple({os.path.dirname(os.__file__), os.path.dirname(threading.__file__)})
_THIS_FILE = os.path.abspath(__file__)


def _plugin_frame(exc: BaseException) -> str | None:
    """`file:line in function` of the innermost traceback frame outside this module and the
    standard library: where the plugin's own code was when it raised (the innermost frame, for
    an exception raised inside a library the plugin called, is the library's)."""
    frames = [f for f in tb.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename) != _THIS_FILE]
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(_STDLIB)
           or "site-packages" in f.filename]
    frame = (own or frames or [None])[-1]
    return None if frame is None else f"{frame.filename}:{frame.lineno} in {frame.name}"


def _format_traceback(exc: BaseException) -> str:
    """The exception's traceback from the plugin's frames on (this module's call frames left
    out), at most TRACEBACK_CHARS: the innermost part, where it raised."""
    trace_back = exc.__traceback__
    while trace_back is not None and trace_back.tb_next is not None and \
            os.path.abspath(trace_back.tb_frame.f_code.co_filename) == _THIS_FILE:
        trace_back = trace_back.tb_next
    text = "".join(tb.format_exception(type(exc), exc, trace_back))
    return text if len(text) <= TRACEBACK_CHARS else "...\n" + text[-TRACEBACK_CHARS:]


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
        at = f" (at {exc.where})" if exc.where else ""
        trace(f"call {describe_callable(fn)} {time.perf_counter() - started:.3f}s "
              f"failed: {exc.reason}{at}")
        raise
    trace(f"call {describe_callable(fn)} {time.perf_counter() - started:.3f}s -> "
          f"{short_repr(value)}")
    return value


def describe_callable(fn: Callable[..., Any]) -> str:
    """`verifier 'math'.verify_batch` for a component's method (the kind is its loop base class),
    the dotted name for a plain function such as a reward."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type) and not inspect.ismodule(owner):
        kinds = (interfaces.Verifier, interfaces.Critic, interfaces.TaskSource,
                 interfaces.Backend, interfaces.Updater)
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
        raise PluginFailure(f"raised {type(exc).__name__}" + (f": {text}" if text else ""),
                            traceback=_format_traceback(exc), where=_plugin_frame(exc))
    return outcome.get("value")


# ----- dispatch ----------------------------------------------------------------------------------


def _pool(target: Any) -> Any:
    """The run's worker pool when it serves `target` (loop.plugin_workers), else None."""
    from loop import plugin_workers

    pool = plugin_workers.current()
    return pool if pool is not None and pool.serves(target) else None


def _in_workers(pool: Any, target: Any, method: str | None,
                calls: list[tuple[tuple, dict, float | None]]) -> list[Any]:
    """Each call `(args, kwargs, limit_s)` of `target.method` (`method` None: `target` itself)
    in `pool`: its return value or a PluginFailure. Traced like `call_plugin`."""
    from loop.plugin_workers import Unit

    fn = target if method is None else getattr(target, method)
    started = time.perf_counter()
    results = pool.run([Unit(target, method, args, kwargs, limit) for args, kwargs, limit in calls])
    if tracing():
        each = (time.perf_counter() - started) / max(1, len(results))
        for value in results:
            if isinstance(value, PluginFailure):
                at = f" (at {value.where})" if value.where else ""
                trace(f"call {describe_callable(fn)} {each:.3f}s in a worker failed: "
                      f"{value.reason}{at}")
            else:
                trace(f"call {describe_callable(fn)} {each:.3f}s in a worker -> "
                      f"{short_repr(value)}")
    return results


def _retry(outcome: Any, count: int) -> bool:
    """Whether a call on `count` > 1 items is made again item by item: its worker died or ran
    past the call's limit. One poisoned item then costs only itself; the retry takes at most
    the call's limit again (each item gets the per-item limit)."""
    return count > 1 and isinstance(outcome, PluginFailure) and (outcome.crashed or
                                                                  outcome.timed_out)


def _per_item(timeout_s: float | None, count: int) -> float | None:
    return None if timeout_s is None else timeout_s * max(1, count)


# ----- verifiers ---------------------------------------------------------------------------------


class Named(Protocol):
    """A resolved component as the guarded calls name it: `loop.Chosen` (name, component, plugin)."""

    name: str
    component: Any
    plugin: str


def _as_chosen(verifier: Any) -> Any:
    """A bare Verifier is named by its own `name` (plugin unknown) so plugins can pass one."""
    if isinstance(verifier, interfaces.Verifier):
        from loop.resolve import Chosen

        return Chosen(verifier.name or type(verifier).__name__, verifier, None, "?")
    return verifier


def safe_verify_batch(chosen: Any, items: list[tuple[Task, Attempt]],
                      timeout_s: float | None = None) -> list[Verdict]:
    """One Verdict per item, never an exception. `chosen` is a `loop.Chosen` or a Verifier.

    A verifier that keeps the default `verify_batch` is called item by item (`safe_verify`, each
    item with `timeout_s`), so one bad item never costs its neighbours their verdicts; an
    overridden `verify_batch` gets the whole chunk with `timeout_s` per item, and if it fails (or
    returns the wrong number of verdicts) every item of the chunk gets an `infra` (`timeout`)
    verdict naming the reason. In a worker pool, a chunk whose worker died is tried again item
    by item (each with `timeout_s`), so only the items that kill a worker get an `infra`
    verdict, and likewise a chunk past its time limit (the item that hangs gets `timeout`)."""
    chosen = _as_chosen(chosen)
    component = chosen.component
    pool = _pool(component)
    if type(component).verify_batch is interfaces.Verifier.verify_batch:
        if pool is None:
            return [safe_verify(chosen, task, attempt, timeout_s) for task, attempt in items]
        results = _in_workers(pool, component, "verify",
                              [((task, attempt), {}, timeout_s) for task, attempt in items])
        return [_one_verdict(chosen, attempt, value)
                for value, (_, attempt) in zip(results, items)]
    if pool is None:
        try:
            outcome = call_plugin(component.verify_batch, _per_item(timeout_s, len(items)),
                                  items)
        except PluginFailure as exc:
            outcome = exc
        return _batch_verdicts(chosen, items, outcome)
    outcome = _in_workers(pool, component, "verify_batch",
                          [((items,), {}, _per_item(timeout_s, len(items)))])[0]
    if _retry(outcome, len(items)):
        singles = _in_workers(pool, component, "verify_batch",
                              [(([item],), {}, timeout_s) for item in items])
        return [_batch_verdicts(chosen, [item], value)[0]
                for item, value in zip(items, singles)]
    return _batch_verdicts(chosen, items, outcome)


def _batch_verdicts(chosen: Any, items: list[tuple[Task, Attempt]], outcome: Any) -> list[Verdict]:
    """The verdicts of a `verify_batch` call that returned `outcome` (or failed: a
    PluginFailure), checked: one Verdict per item, else error verdicts."""
    try:
        if isinstance(outcome, PluginFailure):
            raise outcome
        verdicts = list(outcome)
        if len(verdicts) != len(items):
            raise PluginFailure(f"verify_batch returned {len(verdicts)} verdicts for "
                                f"{len(items)} items")
    except (PluginFailure, TypeError) as exc:
        reason = exc.reason if isinstance(exc, PluginFailure) else f"returned {exc}"
        kind = "timeout" if isinstance(exc, PluginFailure) and exc.timed_out else "infra"
        details = exc.details() if isinstance(exc, PluginFailure) else {}
        return [_error_verdict(chosen, attempt, reason, kind, details) for _, attempt in items]
    return [v if isinstance(v, Verdict) else _error_verdict(
        chosen, attempt, f"returned {type(v).__name__}, not a Verdict")
        for v, (_, attempt) in zip(verdicts, items)]


def safe_verify(chosen: Any, task: Task, attempt: Attempt,
                timeout_s: float | None = None) -> Verdict:
    """Run one verifier; an exception, `sys.exit`, a hang past `timeout_s` or a wrong return type
    becomes an `infra` (or `timeout`) verdict naming the plugin, the attempt and the reason, so a
    broken verifier never crashes the round nor penalises the model."""
    chosen = _as_chosen(chosen)
    pool = _pool(chosen.component)
    if pool is not None:
        value = _in_workers(pool, chosen.component, "verify", [((task, attempt), {}, timeout_s)])
        return _one_verdict(chosen, attempt, value[0])
    try:
        verdict = call_plugin(chosen.component.verify, timeout_s, task, attempt)
        if not isinstance(verdict, Verdict):
            raise PluginFailure(f"returned {type(verdict).__name__}, not a Verdict")
        return verdict
    except PluginFailure as exc:
        return _error_verdict(chosen, attempt, exc.reason,
                              "timeout" if exc.timed_out else "infra", exc.details())


def _one_verdict(chosen: Any, attempt: Attempt, value: Any) -> Verdict:
    """The verdict of a `verify` call that returned `value` (or failed: a PluginFailure)."""
    if isinstance(value, PluginFailure):
        return _error_verdict(chosen, attempt, value.reason,
                              "timeout" if value.timed_out else "infra", value.details())
    if not isinstance(value, Verdict):
        return _error_verdict(chosen, attempt, f"returned {type(value).__name__}, not a Verdict")
    return value


def _error_verdict(chosen: Any, attempt: Attempt, reason: str, kind: str = "infra",
                   details: dict[str, str] | None = None) -> Verdict:
    """The one-line feedback names the verifier, its plugin, the attempt and the reason;
    `details` keep `where` (file:line of the plugin's frame) and `traceback` for an exception."""
    return Verdict(passed=False, score=0.0, error_kind=kind, details=dict(details or {}),
                   feedback=f"verifier {chosen.name!r} (plugin {chosen.plugin}) on attempt "
                            f"{attempt.id}: {reason}")


# ----- rewards -----------------------------------------------------------------------------------


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def reward_arguments(attempts: list[Attempt], tasks: dict[str, Task],
                     verdicts: dict[str, dict[str, Verdict]]) -> dict[str, list[Any]]:
    """TRL's reward-function arguments for these attempts, plus loop's `tasks`, `attempts`,
    `verdicts` (one dict verifier -> Verdict per attempt) and `reference`."""
    return dict(
        prompts=[tasks[a.task_id].prompt for a in attempts],
        completions=[[{"role": "assistant", "content": a.completion}] for a in attempts],
        completion_ids=[a.token_ids for a in attempts],
        tasks=[tasks[a.task_id] for a in attempts],
        attempts=attempts,
        verdicts=[verdicts[a.id] for a in attempts],
        reference=[tasks[a.task_id].reference for a in attempts],
    )


def call_reward(chosen: Any, attempts: list[Attempt], tasks: dict[str, Task],
                verdicts: dict[str, dict[str, Verdict]], timeout_s: float | None,
                warn: Callable[[str], None],
                failures: list[str] | None = None) -> list[float | None]:
    """Call a reward function with TRL's contract. A failure (exception, exit, timeout, a list of
    the wrong length) gives None for every item; a non-number or non-finite value gives None for
    that item. Each problem is reported through `warn` in one line naming the reward.

    `failures`, if given, gets one reason per value the function failed to give (every item's
    for a failed call, one per non-number): the reward stage counts them as the reward's errors,
    apart from the None values the function returned itself (not applicable, e.g. on an infra
    verdict), which are no error.

    In a worker pool, a call whose worker died or ran past its limit is made again answer by
    answer (each with `timeout_s`), so only the answers that kill or hang a worker get None;
    those single-answer calls see a batch of one, which a reward that compares the answers of
    a batch must allow."""
    name, plugin = chosen.name, chosen.plugin
    pool = _pool(chosen.component)
    if pool is not None:
        outcome = _in_workers(pool, chosen.component, None, [
            ((), reward_arguments(attempts, tasks, verdicts),
             _per_item(timeout_s, len(attempts)))])[0]
        if _retry(outcome, len(attempts)):
            warn(f"reward {name!r} (plugin {plugin}) failed: {outcome.reason}; calling it "
                 "again answer by answer")
            singles = _in_workers(pool, chosen.component, None, [
                ((), reward_arguments([a], tasks, verdicts), timeout_s) for a in attempts])
            out: list[float | None] = []
            for attempt, value in zip(attempts, singles):
                out += _reward_values(chosen, [attempt], value, warn, failures,
                                      on=f" on attempt {attempt.id}")
            return out
        return _reward_values(chosen, attempts, outcome, warn, failures)
    try:
        outcome = call_plugin(chosen.component, _per_item(timeout_s, len(attempts)),
                              **reward_arguments(attempts, tasks, verdicts))
    except PluginFailure as exc:
        outcome = exc
    return _reward_values(chosen, attempts, outcome, warn, failures)


def _reward_values(chosen: Any, attempts: list[Attempt], outcome: Any,
                   warn: Callable[[str], None],
                   failures: list[str] | None, on: str = "") -> list[float | None]:
    """The checked values of a reward call that returned `outcome` (or failed: a
    PluginFailure), each problem reported through `warn` (`on`: the attempt of a single-answer
    call) and counted in `failures`."""
    name, plugin = chosen.name, chosen.plugin
    try:
        if isinstance(outcome, PluginFailure):
            raise outcome
        values = list(outcome)
        if len(values) != len(attempts):
            raise PluginFailure(f"returned {len(values)} values for {len(attempts)} "
                                "completions")
    except (PluginFailure, TypeError) as exc:
        reason = exc.reason if isinstance(exc, PluginFailure) else f"returned {exc}"
        at = f" (at {exc.where})" if isinstance(exc, PluginFailure) and exc.where else ""
        warn(f"reward {name!r} (plugin {plugin}) failed{on}: {reason}{at}; "
             + ("stored NULL" if on else "its rewards for this round are NULL"))
        if failures is not None:
            failures += [reason] * len(attempts)
        return [None] * len(attempts)
    out: list[float | None] = []
    for attempt, value in zip(attempts, values):
        number = finite(value)
        if number is None and value is not None:
            warn(f"reward {name!r} (plugin {plugin}) on attempt {attempt.id}: {value!r} is not "
                 "a finite number; stored NULL")
            if failures is not None:
                failures.append(f"{value!r} is not a finite number")
        out.append(number)
    return out


# ----- critics -----------------------------------------------------------------------------------


def call_critic(chosen: Any, items: list[tuple[Task, Attempt, dict[str, Verdict]]],
                context: Any, warn: Callable[[str], None]) -> list[Critique | None] | None:
    """A critic's `critique_batch` on `items`: one Critique or None per item, or None (after one
    warning naming the critic) when it failed or returned the wrong shape.

    In a worker pool (a critic that keeps the default `critique_batch`; one that overrides it
    may use `context`, the policy model, and runs here), the call gets the pool's time limit per
    item (verify.timeout_s), and a call whose worker died or ran past its limit is made again
    item by item: an item that kills or hangs a worker gets None, after a warning naming the
    critic, the attempt and why."""
    pool = _pool(chosen.component)
    if pool is None:
        try:
            outcome = call_plugin(chosen.component.critique_batch, None, items, context)
        except PluginFailure as exc:
            outcome = exc
        return _critiques(chosen, items, outcome, warn)
    outcome = _in_workers(pool, chosen.component, "critique_batch",
                          [((items, None), {}, _per_item(pool.timeout_s, len(items)))])[0]
    if _retry(outcome, len(items)):
        singles = _in_workers(pool, chosen.component, "critique_batch",
                              [(([item], None), {}, pool.timeout_s) for item in items])
        out: list[Critique | None] = []
        for item, value in zip(items, singles):
            got = _critiques(chosen, [item], value, warn, on=f" on attempt {item[1].id}")
            out.append(got[0] if got else None)
        return out
    return _critiques(chosen, items, outcome, warn)


def _critiques(chosen: Any, items: list, outcome: Any, warn: Callable[[str], None],
               on: str = "") -> list[Critique | None] | None:
    """The checked result of a `critique_batch` call that returned `outcome` (or failed: a
    PluginFailure): None after one warning (naming the critic, `on` the item) when it is not
    one Critique or None per item."""
    try:
        if isinstance(outcome, PluginFailure):
            raise outcome
        results = list(outcome)
        if len(results) != len(items) or not all(
                r is None or isinstance(r, Critique) for r in results):
            raise PluginFailure("did not return one Critique or None per attempt")
    except (PluginFailure, TypeError) as exc:
        reason = exc.reason if isinstance(exc, PluginFailure) else f"returned {exc}"
        warn(f"critic {chosen.name!r} (plugin {chosen.plugin}) failed{on}: {reason}; no "
             "critique from it")
        return None
    return results


# ----- observer hooks ----------------------------------------------------------------------------


def notify(pm: Any, hook_name: str, warn: Callable[[str], None], **kwargs: Any) -> None:
    """Call an observer hook on every plugin, each with only the arguments it declares; a failing
    observer is reported through `warn`, never fatal."""
    if pm is None:
        return
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:
            warn(f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}")
