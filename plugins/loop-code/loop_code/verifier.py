"""The `python_tests` verifier: run the answer's code with the task's tests in the sandbox.

Verdict contract:
- `passed`: every test snippet passed and the harness finished (checks.judge);
- `score`: the fraction of the task's test snippets that passed;
- `error_kind`: None when passed; `model` for anything the program did (wrong value, exception,
  syntax error, no code, running past its time limit: mistake `timeout`, which the model must
  learn to avoid, so it is a 0 reward, not a skipped one); `infra` when the sandbox or harness
  itself failed (never a reward of 0; the engine re-verifies infra verdicts on resume);
- `mistake`: `no_code`, `syntax_error`, `missing_function`, `failed_assertion`,
  `exception:<Name>`, `timeout`, `exited_early`;
- `feedback`: the first failing test with what the code returned, or the error's last lines
  (read by the critics); `details`: tests run and passed, timings, capped stdout/stderr tails.
"""

from __future__ import annotations

import functools
import json
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import loop

from loop_code import checks
from loop_code.extract import defines, program
from loop_code.harness import HARNESS
from loop_code.probe import probe
from loop_code.sandbox import Limits, Sandbox, SandboxUnavailable, pick_python

TAIL_CHARS = 2000


class PythonTestsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    workers: int = Field(default=4, ge=1, le=64, description="programs run at once")
    timeout_s: float = Field(default=5.0, gt=0, le=600, description=(
        "wall-clock limit per program; the whole process tree is killed at it"))
    cpu_s: int = Field(default=5, ge=1, le=600, description="CPU-seconds limit per program")
    memory_mb: int = Field(default=1024, ge=64, le=1 << 20, description="address-space limit")
    file_mb: int = Field(default=16, ge=1, le=1 << 16, description="largest file it may write")
    tmp_mb: int = Field(default=64, ge=1, le=1 << 16, description="its private /tmp, in RAM")
    open_files: int = Field(default=256, ge=16, le=1 << 20, description="open descriptors")
    processes: int = Field(default=64, ge=1, le=1 << 16, description=(
        "processes and threads of the sandbox user"))
    output_kb: int = Field(default=1024, ge=1, le=1 << 20, description=(
        "stdout/stderr kept per stream; the rest is read and dropped"))
    python: str | None = Field(default=None, description=(
        "interpreter inside the sandbox (default: this one if the sandbox user may run it, "
        "else /usr/bin/python3)"))
    unsafe_no_sandbox: bool = Field(default=False, description=(
        "run the model's code WITHOUT the sandbox (rlimits only: it can read your files, use "
        "the network and signal your processes); for machines where the sandbox cannot work"))

    def limits(self) -> Limits:
        return Limits(wall_s=self.timeout_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb,
                      file_mb=self.file_mb, tmp_mb=self.tmp_mb, open_files=self.open_files,
                      processes=self.processes, output_bytes=self.output_kb << 10)


@functools.lru_cache(maxsize=256)
def _plan(tests: tuple[str, ...]) -> checks.Plan:
    return checks.plan(list(tests))


