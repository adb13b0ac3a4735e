"""loop-math: math tasks for loop, written as any third-party plugin would be.

Registers (by name, selected in a task file):
- task sources `arithmetic` (procedural "What is 47+38?") and `jsonl` (GSM8K-style files);
- verifier `math` (final answer extracted and compared by math-verify);
- reward `binary` (TRL's contract: 1.0 / 0.0 / None for a broken check);
- environment `calculator` (a safe arithmetic-expression tool for episodes).

Importing this module is cheap: math-verify (and sympy) load on the first verification.
"""

import loop

from loop_math.arithmetic import ArithmeticTasks
from loop_math.calculator import Calculator
from loop_math.jsonl import JsonlTasks
from loop_math.reward import binary
from loop_math.verifier import MathVerifier

__all__ = ["ArithmeticTasks", "Calculator", "JsonlTasks", "MathVerifier", "binary"]


@loop.hookimpl
def register_tasks(register):
    register(ArithmeticTasks())
    register(JsonlTasks())


@loop.hookimpl
def register_verifiers(register):
    register(MathVerifier())


@loop.hookimpl
def register_rewards(register):
    register(binary)


@loop.hookimpl
def register_environments(register):
    register(Calculator())
