"""Verifier, reward and critic calls in supervised worker processes (`plugins.isolation: process`).

A run starts one pool (`pool_for`, entered by `loop.runs.drive` before any model is loaded) and
the guarded calls of loop.guarded send their work to it while it is active; outside a run (unit
tests, `loop verify`), or with `plugins.isolation: in_process`, they run in this process as
before. The contract of a pool:

- Workers are forked (multiprocessing's "fork" context, Linux) from this process, so they
  inherit the resolved components (`loop.resolve.Components`), plugins defined anywhere
  included; nothing is imported again. Only the call's arguments ((task, attempt, verdict)
  records, pydantic models) and its result cross the pipe, pickled.
- Each worker caps its own address space (RLIMIT_AS, soft limit) at what it inherited plus
  `plugins.memory_mb`: an allocation past it fails with MemoryError, which is reported as the
  memory cap and the worker is replaced.
- A call has a time limit per unit of work; past it the parent kills the worker's process
  group (SIGKILL: a hang in C code or a loop that holds the GIL cannot escape it) and forks a
  replacement. A worker that dies (os._exit, a signal such as SIGSEGV or the OOM killer's
  SIGKILL) is replaced the same way; its current unit fails with the exit code or the signal,
  and the units after it go on in the replacement.
- A worker serves any number of calls; a call's side effects on a component (attributes it
  sets) stay in the worker. Plugin code in a worker must not use CUDA nor torch's thread pools
  (a replacement is forked after the model is loaded, and a forked child cannot use them).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from loop import interfaces
from loop.guarded import PluginFailure, _call

# How often a waiting parent checks that its worker is alive when no answer comes (a dead
# worker whose pipe a grandchild still holds open gives no end-of-file).
_LIVENESS_S = 0.5

_ACTIVE: "PluginPool | None" = None  # the pool guarded calls use (None: in process)

SIGNAL_MEANING = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "aborted",
    signal.SIGILL: "illegal instruction",
    signal.SIGFPE: "floating-point exception",
    signal.SIGKILL: "killed: out of memory (the kernel's OOM killer) or by another process",
    signal.SIGTERM: "terminated",
}


def current() -> "PluginPool | None":
    """The active pool, or None: plugin calls then run in this process."""
    return _ACTIVE


@contextlib.contextmanager
def pool_for(components: Any, config: Any) -> Iterator["PluginPool | None"]:
    """Within the block, verifier, reward and critic calls of `components` run in a pool started
    here and closed on the way out (`config.plugins.isolation: process`, the default), or in
    this process (`in_process`: yields None). Not re-entrant: an inner block keeps the outer
    pool."""
    global _ACTIVE
    settings = config.plugins
    if settings.isolation != "process" or _ACTIVE is not None:
        yield _ACTIVE
        return
    pool = PluginPool(plugin_targets(components), workers=settings.workers,
                      memory_mb=settings.memory_mb, timeout_s=config.verify.timeout_s)
    _ACTIVE = pool
    try:
        yield pool
    finally:
        _ACTIVE = None
        pool.close()


def plugin_targets(components: Any) -> list[Any]:
    """What the workers call: every verifier, every reward function, and every critic that keeps
    the default `critique_batch`. A critic that overrides it may generate with the policy model
    through its CriticContext, which lives in this process, so it stays here."""
    critics = [c.component for c in components.critics
               if type(c.component).critique_batch is interfaces.Critic.critique_batch]
    return [*(c.component for c in components.verifiers),
            *(c.component for c in components.rewards), *critics]


@dataclass
class Unit:
    """One call for a worker: `target.method(*args, **kwargs)` (`method` None: the target itself,
    a reward function), with at most `limit_s` seconds (None: no limit)."""

    target: Any
    method: str | None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    limit_s: float | None = None


class _Worker:
    def __init__(self, process: Any, conn: Any):
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL to the worker and whatever it started in its process group (a sandboxed
        program, a helper process), then reap it."""
        with contextlib.suppress(OSError):
            if os.getpgid(self.pid) == self.pid:  # its own group, never ours
                os.killpg(self.pid, signal.SIGKILL)
            else:
                self.process.kill()
        self.process.join(5)
        self.conn.close()