def _tail(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")[-TAIL_CHARS:]


class PythonTestsVerifier(loop.Verifier):
    name = "python_tests"
    Options = PythonTestsOptions

    def __init__(self) -> None:
        self.options = PythonTestsOptions()

    # ----- start-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check once that the sandbox really isolates (probe.py); raise SandboxUnavailable with
        one line naming what is missing. The unsafe opt-in skips the check, loudly."""
        if self.options.unsafe_no_sandbox:
            print("WARNING: python_tests runs the model's code WITHOUT a sandbox "
                  "(unsafe_no_sandbox: true): it can read your files, reach the network and "
                  "signal your processes", file=sys.stderr)
            return
        probe(self._sandbox())

    def _sandbox(self) -> Sandbox:
        key = self.options.model_dump_json()
        if getattr(self, "_sandbox_key", None) != key:
            python = pick_python(self.options.python)
            self._sandbox_obj = Sandbox(python, self.options.limits(), self.options.workers,
                                        isolated=not self.options.unsafe_no_sandbox)
            self._sandbox_key = key
        return self._sandbox_obj

    # ----- judging ----------------------------------------------------------------------------

    def verify(self, task: loop.Task, attempt: loop.Attempt) -> loop.Verdict:
        return self.verify_batch([(task, attempt)])[0]

    def verify_batch(self, items: list[tuple[loop.Task, loop.Attempt]]) -> list[loop.Verdict]:
        """Verdicts in order; up to `workers` programs run at once, each in its own sandbox."""
        try:
            sandbox = self._sandbox()
        except SandboxUnavailable as exc:
            return [loop.Verdict(passed=False, error_kind="infra", feedback=f"sandbox: {exc}")
                    for _ in items]
        if len(items) == 1:
            return [self._verify_one(sandbox, *items[0])]
        with ThreadPoolExecutor(max_workers=sandbox.workers) as pool:
            return list(pool.map(lambda item: self._verify_one(sandbox, *item), items))

    def _verify_one(self, sandbox: Sandbox, task: loop.Task, attempt: loop.Attempt) -> loop.Verdict:
        meta = task.metadata
        tests = meta.get("tests")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            return loop.Verdict(passed=False, error_kind="infra",
                                feedback=f"task {task.id} has no tests (metadata.tests)")
        try:
            run_plan = _plan(tuple(tests))
        except SyntaxError as exc:
            return loop.Verdict(passed=False, error_kind="infra",
                                feedback=f"task {task.id}: a test does not parse: {exc}")
        entry_point = meta.get("entry_point") or None
        code = program(attempt.completion, entry_point, meta.get("stub") or "")
        if not code.strip():
            return loop.Verdict(passed=False, mistake="no_code", error_kind="model",
                                feedback="no Python code found in the answer")
        nonce = secrets.token_hex(16)
        job = json.dumps({"nonce": nonce, "code": code, "setup": meta.get("setup") or "",
                          "snippets": run_plan.snippets}).encode()
        result = sandbox.run(HARNESS, job)
        details: dict[str, Any] = {
            "seconds": round(result.seconds, 4), "returncode": result.returncode,
            "stdout": _tail(result.stdout.data), "stderr": _tail(result.stderr.data),
            "output_truncated": result.stdout.truncated or result.stderr.truncated,
        }
        if result.start_error:
            return loop.Verdict(passed=False, error_kind="infra", details=details,
                                feedback=f"sandbox: {result.start_error}")
        outcome = checks.judge(run_plan, result.channel.data, nonce)
        details.update(outcome.details)
        if outcome.passed:
            return loop.Verdict(passed=True, score=1.0, details=details)
        if outcome.infra and not result.timed_out:
            reason = _tail(result.stderr.data).strip().splitlines()[-1:] or ["no output"]
            return loop.Verdict(passed=False, error_kind="infra", details=details,
                                feedback=f"sandbox: the harness did not start ({reason[0][:300]})")
        if result.timed_out:
            return loop.Verdict(passed=False, score=outcome.score, error_kind="model",
                                mistake="timeout", details=details,
                                feedback=f"the program ran past the {sandbox.limits.wall_s:g} s "
                                         "limit and was stopped")
        mistake, feedback = outcome.mistake, outcome.feedback
        if entry_point and mistake == "exception:NameError" and not defines(code, entry_point):
            mistake = "missing_function"
            feedback = f"the code does not define `{entry_point}`"
        elif mistake == "exited_early" and result.signal_name:
            feedback += f" (killed by {result.signal_name}: a resource limit)"
        return loop.Verdict(passed=False, score=outcome.score, error_kind="model", mistake=mistake,
                            feedback=feedback[:TAIL_CHARS], details=details)


def tests_passed(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """Reward: the share of the task's tests the code passed (`python_tests`' score); None where
    the check itself failed (infra), so a broken sandbox is never a reward of 0."""
    verdicts = kwargs.get("verdicts")
    if verdicts is None or len(verdicts) != len(completions):
        raise ValueError("tests_passed needs loop's `verdicts` (one per completion)")
    out: list[float | None] = []
    for sample in verdicts:
        values = [v if isinstance(v, loop.Verdict) else loop.Verdict.model_validate(v)
                  for v in sample.values()]
        if not values or any(v.error_kind == "infra" for v in values):
            out.append(None)
        else:
            out.append(min(v.score for v in values))
    return out
