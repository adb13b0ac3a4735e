"""The `reasoning_gym` verifier: the dataset's own `score_answer` on the model's answer."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import loop

from loop_reasoning_gym import gym

_SHOWN_CHARS = 200  # of an answer or reference in feedback and details
_SLACK = 1e-9  # a score this far outside [0, 1] is float rounding, not a broken checker


class ReasoningGymVerifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    threshold: float = Field(default=1.0, gt=0.0, le=1.0, description=(
        "score_answer's value at or above which an answer passes (many datasets give partial "
        "credit, e.g. 0.01 for any answer or len(right)/len(answer) for a longer one)"))
    tag: str = Field(default="answer", pattern=r"^[A-Za-z][\w-]*$", max_length=50, description=(
        "the answer is the text inside the reply's last <tag>...</tag>"))


class ReasoningGymVerifier(loop.Verifier):
    """Scores an `rg:` task's attempt as reasoning-gym's eval does: `score_answer(extract_answer(
    reply), entry)` on the exact entry the task was made from (rebuilt from the task's recipe).

    Verdicts (never an exception):
    - score = score_answer's value; passed = score >= threshold;
    - a failed answer is error_kind "model", mistake "format" when the reply has no
      <answer>...</answer> (score_answer still scores None: some datasets give it 0.01), else
      "wrong_answer";
    - error_kind "infra" when the task is not an rg: task, its entry cannot be rebuilt (another
      reasoning-gym version generating a different question), or score_answer raises or returns
      something that is not a number in [0, 1].
    details: "extracted" (the answer text, or None), "score", "dataset".
    """

    name = "reasoning_gym"
    Options = ReasoningGymVerifierOptions

    def __init__(self, options: Any = None) -> None:
        self.options = loop.coerce_options(ReasoningGymVerifierOptions, options)

    def verify(self, task: loop.Task, attempt: loop.Attempt) -> loop.Verdict:
        meta = task.metadata
        try:
            recipe = gym.Recipe.of(meta["dataset"], meta["config"], meta["seed"], meta["size"])
            index, question = int(meta["index"]), meta["entry"]["question"]
        except (KeyError, TypeError, ValueError):
            return _infra("task has no reasoning-gym recipe in its metadata (not an rg: task?)")
        try:
            dataset, entry = gym.entry(recipe, index)
        except Exception as exc:  # noqa: BLE001 - a verifier must never raise
            return _infra(f"could not rebuild the reasoning-gym entry: {gym.one_line(exc)}")
        if entry.get("question") != question:
            return _infra(f"reasoning-gym {gym.version()} generates a different question for "
                          f"{recipe.dataset} item {index} than the stored task (another version?)")

        completion = attempt.completion if isinstance(attempt.completion, str) else ""
        answer = gym.extract_answer(completion, self.options.tag)
        try:
            value = dataset.score_answer(answer, entry)
        except Exception as exc:  # noqa: BLE001 - reasoning-gym's checker failed, not the model
            return _infra(f"{recipe.dataset}.score_answer raised {gym.one_line(exc)}",
                          extracted=_clip(answer))
        score = _unit_number(value)
        if score is None:
            return _infra(f"{recipe.dataset}.score_answer returned {_clip(repr(value))}, not a "
                          "number in [0, 1]", extracted=_clip(answer))
        details = {"extracted": _clip(answer), "score": score, "dataset": recipe.dataset}
        if score >= self.options.threshold:
            return loop.Verdict(passed=True, score=score, details=details)
        tag = self.options.tag
        if answer is None:
            return loop.Verdict(passed=False, score=score, error_kind="model", mistake="format",
                                details=details,
                                feedback=f"no <{tag}>...</{tag}> in the reply: put the final "
                                         f"answer inside <{tag}></{tag}>")
        expected = "" if task.reference is None else f"expected {_clip(task.reference)}, "
        return loop.Verdict(passed=False, score=score, error_kind="model", mistake="wrong_answer",
                            details=details,
                            feedback=f"{expected}got {_clip(answer)} (score {score:.3g}, passing "
                                f"needs {self.options.threshold:g})")


def _infra(feedback: str, **details: Any) -> loop.Verdict:
    return loop.Verdict(passed=False, score=0.0, error_kind="infra", feedback=feedback,
                        details=details)


def _unit_number(value: Any) -> float | None:
    """`value` as a float in [0, 1], or None (bools and non-numbers are not scores). Rounding
    error just past an end is that end: spell_backward scores a right answer 1.0000000000000002."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not -_SLACK <= number <= 1.0 + _SLACK:
        return None
    return min(1.0, max(0.0, number))


def _clip(text: Any, limit: int = _SHOWN_CHARS) -> Any:
    if not isinstance(text, str):
        return text
    return text if len(text) <= limit else text[: limit - 3] + "..."
