"""The refine stage's parts: what critics may see, how a repair is asked for, and the context
model-based critics get. The stage itself (RoundEngine.stage_refine) reads top to bottom:

    for each turn 1..refine.depth, within refine.budget extra samples:
        failed answers of the previous turn (the model's mistakes, not the checker's)
        → critics explain them (each critic's texts joined)
        → the model answers again, seeing its answer and the critique as a conversation
        → the new attempts (parent = the answer they repair, depth = the turn) are verified

A repaired answer that passes feeds the updaters like any verified answer (SFT learns it for the
original prompt; DPO pairs it over the answer it repaired).
"""

from __future__ import annotations

import re
from typing import Any

from loop.schema import SOLUTION_KEY, Attempt, Message, ModelRef, Sampling, Task, Verdict
from loop.interfaces import CriticContext, GenerationSession

HIDDEN = "[hidden]"


def model_failure(verdicts: dict[str, Verdict]) -> bool:
    """The answer failed because of the model: some verifier failed it as a model error (wrong,
    badly formatted, too slow) and none failed for infrastructure reasons."""
    failed = [v for v in verdicts.values() if not v.passed]
    return bool(failed) and not any(v.error_kind == "infra" for v in failed)


def critic_view(task: Task, verdicts: dict[str, Verdict],
                hints: bool) -> tuple[Task, dict[str, Verdict]]:
    """The task and verdicts as critics see them: without hints, the task has no reference, no
    reference solution in its metadata (`SOLUTION_KEY`: a worked solution holds the answer),
    and every occurrence of the reference in the verdicts' feedback and details is masked."""
    if hints:
        return task, verdicts
    metadata = {k: v for k, v in task.metadata.items() if k != SOLUTION_KEY}
    hidden = task.model_copy(update={"reference": None, "metadata": metadata})
    if not task.reference:
        return hidden, verdicts
    reference = str(task.reference).strip()
    pattern = re.compile(rf"(?<![\w.]){re.escape(reference)}(?![\w.])") if reference else None

    def mask(value: Any) -> Any:
        if isinstance(value, str) and pattern is not None:
            return pattern.sub(HIDDEN, value)
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    masked = {name: v.model_copy(update={"feedback": mask(v.feedback), "details": mask(v.details)})
              for name, v in verdicts.items()}
    return hidden, masked


def repair_messages(attempt: Attempt, critique: str, template: str) -> list[Message]:
    """The conversation the model continues: its earlier turns and answer, then the request to
    repair it with the critique filled in."""
    request = template.replace("{critique}", critique.strip()).strip()
    request = re.sub(r"\n{3,}", "\n\n", request)
    return [*attempt.messages, {"role": "user", "content": request}]


class EngineCriticContext(CriticContext):
    """The refine stage's CriticContext: the round's policy through an open session, and other
    models through any registered backend (built on demand from the plugin manager)."""

    def __init__(self, session_factory, pm: Any, seed: int, batch_size: int):
        self._session_factory = session_factory
        self._pm = pm
        self._seed = seed
        self._batch_size = batch_size

    def generate(self, prompts: list[list[Message]], max_new_tokens: int = 256) -> list[str]:
        session = self._session_factory()
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=self._seed)
        outputs = session.generate(prompts, sampling, batch_size=self._batch_size)
        return [out[0].text if out else "" for out in outputs]

    def open_backend(self, name: str, model: str,
                     options: dict[str, Any] | None = None) -> GenerationSession:
        from loop.resolve import validate_options
        from loop.plugin_manager import build_registry, get_plugin_manager

        registry = build_registry(self._pm or get_plugin_manager())
        backend = registry.get("backends", name)
        validated = validate_options(backend, options or {}, f"critic backend {name}")
        return backend.open(ModelRef(base=model), validated)
