"""The `arithmetic` task source: seeded, procedural problems such as "What is 47+38?"."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import loop

Op = Literal["+", "-", "*"]

# Spaces up to this many problems are enumerated and shuffled (exact, fast for small spaces where
# rejection sampling would crawl near exhaustion); larger ones are rejection-sampled (enumerating
# 3 operations x 9000 x 9000 four-digit problems would take seconds and gigabytes). The choice
# depends only on the size of the space, never on train_size, so the eval split stays stable.
ENUMERATE_LIMIT = 200_000

_PROMPT_FIELDS = {"a", "op", "b"}


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _operand_range(digits: int) -> tuple[int, int]:
    """Operands with exactly `digits` digits: 1..9, 10..99, 100..999, ..."""
    return (1 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


class ArithmeticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    digits: int = Field(default=2, ge=1, le=6, description=(
        "digits per operand: 1 gives 1..9, 2 gives 10..99, 3 gives 100..999"))
    digits_b: int | None = Field(default=None, ge=1, le=6, description=(
        "digits of the second operand (null: the same as digits), e.g. digits 3 and digits_b 2 "
        "for 317*46"))
    operations: list[Op] = Field(default_factory=lambda: ["+"], min_length=1, description=(
        'operators to draw from, any of "+", "-", "*" (each at most once); "-" may give '
        "negative results"))
    train_size: int = Field(default=2000, ge=1, le=1_000_000, description="training problems")
    eval_size: int = Field(default=200, ge=1, le=100_000, description=(
        "held-out problems; they never appear in train and do not change with train_size"))
    prompt: str = Field(default="What is {a}{op}{b}?", min_length=1, max_length=2000, description=(
        "the user message, a format string with {a} and {b} and, unless there is one operation, "
        "{op}"))
    system_prompt: str | None = Field(default="Answer with only the number.", max_length=10_000,
                                      description="system message; null or empty for none")
    few_shot: list[dict[str, Any]] = Field(default_factory=list, max_length=64, description=(
        "chat messages put between the system message and the question: worked examples, "
        "e.g. a user question, an assistant tool call, the tool's result and the answer"))

    @field_validator("few_shot")
    @classmethod
    def _messages(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(value):
            if message.get("role") not in ("user", "assistant", "tool", "system"):
                raise ValueError(f"message {i}: role must be user, assistant, tool or system")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"message {i}: content must be a string")
        return value

    @field_validator("operations")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each operation may be listed only once")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_fields(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid format string: {exc}") from None
        unknown = fields - _PROMPT_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; use only {{a}}, {{op}}, {{b}}")
        if not {"a", "b"} <= fields:
            raise ValueError("must contain both {a} and {b}")
        return value

    @model_validator(mode="after")
    def _op_shown_when_ambiguous(self) -> "ArithmeticOptions":
        # Without {op} in the prompt, two operations would give indistinguishable questions.
        if len(self.operations) > 1 and "{op}" not in self.prompt:
            raise ValueError("prompt must contain {op} when more than one operation is used")
        return self


class ArithmeticTasks(loop.TaskSource):
    """Procedural arithmetic: `a op b` with operands of `digits` digits.

    Contract of `load(options, seed)`:
    - deterministic: the same options and seed give the same tasks in the same order;
    - disjoint: no (a, op, b) is in both train and eval;
    - eval depends on seed, digits and operations only (and grows by appending with eval_size), so
      changing train_size never changes the held-out set;
    - the reference is the exact integer result as a string ("85", "-12"); metadata holds a, op,
      b and the one-line worked solution ("47 + 38 = 85");
    - raises ValueError (one line) when the space has fewer than train_size + eval_size problems.
    """

    name = "arithmetic"
    default_verifiers: ClassVar[list[str]] = ["math"]
    Options = ArithmeticOptions

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(ArithmeticOptions, options)
        lo, hi = _operand_range(opts.digits)
        lo_b, hi_b = _operand_range(opts.digits_b or opts.digits)
        width, width_b = hi - lo + 1, hi_b - lo_b + 1
        space = len(opts.operations) * width * width_b
        wanted = opts.train_size + opts.eval_size
        if wanted > space:
            raise ValueError(
                f"arithmetic: only {space} distinct problems with digits={opts.digits} and "
                f"operations={opts.operations}, but train_size + eval_size = {wanted}; "
                "lower the sizes or add digits/operations")

        def decode(index: int) -> tuple[int, str, int]:
            op_index, rest = divmod(index, width * width_b)
            a, b = divmod(rest, width_b)
            return lo + a, opts.operations[op_index], lo_b + b

        # A question the prompt's worked examples already answer is never a task: held-out
        # problems must not have their answer in the prompt.
        shown = {m["content"] for m in opts.few_shot if m["role"] == "user"}
        problems = (p for p in map(decode, _distinct_indices(random.Random(seed), space))
                    if opts.prompt.format(a=p[0], op=p[1], b=p[2]) not in shown)
        # Eval is taken first from the stream, so it cannot depend on train_size.
        try:
            eval_tasks = [self._task(opts, *next(problems), "eval")
                          for _ in range(opts.eval_size)]
            train_tasks = [self._task(opts, *next(problems), "train")
                           for _ in range(opts.train_size)]
        except StopIteration:
            raise ValueError(f"arithmetic: only {space - len(shown)} problems are not among "
                             "few_shot's questions; lower train_size or eval_size") from None
        return loop.TaskSet(train=train_tasks, eval=eval_tasks)

    def _task(self, opts: ArithmeticOptions, a: int, op: str, b: int, split: str) -> loop.Task:
        messages = []
        if opts.system_prompt:
            messages.append({"role": "system", "content": opts.system_prompt})
        messages += [dict(m) for m in opts.few_shot]
        messages.append({"role": "user", "content": opts.prompt.format(a=a, op=op, b=b)})
        result = _apply(a, op, b)
        # The worked solution is the one line the model is asked for: what a hint shows and
        # what an updater trains on when it learns from references (never shown to critics).
        return loop.Task(source=self.name, split=split, prompt=messages, reference=str(result),
                         metadata={"a": a, "op": op, "b": b,
                                   loop.SOLUTION_KEY: f"{a} {op} {b} = {result}"})


def _distinct_indices(rng: random.Random, space: int) -> Iterator[int]:
    """An endless-until-exhausted stream of distinct indices into range(space), fixed by `rng`."""
    if space <= ENUMERATE_LIMIT:
        order = list(range(space))
        rng.shuffle(order)
        yield from order
        return
    seen: set[int] = set()
    while len(seen) < space:
        index = rng.randrange(space)
        if index not in seen:
            seen.add(index)
            yield index