class PluginPool:
    """`workers` forked worker processes serving calls on `targets` (components and reward
    functions, matched by identity). `run` is thread-safe; each call takes one idle worker.
    `timeout_s` is the per-item limit of calls that give none (critics)."""

    def __init__(self, targets: list[Any], workers: int = 1, memory_mb: int | None = 4096,
                 timeout_s: float | None = None):
        self._targets = {id(t): t for t in targets}
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("fork")
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._free = threading.Condition()
        self.replaced = 0  # workers forked to take the place of one that died or was killed
        self._closed = False
        for _ in range(workers):
            self._idle.append(self._fork())

    def serves(self, target: Any) -> bool:
        """Whether calls on `target` go to the workers (it was in `targets`)."""
        return self._targets.get(id(target)) is target

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return sorted(w.pid for w in self._all)

    def run(self, units: list[Unit]) -> list[Any]:
        """Each unit's return value, or a PluginFailure for a unit that raised (as
        `loop.guarded.call_plugin` reports it), ran past its limit (`timed_out`), or whose
        worker died (`crashed`); units after a failed one run in a replacement worker."""
        if self._closed:
            raise RuntimeError("the plugin pool is closed")
        worker = self._checkout()
        out: list[Any] = []
        try:
            while len(out) < len(units):
                worker, results = self._serve(worker, units[len(out):])
                out += results
        finally:
            self._checkin(worker)
        return out

    def close(self) -> None:
        """Stop every worker (a worker still busy is killed)."""
        self._closed = True
        with self._free:
            workers, self._idle = list(self._all), []
            self._all.clear()
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.kill()
            else:
                worker.conn.close()

    # ----- the parent's side ----------------------------------------------------------------

    def _checkout(self) -> _Worker:
        with self._free:
            while not self._idle:
                self._free.wait()
            return self._idle.pop()

    def _checkin(self, worker: _Worker) -> None:
        with self._free:
            if self._closed:
                worker.kill()
                return
            self._idle.append(worker)
            self._free.notify()

    def _fork(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        others = [w.conn for w in self._all]
        process = self._context.Process(
            target=_serve, args=(child_end, self._targets, self.memory_mb, others),
            daemon=True, name="loop-plugin-worker")
        process.start()
        child_end.close()  # only the child holds it now: its death is end-of-file here
        with contextlib.suppress(OSError):
            os.setpgid(process.pid, process.pid)  # the child does it too; whoever is first
        worker = _Worker(process, parent_end)
        self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        self._all.discard(worker)
        self.replaced += 1
        return self._fork()

    def _serve(self, worker: _Worker, units: list[Unit]) -> tuple[_Worker, list[Any]]:
        """Run `units` on `worker` until one fails in a way that ends the worker; returns the
        worker to go on with (a replacement after such a failure) and the units' results."""
        try:
            worker.conn.send([(id(u.target), u.method, u.args, u.kwargs) for u in units])
        except (OSError, EOFError):  # it died between calls
            return self._replace(worker), []
        except Exception as exc:  # arguments that cannot be pickled: nothing was written
            failure = PluginFailure(f"its arguments cannot be sent to a worker process: "
                                    f"{type(exc).__name__}: {exc}")
            return worker, [failure] * len(units)
        results: list[Any] = []
        for unit in units:
            got = self._answer(worker, unit.limit_s)
            if isinstance(got, PluginFailure):  # timed out or died: the worker is gone
                return self._replace(worker), [*results, got]
            status, value, retire = got
            results.append(value if status == "ok" else self._failure(value))
            if retire:  # past its memory cap: what it holds now cannot be trusted
                return self._replace(worker), results
        return worker, results

    def _answer(self, worker: _Worker, limit_s: float | None) -> Any:
        """The worker's next message, or a PluginFailure when it ran past `limit_s` (the worker
        is then killed by the caller's replacement) or died."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while True:
            wait = _LIVENESS_S if deadline is None else min(_LIVENESS_S,
                                                            deadline - time.monotonic())
            if wait > 0 and worker.conn.poll(wait):
                try:
                    return worker.conn.recv()
                except (EOFError, OSError):
                    return self._death(worker)
            if deadline is not None and time.monotonic() >= deadline:
                return PluginFailure(f"did not return within {limit_s:g} s", timed_out=True)
            if not worker.process.is_alive():
                return self._death(worker)

    def _death(self, worker: _Worker) -> PluginFailure:
        worker.process.join(5)
        code = worker.process.exitcode
        if code is None:
            reason = "its worker process stopped answering"
        elif code >= 0:
            reason = f"its worker process exited with code {code}"
        else:
            number = -code
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            meaning = SIGNAL_MEANING.get(number)
            reason = f"its worker process was killed by {name}" + (f" ({meaning})" if meaning
                                                                   else "")
        return PluginFailure(reason, crashed=True)

    def _failure(self, value: tuple) -> PluginFailure:
        """A unit's exception as a PluginFailure; a MemoryError counts as a crash (the worker
        is replaced, and a chunk it ended is tried again item by item, like a dead worker's)."""
        reason, traceback, where, memory = value
        if memory and self.memory_mb:
            reason += (f" (past the worker's memory cap of {self.memory_mb} MiB: "
                       "plugins.memory_mb)")
        return PluginFailure(reason, traceback=traceback, where=where, crashed=memory)


# ----- the worker's side -------------------------------------------------------------------------


def _serve(conn: Any, targets: dict[int, Any], memory_mb: int | None, others: list[Any]) -> None:
    """A worker's life: answer each job (a list of units) with one message per unit, in order,
    until the parent sends None or goes away."""
    global _ACTIVE
    _ACTIVE = None  # a guarded call a plugin makes in here runs here
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own process group: Ctrl-C goes to the parent, which stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    for other in others:  # the parent's ends of the other workers' pipes
        with contextlib.suppress(OSError):
            other.close()
    from loop.runlock import HELD

    for fd in list(HELD):  # the run's lock is the parent's alone (a resume after kill -9)
        with contextlib.suppress(OSError):
            os.close(fd)
    HELD.clear()
    if memory_mb:
        _cap_address_space(memory_mb)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if job is None:
            os._exit(0)
        for key, method, args, kwargs in job:
            target = targets[key]
            fn = target if method is None else getattr(target, method)
            try:
                message = ("ok", _call(fn, None, *args, **kwargs), False)
            except PluginFailure as exc:
                memory = exc.reason.startswith("raised MemoryError")
                message = ("error", (exc.reason, exc.traceback, exc.where, memory), memory)
            try:
                conn.send(message)
            except (OSError, EOFError):
                os._exit(0)
            except Exception as exc:  # a result that cannot be pickled
                conn.send(("error", (f"returned a value that cannot be sent back from its "
                                     f"worker process: {type(exc).__name__}: {exc}", None, None,
                                     False), False))
            if message[2]:
                os._exit(0)


def _cap_address_space(memory_mb: int) -> None:
    """Soft RLIMIT_AS at the address space mapped now plus `memory_mb` (the hard limit stays, so
    a sandbox the plugin starts can set its own)."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills this worker when the loop's process dies (kill -9 of
    the run included), so no worker outlives its run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)
