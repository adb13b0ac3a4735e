"""Built-in critics: they explain a failed answer so the model can repair it (refine stage).

Written exactly as a third-party plugin would be (registered by `loop.builtin_plugins`). None of them
sees the reference answer unless the task allows hints: the engine hands them the task without
it and the verdicts with it masked.

- `verifier_feedback` (LeTI): the verifiers' own feedback (got vs expected, parse failure, the
  failing test and the error's last lines) as the critique.
- `taxonomy` (NeuroProlog's error taxonomy): the failure's kind from the taxonomy below, with a
  short explanation of that kind; the kind also keys the mistake log.
- `self_critique`: the policy model itself reviews its failed answer (prompt in the options).
- `judge`: another model, through any registered backend, reviews the answer.

The taxonomy (first that applies):

| family | kind | when |
|---|---|---|
| any | `timeout` | the checker ran out of time on the answer (error_kind timeout) |
| any | `truncated` | the answer was cut off by the token limit before it ended |
| maths | `no_final_answer` | no final answer could be read |
| maths | `wrong_format` | the final answer is not a number where one is expected |
| maths | `sign_error`, `off_by_one`, `copied_operand`, `wrong_operation`, `magnitude_error`, `arithmetic_slip` | the verifier's diagnosis of a wrong number (loop_math.diagnosis) |
| code | `no_code`, `missing_function`, `exited_early`, `timeout` | the verifier's `mistake` (loop-code: no code in the answer, the asked function not defined, the program exited before its tests ran, it ran past its time limit) |
| code | `syntax_error` | SyntaxError / IndentationError in the feedback |
| code | `failed_assertion` | an AssertionError (a test failed) |
| code | `exception:<Name>` | the program raised another exception |
| any | `wrong_answer` | anything else that is wrong |
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loop.schema import Attempt, Critique, Task, Verdict
from loop.interfaces import Critic, CriticContext

EXPLANATIONS = {
    "timeout": "Your answer took too long to check: give a shorter, direct answer, and in code "
               "avoid endless loops and slow algorithms.",
    "truncated": "Your answer was cut off before it ended; answer more briefly and state the "
                 "final answer.",
    "no_final_answer": "Your answer does not state a final answer.",
    "wrong_format": "Your final answer is not a plain number.",
    "sign_error": "Your final answer has the wrong sign.",
    "off_by_one": "Your final answer is off by one; recheck the last step of the calculation.",
    "copied_operand": "Your final answer just repeats a number from the question instead of "
                      "computing the result.",
    "wrong_operation": "Your final answer comes from a different operation on the question's "
                       "numbers than the one asked for; reread which operation is asked.",
    "magnitude_error": "Your final answer is off by a factor of ten; check the place values.",
    "arithmetic_slip": "Your final answer has a slip in one digit; recheck carries and borrows.",
    "no_code": "Your answer contains no Python code: reply with the function in a ```python "
               "block.",
    "missing_function": "Your code does not define the function the task asks for: use exactly "
                        "the name it gives.",
    "exited_early": "Your code stopped the program before the tests could run: do not exit, "
                    "kill or end the process.",
    "syntax_error": "Your code does not parse: fix the syntax error.",
    "failed_assertion": "Your code runs but a test fails.",
    "wrong_answer": "Your final answer is wrong.",
}

_CODE_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception))\b")
_CODE_KINDS = {"no_code", "missing_function", "exited_early", "timeout", "syntax_error",
               "failed_assertion"}
_FAMILY_KINDS = {"sign_error", "off_by_one", "copied_operand", "wrong_operation",
                 "magnitude_error", "arithmetic_slip"}


def _failed(verdicts: dict[str, Verdict]) -> list[Verdict]:
    return [v for v in verdicts.values() if not v.passed]


def classify(attempt: Attempt, verdicts: dict[str, Verdict]) -> str | None:
    """The taxonomy kind of a failed attempt; None when it passed or only the checker failed."""
    failed = _failed(verdicts)
    if not failed or all(v.error_kind == "infra" for v in failed):
        return None
    if any(v.error_kind == "timeout" for v in failed):
        return "timeout"
    if attempt.finish_reason == "length":
        return "truncated"
    for verdict in failed:
        if verdict.error_kind == "infra":
            continue
        text = f"{verdict.feedback}\n{verdict.details.get('error', '')}"
        if verdict.mistake == "format":
            return "no_final_answer" if "no final answer" in verdict.feedback or \
                "could not read" in verdict.feedback else "wrong_format"
        if verdict.details.get("diagnosis") in _FAMILY_KINDS:
            return verdict.details["diagnosis"]
        if verdict.mistake in _CODE_KINDS or (verdict.mistake or "").startswith("exception:"):
            return verdict.mistake
        if "SyntaxError" in text or "IndentationError" in text:
            return "syntax_error"
        if "AssertionError" in text:
            return "failed_assertion"
        match = _CODE_EXCEPTION.search(text)
        if match and verdict.mistake != "wrong_answer":
            return f"exception:{match.group(1)}"
    return "wrong_answer"


class VerifierFeedbackCritic(Critic):
    """The verifiers' feedback on the failure, as text for the model (LeTI)."""

    name = "verifier_feedback"

    def critique(self, task: Task, attempt: Attempt,
                 verdicts: dict[str, Verdict]) -> Critique | None:
        failed = [v for v in _failed(verdicts) if v.error_kind != "infra"]
        lines = [v.feedback.strip() for v in failed if v.feedback.strip()]
        if not lines:
            return None
        kind = failed[0].mistake or failed[0].error_kind or "wrong_answer"
        return Critique(kind=kind, text="The checker says: " + "; ".join(lines) + ".",
                        critic=self.name)


