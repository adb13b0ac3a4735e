"""Other people's functions as loop components.

`reward_verifier` turns a reward function with TRL's contract,
`fn(prompts, completions, **kwargs) -> list[float | None]`, into a verifier with one decorator:

    import loop

    @loop.reward_verifier(threshold=0.5)
    def overlap(prompts, completions, reference, **kwargs):
        ...  # one float per completion

    @loop.hookimpl
    def register_verifiers(register):
        register(overlap)

The decorated name is a `loop.Verifier` and still the same TRL reward function: calling it calls
the original unchanged, so it can also go to `register_rewards` or to TRL's
`GRPOTrainer(reward_funcs=[...])`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Callable

from loop.schema import Attempt, Task, Verdict
from loop.interfaces import Verifier

RewardFn = Callable[..., Sequence[Any]]

# Arguments the verifier passes itself; task metadata keys with these names are not passed again.
RESERVED = ("prompts", "completions", "completion_ids", "reference")


class RewardVerifier(Verifier):
    """A TRL reward function judged against a threshold: see `reward_verifier`."""

    def __init__(self, fn: RewardFn, name: str, threshold: float):
        functools.update_wrapper(self, fn)  # __name__, __doc__, __wrapped__: it still looks like fn
        self.fn = fn
        self.name = name  # type: ignore[misc]  # per instance: one class serves every function
        self.threshold = threshold

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> Any:
        """The original reward function, unchanged (for register_rewards and TRL)."""
        return self.fn(prompts, completions, **kwargs)

    def __repr__(self) -> str:
        return f"<reward_verifier {self.name!r} threshold={self.threshold:g}>"

    def verify(self, task: Task, attempt: Attempt) -> Verdict:
        return self.verify_batch([(task, attempt)])[0]

    def verify_batch(self, items: list[tuple[Task, Attempt]]) -> list[Verdict]:
        """Call the function once for the whole chunk with TRL's arguments and turn each value into
        a Verdict. Raises ValueError when the function does not return one value per completion
        (the engine then gives the chunk `infra` verdicts naming the reason)."""
        values = self.fn(**trl_arguments(items))
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"reward function {self.name!r} returned {type(values).__name__}, "
                             "not a list of floats")
        if len(values) != len(items):
            raise ValueError(f"reward function {self.name!r} returned {len(values)} values for "
                             f"{len(items)} completions")
        return [self.judge(value) for value in values]

    def judge(self, value: Any) -> Verdict:
        """One value as a Verdict: passed when value >= threshold, score clipped to [0, 1]; None
        (not applicable), a non-number or a non-finite number is an `infra` verdict, since it
        says nothing about the answer."""
        if value is None:
            return Verdict(passed=False, error_kind="infra",
                           feedback=f"reward function {self.name!r} returned None "
                                    "(not applicable to this answer)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            return Verdict(passed=False, error_kind="infra",
                           feedback=f"reward function {self.name!r} returned {value!r}, not a "
                                    "finite number")
        value = float(value)
        score = min(1.0, max(0.0, value))
        if value >= self.threshold:
            return Verdict(passed=True, score=score, details={"reward": value})
        return Verdict(passed=False, score=score, error_kind="model", details={"reward": value},
                       feedback=f"{self.name} = {value:g}, below the threshold {self.threshold:g}")


def trl_arguments(items: list[tuple[Task, Attempt]]) -> dict[str, list[Any]]:
    """What TRL's GRPOTrainer passes a reward function, built from (task, attempt) pairs:
    conversational `prompts` and `completions`, `completion_ids`, and the dataset columns, which
    here are `reference` and every key of the tasks' metadata (None where a task lacks it)."""
    tasks = [task for task, _ in items]
    columns: dict[str, list[Any]] = {
        "prompts": [task.prompt for task in tasks],
        "completions": [[{"role": "assistant", "content": attempt.completion}]
                        for _, attempt in items],
        "completion_ids": [attempt.token_ids for _, attempt in items],
        "reference": [task.reference for task in tasks],
    }
    keys = dict.fromkeys(key for task in tasks for key in task.metadata)  # first-seen order
    for key in keys:
        if key not in RESERVED:
            columns[key] = [task.metadata.get(key) for task in tasks]
    return columns


def reward_verifier(fn: RewardFn | None = None, *, name: str | None = None,
                    threshold: float = 1.0) -> Any:
    """Decorate a TRL reward function so that it is also a verifier.

    Args:
        name: the verifier's name in configs (`task.verifiers: [NAME]`); default `fn.__name__`.
        threshold: an answer passes when its value is >= threshold (default 1.0).

    Returns a `RewardVerifier`: register it with `register(fn)` in `register_verifiers` (and, if
    you want its values as rewards too, in `register_rewards`). Calling it calls `fn` unchanged.
    Its `verify_batch` calls `fn` once per chunk of attempts (see `trl_arguments`); a value >=
    threshold passes, the score is the value clipped to [0, 1], and None is an `infra` verdict.
    Works bare (`@loop.reward_verifier`) or with arguments.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold):
        raise ValueError(f"reward_verifier: threshold must be a finite number, got {threshold!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"reward_verifier: name must be a non-empty string, got {name!r}")

    def decorate(function: RewardFn) -> RewardVerifier:
        if not callable(function):
            raise TypeError(f"reward_verifier: {function!r} is not callable")
        chosen = name or getattr(function, "__name__", "")
        if not chosen or chosen == "<lambda>":
            raise ValueError("reward_verifier: a lambda needs name=...")
        return RewardVerifier(function, chosen, float(threshold))

    return decorate(fn) if fn is not None else decorate
