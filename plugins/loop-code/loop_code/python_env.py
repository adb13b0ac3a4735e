"""The `python` environment: a code-interpreter tool for episodes.

Each episode gets one tool, `python(code) -> str`: the code runs in the same OS-level sandbox as
the `python_tests` verifier (loop_code.sandbox: no network, no file of the machine, no other
process, resource limits, a wall clock that kills the whole process tree), with the same limits
and options, and the tool returns what it printed: stdout, then stderr, then the value of a last
bare expression (`12 * 7` shows `84`, as a notebook cell does), cut to `output_chars` (head and
tail kept). Each call is a fresh interpreter: nothing carries over between calls, and only the
standard library can be imported (`python -I -S`).

Anything the code does wrong is a tool error, never a crash: an exception (the model reads its
traceback), running past `timeout_s`, being killed by a resource limit, a non-zero `sys.exit`, or
writing more than `output_kb` per stream. The tool then raises `PythonError`, so loop answers
with a `tool` message starting `Error:` and stores the turn with its error; the episode goes on.

The sandbox is probed once (the verifier's start-up check, `probe.py`) in `prepare()`, before a
run starts: where it cannot isolate, the run stops with that one line. Episodes run without
`prepare()` (a direct `run_episodes`) probe on their first episode, and then every episode ends
with that line as its environment error (an `infra` verdict, reward NULL), never by running the
code unsandboxed.
`unsafe_no_sandbox: true` opts out of the sandbox, as for the verifier.

The environment gives no reward of its own: the final answer (the model's turn without a tool
call) is judged by the task's verifiers, `math` in tasks/python-tool.yaml.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Callable

from pydantic import Field

import loop

from loop_code.probe import probe
from loop_code.sandbox import RunResult, Sandbox, SandboxUnavailable, pick_python
from loop_code.verifier import PythonTestsOptions

# loop keeps the first 2,000 characters of a failed tool call's message: an error's own text
# (its summary line first, then the output) stays below that, so the summary is never cut.
ERROR_CHARS = 1900
_LIMIT_SIGNALS = ("SIGKILL", "SIGXCPU", "SIGXFSZ")

# Runs INSIDE the sandbox (standard library only): the code arrives on stdin, runs as __main__
# with a last bare expression's value printed, and the outcome goes to the channel descriptor
# as one JSON line ({"end": "ok"}, {"end": "error", "error": "<last traceback line>"} or
# {"end": "exit", "error": "<which sys.exit>"}); no line means the process died before the code
# finished (a limit, a signal, os._exit).
RUNNER = r'''
import ast, builtins, json, linecache, os, sys, traceback

def _main():
    fd = int(os.environ.pop("LOOP_CHANNEL_FD"))
    source = sys.stdin.buffer.read().decode("utf-8", "replace")
    name = "<python>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)

    def send(message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]

    def failed(exc, skip):
        tb = exc.__traceback__
        for _ in range(skip):
            tb = tb.tb_next if tb is not None else None
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        send({"end": "error", "error": line[:500]})

    try:
        tree = ast.parse(source, name)
    except (SyntaxError, ValueError) as exc:
        failed(exc, 99)
        return
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(tree, name, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, name, "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            send({"end": "ok"})
        else:
            if not isinstance(code, int):
                sys.stderr.write(str(code) + "\n")
            send({"end": "exit", "error": "the code called sys.exit(%s)" % (
                code if isinstance(code, int) else repr(code)[:100])})
        return
    except BaseException as exc:
        failed(exc, 1)
        return
    send({"end": "ok"})

try:
    _main()
finally:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)
'''


class PythonError(Exception):
    """The code failed (an exception, a limit, the wall clock); the message is what the model
    reads: a line saying what happened and the output (for an exception, the output and its
    traceback), cut to size."""


class PythonOptions(PythonTestsOptions):
    """The verifier's sandbox options (same names, same defaults), and how much output the
    model reads back."""

    output_chars: int = Field(default=1000, ge=100, le=100_000, description=(
        "characters of a call's output the model reads back; longer output keeps its head and "
        "tail around a note of how much was cut"))


def clip(text: str, limit: int) -> str:
    """`text` in at most about `limit` characters: its head and tail around a note of the cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = max(0, limit - head - 40)
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail:]}"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def _outcome(result: RunResult) -> dict[str, Any] | None:
    """The runner's last channel message, or None when it never finished."""
    for line in reversed(result.channel.data.decode("utf-8", "replace").splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("end") in ("ok", "error", "exit"):
            return message
    return None


def describe(result: RunResult, options: PythonOptions) -> str:
    """What one call gave the model: its output, or PythonError saying what went wrong."""
    stdout, stderr = _decode(result.stdout.data), _decode(result.stderr.data)
    output = stdout
    if stderr:
        output = f"{stdout.rstrip()}\n[stderr]\n{stderr}" if stdout.strip() else stderr
    output = output.rstrip()
    outcome = _outcome(result)
    problem = None
    if result.start_error:
        problem = f"the sandbox did not start: {result.start_error}"
    elif result.timed_out:
        problem = f"the code ran past the {options.timeout_s:g} s limit and was stopped"
    elif result.stdout.truncated or result.stderr.truncated:
        total = max(result.stdout.total, result.stderr.total)
        problem = (f"the code wrote {total} bytes to one stream, over the {options.output_kb} "
                   "KiB limit; the rest was dropped")
    elif outcome is None and result.returncode != 0:
        signal = result.signal_name
        why = (f"exited with status {result.returncode}" if signal is None
               else f"killed by {signal}: a resource limit" if signal in _LIMIT_SIGNALS
               else f"killed by {signal}")
        problem = f"the code ended before it finished ({why})"
    elif outcome is not None and outcome["end"] == "exit":
        problem = str(outcome.get("error"))
    elif outcome is not None and outcome["end"] == "error":
        # An exception: its traceback (on stderr) ends with this line; the clip keeps the tail.
        error = str(outcome.get("error") or "the code raised an exception")
        raise PythonError(clip(output, min(options.output_chars, ERROR_CHARS)) or error)
    if problem is None:  # finished, or left with os._exit(0)
        return clip(output, options.output_chars) if output else "(no output)"
    body = clip(output, min(options.output_chars, ERROR_CHARS - len(problem) - 1))
    raise PythonError(f"{problem}\n{body}" if body else problem)


class PythonEpisode(loop.Episode):
    """One episode: the tool, with the environment's sandbox; counts its calls."""

    def __init__(self, environment: "PythonEnvironment", sandbox: Sandbox):
        self.environment = environment
        self.sandbox = sandbox
        self.calls = 0

    def tools(self) -> list[Callable[..., Any]]:
        return [self.python]

    def python(self, code: str) -> str:
        """Run Python code in a fresh sandboxed interpreter and return what it printed.

        Args:
            code: a Python program (standard library only, no network or files kept between calls); print what you need, a last bare expression's value is shown too
        """
        self.calls += 1
        options = self.environment.options
        result = self.sandbox.run(RUNNER, str(code).encode("utf-8", "surrogatepass"))
        return describe(result, options)


class PythonEnvironment(loop.Environment):
    """A Python code interpreter tool, run in loop-code's sandbox (`python(code) -> output`)."""

    name = "python"
    max_turns = 4
    Options = PythonOptions

    def __init__(self) -> None:
        self.options = PythonOptions()

    def episode(self, task: loop.Task) -> PythonEpisode:
        return PythonEpisode(self, self.sandbox())

    def prepare(self) -> None:
        self.sandbox()  # SandboxUnavailable stops the run with its line

    def sandbox(self) -> Sandbox:
        """The sandbox for these options, probed once (raises SandboxUnavailable, one line)."""
        key = self.options.model_dump_json()
        lock = self.__dict__.setdefault("_lock", threading.Lock())
        with lock:
            ready = self.__dict__.get("_ready")
            if ready is None or ready[0] != key:
                ready = (key, *self._build())
                self._ready = ready
        _, sandbox, error = ready
        if error is not None:
            raise SandboxUnavailable(error)
        return sandbox

    def _build(self) -> tuple[Sandbox | None, str | None]:
        options = self.options
        try:
            sandbox = Sandbox(pick_python(options.python), options.limits(), options.workers,
                              isolated=not options.unsafe_no_sandbox)
            if options.unsafe_no_sandbox:
                print("WARNING: the python environment runs the model's code WITHOUT a sandbox "
                      "(unsafe_no_sandbox: true): it can read your files, reach the network "
                      "and signal your processes", file=sys.stderr)
            else:
                probe(sandbox)
        except SandboxUnavailable as exc:
            return None, f"sandbox: {exc}"
        return sandbox, None
