"""The `binary` reward, with TRL's reward-function contract, usable in loop and in TRL directly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loop_math.verifier import MathVerifier

_BROKEN_CHECK = ("infra", "timeout")

# The fallback verifier for TRL-direct use; built once (its options are the defaults).
_fallback_verifier: MathVerifier | None = None


def binary(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 for a correct completion, 0.0 for a wrong one, None where it cannot be judged.

    Inside loop, `kwargs["verdicts"]` has one dict {verifier name: Verdict} per completion:
    - None if any verdict has error_kind "infra" or "timeout" (the item has an error row, and a
      broken check is never turned into a 0, even when another verifier failed the answer), or if
      the dict is empty (nothing judged the sample);
    - otherwise 0.0 if any verdict failed, 1.0 if every verdict passed.
    Verdicts may be `loop.Verdict` objects or their dicts.

    Used directly as a TRL GRPOTrainer reward (no `verdicts`), it verifies each completion itself
    with the `math` verifier against `kwargs["reference"]` (TRL passes dataset columns as lists, one
    per completion): 1.0 passed, 0.0 a model mistake, None for infra/timeout or a missing
    reference. Completions may be strings or conversational message lists, whose last assistant
    message is graded.

    Raises ValueError only for a wrong call (no verdicts and no reference column, or lists of the
    wrong length), never for a bad answer.
    """
    verdicts = kwargs.get("verdicts")
    if verdicts is not None:
        _same_length("verdicts", verdicts, completions)
        return [_from_verdicts(sample) for sample in verdicts]
    references = kwargs.get("reference")
    if references is None:
        raise ValueError("binary reward: needs `verdicts` (from loop) or a `reference` column "
                         "(when used in TRL)")
    _same_length("reference", references, completions)
    global _fallback_verifier
    if _fallback_verifier is None:
        _fallback_verifier = MathVerifier()
    out: list[float | None] = []
    for completion, reference in zip(completions, references):
        if reference is None:
            out.append(None)
            continue
        verdict = _fallback_verifier.check(completion_text(completion), reference)
        out.append(_from_verdicts({"math": verdict}))
    return out


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string as is; for a conversational completion (a list of
    {"role", "content"} messages) the last assistant message's content, where content may also be
    a list of parts like {"type": "text", "text": ...}."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        if assistant:
            return _content_text(assistant[-1].get("content"))
    return "" if completion is None else str(completion)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") if isinstance(part, Mapping) else str(part)
                       for part in content)
    return "" if content is None else str(content)


def _from_verdicts(sample: Mapping[str, Any] | None) -> float | None:
    if not sample:
        return None
    if any(_get(v, "error_kind") in _BROKEN_CHECK for v in sample.values()):
        return None  # the item has an error row; a broken check is never scored as a 0
    return 1.0 if all(_get(v, "passed") for v in sample.values()) else 0.0


def _get(verdict: Any, key: str) -> Any:
    if isinstance(verdict, Mapping):
        return verdict.get(key)
    return getattr(verdict, key, None)


def _same_length(name: str, values: Any, completions: Sequence[Any]) -> None:
    if len(values) != len(completions):
        raise ValueError(f"binary reward: {len(values)} {name} for {len(completions)} completions")
