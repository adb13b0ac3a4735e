"""What kind of wrong a wrong numeric answer is, judged by the verifier (which knows the
reference), so critics can explain it without ever seeing the reference.

`diagnose(question, expected, got)` returns one of (first that applies):

- `sign_error`: got = −expected;
- `off_by_one`: |got − expected| = 1;
- `copied_operand`: got is one of the question's numbers;
- `wrong_operation`: got is another operation (+, −, ×, ÷, either order) on two of the question's
  numbers;
- `magnitude_error`: got = expected × 10^k (a dropped or extra zero, a misplaced point);
- `arithmetic_slip`: same number of digits and one digit differs, or off by a power of ten
  (a carry or borrow slip);
- None: some other wrong answer.
"""

from __future__ import annotations

import itertools
import math
import re

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def diagnose(question: str, expected: str, got: str) -> str | None:
    want, have = _number(expected), _number(got)
    if want is None or have is None or _same(want, have):
        return None
    operands = [float(m) for m in _NUMBER.findall(question.replace(",", ""))][:6]
    if want != 0 and _same(have, -want):
        return "sign_error"
    if _same(abs(have - want), 1):
        return "off_by_one"
    if any(_same(have, x) for x in operands):
        return "copied_operand"
    for a, b in itertools.permutations(operands, 2):
        results = [a + b, a - b, a * b] + ([a / b] if b else [])
        if any(_same(have, r) for r in results):
            return "wrong_operation"
    if want and have and _power_of_ten(have / want):
        return "magnitude_error"
    if _one_digit_apart(want, have) or _power_of_ten(abs(have - want)):
        return "arithmetic_slip"
    return None


def _power_of_ten(x: float) -> bool:
    if x <= 0:
        return False
    k = round(math.log10(x))
    return k != 0 and _same(x, 10.0 ** k)


def _one_digit_apart(a: float, b: float) -> bool:
    if a != int(a) or b != int(b):
        return False
    sa, sb = str(abs(int(a))), str(abs(int(b)))
    return len(sa) == len(sb) and sum(x != y for x, y in zip(sa, sb)) == 1
