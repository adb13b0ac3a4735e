"""The parent's side of a test run: rewrite the tests' asserts, then judge what comes back.

`plan(snippets)` turns every `assert` into a report call the harness executes (see harness.py):
- `assert L == R` with a literal R (or L): the program only reports L; the expected value is kept
  here and never enters the sandbox, so a program cannot report "what the test wants";
- `assert L == R` otherwise: both sides are reported and compared here;
- any other `assert C`: C's value is reported and its truth is taken here.
Values arrive encoded by exact builtin type and are compared here with Python's own `==` on
plain builtins: a returned object that claims equality with everything is reported as its type
and fails.

`judge(plan, result, nonce)` decides: a snippet passes when it ran to its end, every report in it
passed, and every one of its top-level asserts reported at least once; the program passes when
every snippet passed and the harness's final message carries the run's nonce (an early
`os._exit(0)` or `sys.exit(0)` never passes).
"""

from __future__ import annotations

import ast
import base64
import json
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


@dataclass
class Check:
    """One assert: where it is, what it says, and (for literal comparisons) its expected value."""

    snippet: int
    source: str
    expected: Any = _MISSING
    top_level: bool = True


@dataclass
class Plan:
    snippets: list[str]  # rewritten, as sent to the sandbox
    checks: list[Check] = field(default_factory=list)


@dataclass
class Outcome:
    """The judgement of one run."""

    passed: bool
    score: float
    mistake: str | None = None
    feedback: str = ""
    infra: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class _Rewriter(ast.NodeTransformer):
    def __init__(self, snippet: int, checks: list[Check]) -> None:
        self.snippet, self.checks, self.depth = snippet, checks, 0

    def _nested(self, node: ast.AST) -> ast.AST:
        self.depth += 1
        try:
            return self.generic_visit(node)
        finally:
            self.depth -= 1

    visit_For = visit_While = visit_If = visit_With = visit_Try = _nested
    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        k = len(self.checks)
        check = Check(self.snippet, ast.unparse(node), top_level=self.depth == 0)
        test = node.test
        if (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Eq)):
            left, right = test.left, test.comparators[0]
            for got, want in ((left, right), (right, left)):
                try:
                    check.expected = ast.literal_eval(want)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
                call = _call("__loop_value", k, got)
                break
            else:
                call = _call("__loop_pair", k, left, right)
        else:
            call = _call("__loop_truth", k, test)
        self.checks.append(check)
        return ast.copy_location(ast.Expr(call), node)


def _call(name: str, k: int, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), [ast.Constant(k), *args], [])


def plan(snippets: list[str]) -> Plan:
    """Rewrite `snippets` (test code). Raises SyntaxError for a test that does not parse (the
    task's fault, not the model's)."""
    result = Plan(snippets=[])
    for index, snippet in enumerate(snippets):
        tree = _Rewriter(index, result.checks).visit(ast.parse(snippet))
        result.snippets.append(ast.unparse(ast.fix_missing_locations(tree)))
    return result


def decode(value: Any) -> Any:
    """The harness's strict encoding back to builtins (ValueError if malformed)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"malformed value {str(value)[:80]}")
    (tag, data), = value.items()
    if tag == "i":
        return int(data)
    if tag == "f":
        return float(data)
    if tag == "c":
        return complex(float(data[0]), float(data[1]))
    if tag == "b":
        return base64.b64decode(data)
    if tag in ("l", "t", "s", "fs"):
        items = [decode(item) for item in data]
        return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d":
        return {decode(k): decode(v) for k, v in data}
    raise ValueError(f"unknown tag {tag!r}")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _messages(raw: bytes) -> list[dict]:
    messages = []
    for line in raw.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue  # a torn last line (killed mid-write) or noise: ignored, never trusted
        if isinstance(message, dict):
            messages.append(message)
    return messages


def _report_passed(check: Check, message: dict) -> tuple[bool, str]:
    """Whether one report passes, and a line for the feedback when it does not."""
    if "bad" in message:
        return False, f"{check.source} failed: the value is a {message['bad']}, not a plain value"
    try:
        if "v" in message:
            got = decode(message["v"])
            ok = check.expected is not _MISSING and got == check.expected
            return ok, f"{check.source} failed: got {_short(got)}"
        if "l" in message and "r" in message:
            left, right = decode(message["l"]), decode(message["r"])
            return left == right, f"{check.source} failed: {_short(left)} != {_short(right)}"
        if "t" in message:
            value = decode(message["t"])
            return bool(value), f"{check.source} failed: the condition is {_short(value)}"
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        return False, f"{check.source}: unreadable report ({exc})"
    return False, f"{check.source}: unreadable report"


def judge(run_plan: Plan, channel: bytes, nonce: str) -> Outcome:
    """Decide from the channel alone (timeouts and crashes are the caller's to add)."""
    messages = _messages(channel)
    if not any(m.get("ready") == 1 for m in messages):
        return Outcome(False, 0.0, infra=True, feedback="the test harness did not start")
    for message in messages:
        if message.get("stage") in ("code", "setup"):
            kind = str(message.get("type", "Exception"))
            error = str(message.get("error", "")).strip()
            if message["stage"] == "code":
                mistake = "syntax_error" if kind in ("SyntaxError", "IndentationError") \
                    else f"exception:{kind}"
                return Outcome(False, 0.0, mistake=mistake,
                               feedback=f"the code raised when it was run: {error}",
                               details={"error": error})
            return Outcome(False, 0.0, mistake=f"exception:{kind}",
                           feedback=f"the tests' setup raised: {error}", details={"error": error})
    snippets = len(run_plan.snippets)
    ended, errors = set(), {}
    failed: dict[int, str] = {}  # check index -> first failure line
    reported: set[int] = set()
    for message in messages:
        if "s" in message and isinstance(message["s"], int):
            if message.get("end") == 1:
                ended.add(message["s"])
            elif "error" in message:
                errors.setdefault(message["s"], (str(message.get("type", "Exception")),
                                                 str(message["error"]).strip()))
        elif isinstance(message.get("k"), int) and 0 <= message["k"] < len(run_plan.checks):
            k = message["k"]
            reported.add(k)
            ok, line = _report_passed(run_plan.checks[k], message)
            if not ok:
                failed.setdefault(k, line)
    done = any(m.get("done") == nonce for m in messages)
    passed_snippets = []
    for index in range(snippets):
        own = [k for k, c in enumerate(run_plan.checks) if c.snippet == index]
        ok = (index in ended and not any(k in failed for k in own)
              and all(k in reported for k in own if run_plan.checks[k].top_level))
        passed_snippets.append(ok)
    score = sum(passed_snippets) / snippets if snippets else 0.0
    if done and all(passed_snippets):
        return Outcome(True, 1.0)
    details: dict[str, Any] = {"tests": snippets, "tests_passed": sum(passed_snippets)}
    if failed:
        first = failed[min(failed)]
        return Outcome(False, score, mistake="failed_assertion", feedback=first,
                       details={**details, "error": "AssertionError: " + first})
    if errors:
        index = min(errors)
        kind, error = errors[index]
        return Outcome(False, score, mistake=f"exception:{kind}",
                       feedback=f"test {index + 1} raised: {error}",
                       details={**details, "error": error})
    return Outcome(False, score, mistake="exited_early",
                   feedback="the program stopped before the tests finished",
                   details=details)
