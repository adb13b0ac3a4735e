"""The `math` verifier: the final answer, extracted by math-verify, compared with the reference.

What counts as the final answer is math-verify's extraction order (`math_verify.parse` with
`LatexExtractionConfig()` and `ExprExtractionConfig()`), first rule that finds anything wins:

1. "final answer is X" (priority 0);
2. `\\boxed{X}`, and "final answer ... is X" (50);
3. "answer: X" (100), then "answer ... X" within 50 characters, where "answer ... = X" takes the
   value after the last "=" (200);
4. otherwise any number, expression or LaTeX environment (`$X$`, `\\(X\\)`) in the text.

Within one rule the match that ends **last** in the text wins. So "The answer is 85. Check: 86"
gives 85 (rule 3), but "47+38=85. Then 85+1=86" gives 86 (rule 4, last), and fails: the answer
the model ended on is the one we grade. A number must stand alone: it is preceded by the start,
a space, "=" or a currency sign, so "x85" or "abc85" yields nothing. Thousands separators are
understood ("1,234" and "1 234" are 1234); "12,34" is read as the decimal 12.34; "85%" is 0.85.

One rule of our own on top: when the reference is a number, the answer must be a number too
(`85`, `85.0`, `\\frac{170}{2}`, or a plain fraction like `3/4`), not an expression to be evaluated.
Otherwise a model that merely restates "What is 47+38?" as "47+38" would be graded correct.
Such an answer is a `format` mistake.

The verifier never raises. Answers longer than `max_chars` are cut to their tail (a number cut in
half at the edge is dropped, so a long digit run cannot turn into the reference). math-verify's own
timeouts use SIGALRM, which works only in the main thread; elsewhere they are off, and the numeric
rule above keeps sympy away from hostile expressions whenever the reference is a number.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import loop

_FRACTION = re.compile(r"-?\d+\s*/\s*\d+")
_SHOWN_CHARS = 100  # of an extracted answer in feedback and details


class MathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_chars: int = Field(default=2000, ge=100, le=1_000_000, description=(
        "only the last max_chars characters of an answer are read (the final answer ends it)"))
    timeout_s: int = Field(default=5, ge=1, le=600, description=(
        "math-verify's limit per parse and per comparison, in whole seconds (main thread only)"))


class MathVerifier(loop.Verifier):
    """Judges an attempt by its final answer (see the module docstring for what counts).

    Verdicts (never an exception):
    - passed, score 1.0: the final answer equals the reference (numerically or symbolically);
    - error_kind "model", mistake "format": no final answer found, or not a number where a number
      is expected; feedback says which;
    - error_kind "model", mistake "wrong_answer": feedback "expected R, got X";
    - error_kind "timeout": math-verify ran out of time; "infra": the task has no usable
      reference or the checker itself failed.
    `details["extracted"]` holds the extracted answer text when there is one, and a wrong
    numeric answer gets `details["diagnosis"]` (off_by_one, wrong_operation, ...: see
    loop_math.diagnosis) when it fits one.
    """

    name = "math"
    Options = MathOptions

    def __init__(self, options: Any = None) -> None:
        self.options = loop.coerce_options(MathOptions, options)

    def verify(self, task: loop.Task, attempt: loop.Attempt) -> loop.Verdict:
        verdict = self.check(getattr(attempt, "completion", ""), getattr(task, "reference", None))
        if verdict.mistake == "wrong_answer":
            # what kind of wrong (off by one, wrong operation, ...): for the critics, who do not
            # see the reference (loop_math.diagnosis)
            from loop_math.diagnosis import diagnose

            question = " ".join(str(m.get("content", "")) for m in task.prompt
                                if isinstance(m, dict) and m.get("role") == "user")
            kind = diagnose(question, str(task.reference), verdict.details.get("extracted", ""))
            if kind:
                verdict.details["diagnosis"] = kind
        return verdict

    def check(self, completion: Any, reference: Any) -> loop.Verdict:
        """Judge a bare completion text against a reference string: the core of `verify`, also
        used by the `binary` reward when it runs inside TRL without loop's verdicts."""
        try:
            return self._check(completion, reference)
        except BaseException as exc:  # noqa: BLE001 - a verifier must never raise
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if _is_timeout(exc):
                return _timeout_verdict()
            return loop.Verdict(passed=False, score=0.0, error_kind="infra",
                                feedback=f"math verifier failed: {type(exc).__name__}",
                                details={"exception": _clip(repr(exc), 300)})

    def _check(self, completion: Any, reference: Any) -> loop.Verdict:
        from math_verify import parse, verify  # lazy: importing sympy costs ~0.5 s at CLI start

        _quiet_timeout_warning()

        reference = "" if reference is None else _clean(str(reference)).strip()
        if not reference:
            return loop.Verdict(passed=False, error_kind="infra", feedback="task has no reference")
        timeout = self.options.timeout_s if _in_main_thread() else None
        gold = parse(reference, parsing_timeout=timeout, raise_on_error=True)
        if not gold:
            gold = parse(f"${reference}$", parsing_timeout=timeout, raise_on_error=True)
        gold_value = _first_parsed(gold)
        if gold_value is None:
            return loop.Verdict(passed=False, error_kind="infra",
                                feedback=f"reference {_clip(reference)!r} is not a math answer")

        if not isinstance(completion, str):
            completion = "" if completion is None else str(completion)
        text = _tail(_clean(completion), self.options.max_chars)
        try:
            pred = parse(text, parsing_timeout=timeout, raise_on_error=True) if text.strip() else []
        except Exception as exc:  # noqa: BLE001 - e.g. a 5000-digit number; timeouts propagate
            return loop.Verdict(passed=False, error_kind="model", mistake="format",
                                feedback="could not read the final answer",
                                details={"exception": _clip(repr(exc), 300)})
        if not pred:
            return loop.Verdict(passed=False, error_kind="model", mistake="format",
                                feedback="no final answer found")
        value = pred[0]
        raw = pred[-1] if isinstance(pred[-1], str) else str(value)
        shown = _clip(raw.strip().strip("*").rstrip(".").strip() or raw)
        details = {"extracted": shown}
        if _is_number(gold_value) and not _is_number_answer(value, shown):
            return loop.Verdict(passed=False, error_kind="model", mistake="format", details=details,
                                feedback=f"final answer {shown!r} is not a number")
        if verify(gold, [value], timeout_seconds=timeout, raise_on_error=True):
            return loop.Verdict(passed=True, score=1.0, details=details)
        return loop.Verdict(passed=False, error_kind="model", mistake="wrong_answer",
                            details=details, feedback=f"expected {_clip(reference)}, got {shown}")


