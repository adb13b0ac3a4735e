"""A worker subprocess that speaks `loop_vllm.protocol` over its stdin and stdout.

The session side of the pipe: start `python -m loop_vllm.worker` in its own process group, read
its protocol lines on a thread (so waits can time out), drain its stderr on another (vLLM logs a
lot; a full pipe would stall the worker), keep the last lines for error messages, and stop it:
ask, wait, then kill the whole group so no engine process outlives the phase holding memory.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections import deque
from typing import IO, Any

from loop_vllm import protocol

_EOF = object()


class VLLMError(RuntimeError):
    """The vllm backend cannot go on (worker missing, failed or dead, bad request); `str()` is
    one line for the user."""


class WorkerProcess:
    """`python -m MODULE` with piped stdin/stdout/stderr. `receive()` raises VLLMError with the
    last lines of the worker's stderr when it exits without answering."""

    def __init__(self, python: str, module: str, env: dict[str, str],
                 log: IO[str] | None = None, tail_lines: int = 200):
        self.python = python
        self.log = log
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.proc = subprocess.Popen(
            [python, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, start_new_session=True,
        )
        self._messages: queue.Queue[Any] = queue.Queue()
        self._stderr_done = threading.Event()
        threading.Thread(target=self._read_messages, name="vllm-worker-out", daemon=True).start()
        threading.Thread(target=self._drain_stderr, name="vllm-worker-err", daemon=True).start()

    # ----- reading ------------------------------------------------------------------------------

    def _read_messages(self) -> None:
        try:
            while (message := protocol.receive(self.proc.stdout)) is not None:
                self._messages.put(message)
        except (OSError, ValueError):
            pass  # a broken line or pipe counts as the end of the stream
        self._messages.put(_EOF)

    def _drain_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if self.log is not None:
                self.log.write(line + "\n")
                self.log.flush()
        self._stderr_done.set()

    def receive(self, timeout: float | None = None, what: str = "an answer") -> dict[str, Any]:
        """The next message; VLLMError if the worker ends first or `timeout` seconds pass."""
        try:
            message = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise VLLMError(f"vllm worker gave no {what} within {timeout:g} s"
                              f"{self.last_lines(' (stderr: ', ')')}") from None
        if message is _EOF:
            self._messages.put(_EOF)  # every later receive fails the same way
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            self._stderr_done.wait(timeout=5)
            status = "closed its output" if code is None else f"exited with code {code}"
            if code is not None and code < 0:
                status = f"was killed by {signal.Signals(-code).name}"
            raise VLLMError(f"vllm worker ({self.python}) {status}"
                              f"{self.last_lines(': ')}")
        return message

    def last_lines(self, prefix: str = "", suffix: str = "", count: int = 3) -> str:
        """The worker's last non-empty stderr lines, joined on one line ('' when none)."""
        lines = [" ".join(line.split()) for line in self.tail if line.strip()][-count:]
        if not lines:
            return ""
        text = " | ".join(line if len(line) <= 300 else line[:297] + "..." for line in lines)
        return f"{prefix}{text}{suffix}"

    # ----- writing and stopping -----------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        try:
            protocol.send(self.proc.stdin, message)
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker is gone; the next receive() reports why

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request_exit(self) -> None:
        """Ask the worker to exit (close message, then end of stdin) without waiting."""
        if self.proc.stdin.closed:
            return
        self.send({"op": "close"})
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def stop(self, timeout: float) -> int | None:
        """Ask the worker to exit; after `timeout` seconds kill its process group. Returns its
        exit code. Idempotent."""
        if self.alive():
            self.request_exit()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._kill_group(signal.SIGKILL)  # whatever it started and left behind
        self.proc.wait()
        self._stderr_done.wait(timeout=5)
        return self.proc.returncode

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