class TaxonomyCritic(Critic):
    """The failure's kind from the documented taxonomy, with that kind's explanation."""

    name = "taxonomy"
    classifies = True  # its kind keys the mistake log (RoundEngine.stage_mistakes)

    def critique(self, task: Task, attempt: Attempt,
                 verdicts: dict[str, Verdict]) -> Critique | None:
        kind = classify(attempt, verdicts)
        if kind is None:
            return None
        if kind.startswith("exception:"):
            text = f"Your code raised {kind.split(':', 1)[1]}."
        else:
            text = EXPLANATIONS[kind]
        return Critique(kind=kind, text=text, critic=self.name)


def _question(task: Task) -> str:
    return "\n".join(str(m.get("content", "")) for m in task.prompt
                     if isinstance(m, dict) and m.get("role") == "user")


def _review_prompt(template: str, task: Task, attempt: Attempt) -> list[dict[str, str]]:
    text = template.replace("{question}", _question(task)).replace(
        "{answer}", attempt.completion.strip())
    return [{"role": "user", "content": text}]


def _kind(attempt: Attempt, verdicts: dict[str, Verdict]) -> str:
    return classify(attempt, verdicts) or "wrong_answer"


REVIEW_PROMPT = (
    "A student answered this question and the answer was judged incorrect.\n\n"
    "Question: {question}\n\nAnswer: {answer}\n\n"
    "In one or two sentences, say what is wrong with the answer. Do not give the solution.")


class ReviewOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(default=REVIEW_PROMPT, min_length=1, description=(
        "the reviewer's prompt; {question} and {answer} are filled in"))
    max_new_tokens: int = Field(default=96, ge=1, le=100_000)


class SelfCritiqueCritic(Critic):
    """The policy model (the round's starting model) reviews its own failed answer."""

    name = "self_critique"
    Options = ReviewOptions

    def critique_batch(self, items: list[tuple[Task, Attempt, dict[str, Verdict]]],
                       context: CriticContext) -> list[Critique | None]:
        options = getattr(self, "options", None) or ReviewOptions()
        prompts = [_review_prompt(options.prompt, task, attempt) for task, attempt, _ in items]
        texts = context.generate(prompts, max_new_tokens=options.max_new_tokens) if prompts else []
        return [Critique(kind=_kind(attempt, verdicts), text=text.strip(), critic=self.name)
                if text.strip() else None
                for (_, attempt, verdicts), text in zip(items, texts)]


class JudgeOptions(ReviewOptions):
    model: str = Field(min_length=1, description="the judge model (any backend's model reference)")
    backend: str = Field(default="hf", min_length=1, description="registered backend to run it")
    backend_options: dict[str, Any] = Field(default_factory=dict)


class JudgeCritic(Critic):
    """Another model reviews the failed answer, through any registered backend."""

    name = "judge"
    Options = JudgeOptions

    def critique_batch(self, items: list[tuple[Task, Attempt, dict[str, Verdict]]],
                       context: CriticContext) -> list[Critique | None]:
        from loop.schema import Sampling

        options: JudgeOptions = self.options
        if not items:
            return []
        prompts = [_review_prompt(options.prompt, task, attempt) for task, attempt, _ in items]
        session = context.open_backend(options.backend, options.model, options.backend_options)
        try:
            outputs = session.generate(prompts, Sampling(n=1, temperature=0.0,
                                                         max_new_tokens=options.max_new_tokens))
        finally:
            session.close()
        texts = [out[0].text if out else "" for out in outputs]
        return [Critique(kind=_kind(attempt, verdicts), text=text.strip(), critic=self.name)
                if text.strip() else None
                for (_, attempt, verdicts), text in zip(items, texts)]
