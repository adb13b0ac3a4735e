"""The `calculator` environment: one tool that evaluates an arithmetic expression.

Each episode gets a `calculator(expression)` tool. The expression is parsed with Python's `ast`
and only numbers, parentheses, unary minus and + - * / // % ** are evaluated, never `eval`: the
model's text is untrusted. Powers are bounded (exponent ≤ 64, base ≤ 10**12) and results above
10**100 are refused, so a hostile expression cannot hang the worker or fill its memory. A bad
expression raises ValueError; loop answers the model with a `tool` message saying what was
wrong, stored with the error.

The environment gives no reward of its own: the final answer (the model's last turn, the one
without a tool call) is judged by the task's verifiers, `math` in tasks/calculator.yaml.
"""

from __future__ import annotations

import ast
import operator
from typing import Any, Callable

import loop

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_LIMIT = 10**100


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression such as "317*46" or "(12+3)/4".

    Raises ValueError (one line) for anything else: names, calls, strings, a division by zero,
    an exponent above 64, a result beyond 10**100, an expression over 200 characters.
    """
    text = str(expression).strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text:
        raise ValueError("empty expression")
    if len(text) > 200:
        raise ValueError("expression longer than 200 characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {text!r}") from None
    value = _value(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return value


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**12):
            raise ValueError("power too large (exponent at most 64, base at most 10**12)")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result out of range") from None
        if isinstance(result, complex) or abs(result) > _LIMIT:
            raise ValueError("result out of range")
        return result
    raise ValueError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")


class CalculatorEpisode(loop.Episode):
    """One episode: the tool, and how many calls it answered."""

    def __init__(self, task: loop.Task):
        self.task = task
        self.calls = 0

    def tools(self) -> list[Callable[..., Any]]:
        return [self.calculator]

    def calculator(self, expression: str) -> str:
        """Evaluate an arithmetic expression exactly.

        Args:
            expression: the expression, using numbers, parentheses and + - * / ** (e.g. "317*46")
        """
        self.calls += 1
        return str(evaluate(expression))


class Calculator(loop.Environment):
    """A calculator tool for arithmetic word problems and products beyond mental reach."""

    name = "calculator"
    max_turns = 4

    def episode(self, task: loop.Task) -> CalculatorEpisode:
        return CalculatorEpisode(task)