class _DropTimeoutDisabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_quiet_once: list[bool] = []


def _quiet_timeout_warning() -> None:
    # Off the main thread we turn math-verify's timeouts off on purpose (they need SIGALRM); its
    # warning about that would print once per worker thread and say nothing new.
    if not _quiet_once:
        _quiet_once.append(True)
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabled())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _is_timeout(exc: BaseException) -> bool:
    try:
        from math_verify.errors import TimeoutException
    except Exception:  # noqa: BLE001
        return False
    return isinstance(exc, TimeoutException)


def _timeout_verdict() -> loop.Verdict:
    return loop.Verdict(passed=False, score=0.0, error_kind="timeout",
                        feedback="math verifier timed out")


def _clean(text: str) -> str:
    # Lone surrogates (from undecodable model bytes) break encoding in logging and sympy;
    # replace them, keep everything else (NUL included) as is.
    return text.encode("utf-8", "replace").decode("utf-8")


def _tail(text: str, limit: int) -> str:
    """The last `limit` characters, minus a leading fragment cut mid-word: "1000...0085" cut at
    the edge must not become "85"."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    if text[-limit - 1].isspace() or tail[:1].isspace():
        return tail
    parts = tail.split(None, 1)
    return parts[1] if len(parts) > 1 else ""


def _first_parsed(parsed: list[Any]) -> Any:
    """The first non-string result of math_verify.parse (strings are its raw fallbacks)."""
    for item in parsed:
        if not isinstance(item, str):
            return item
    return None


def _is_number(value: Any) -> bool:
    return bool(getattr(value, "is_Number", False))


def _is_number_answer(value: Any, shown: str) -> bool:
    # math-verify keeps "3/4" unevaluated (Mul), while LaTeX \frac{3}{4} arrives as a Rational.
    return _is_number(value) or bool(_FRACTION.fullmatch(shown.strip().rstrip(".")))


def _clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
