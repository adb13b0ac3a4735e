"""Records that flow between stages, and the base classes plugins implement.

Stages pass these plain pydantic objects to plugins and get them back; only `loop.store` turns
them into rows. Ids are deterministic (a hash of what identifies the row), so a stage that is run
again after a crash writes the same ids and never duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}
Split = Literal["train", "eval"]


def stable_id(*parts: Any, length: int = 20) -> str:
    """A short deterministic id: sha256 over the JSON of `parts`, hex, `length` characters."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Task(Record):
    """One problem. `id` is content-addressed: the same source, prompt and reference give one id.

    `prompt` is the message list the model sees (system + user); `reference` is what verifiers
    compare with (never shown to the model); `metadata` is free-form data for verifiers.
    """

    id: str = ""
    source: str
    split: Split
    prompt: list[Message]
    reference: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            self.id = stable_id(self.source, self.prompt, self.reference)


class TaskSet(Record):
    """What a task source yields: disjoint train and held-out (eval) tasks."""

    train: list[Task]
    eval: list[Task]


class Sampling(Record):
    """How to sample: `n` answers per prompt; temperature 0 means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0


class Generation(Record):
    """One completion from a backend. `token_ids` keep the model output losslessly."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Attempt(Record):
    """One answer by the model to a task, as stored. `messages` is the full conversation the model
    saw plus its answer; `parent_id` links a refinement to the attempt it repairs."""

    id: str
    run_id: str
    round_index: int
    task_id: str
    purpose: Literal["train", "eval"]
    sample_index: int
    parent_id: str | None = None
    depth: int = 0
    messages: list[Message]
    completion: str
    token_ids: list[int] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: list[float] | None = None
    model_ref: str = ""
    seed: int = 0

    @staticmethod
    def make_id(run_id: str, round_index: int, task_id: str, purpose: str, sample_index: int,
                parent_id: str | None = None) -> str:
        return stable_id(run_id, round_index, task_id, purpose, sample_index, parent_id)


ErrorKind = Literal["model", "infra", "timeout"]


class Verdict(Record):
    """A verifier's judgement of one attempt.

    `error_kind` tells a wrong answer (`model`) from a failure of the checking itself (`infra`,
    `timeout`), which is never turned into a reward of 0. `mistake` names the kind of mistake the
    answer made (e.g. `format`, `wrong_answer`) for the mistake log; None when it passed.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    passed: bool
    score: float = Field(default=0.0, ge=0.0, le=1.0)
    feedback: str = ""
    error_kind: ErrorKind | None = None
    mistake: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Critique(Record):
    """A critic's explanation of a failure: `kind` names the mistake (a taxonomy kind, or the
    verifier's mistake), `text` is what the model reads before it repairs its answer."""

    kind: str
    text: str
    critic: str = ""


class Sample(Record):
    """One attempt with its judgement, as an updater sees the round: built by the train stage.

    `rewards` holds every configured reward function's value (None: not applicable, or the
    verification failed for infrastructure reasons); `reward` is the first one's, for updaters
    that use a single number.
    """

    task: Task
    attempt: Attempt
    passed: bool
    score: float
    reward: float | None
    rewards: dict[str, float | None] = Field(default_factory=dict)


class ModelRef(Record):
    """A model to generate with: a base (local HF folder or hub id) plus an optional adapter."""

    base: str
    adapter: str | None = None

    def __str__(self) -> str:
        return self.base + (f"+{self.adapter}" if self.adapter else "")


class UpdateResult(Record):
    """What an updater returns: the new adapter folder (or full model folder) and its metrics."""

    adapter_path: str
    metrics: dict[str, Any] = Field(default_factory=dict)


# ----- base classes plugins subclass ------------------------------------------------------------


class Component:
    """A named plugin component. `Options` validates its `options:` block in the config."""

    name: ClassVar[str] = ""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def coerce_options(model: type[OptionsT], options: Any) -> OptionsT:
    """`options` as an instance of `model`: what a component's `load`/constructor gets may be its
    own Options (returned as is), another pydantic model or a mapping (validated, so unknown keys
    and bad values raise pydantic's ValidationError, a ValueError), or None (the defaults)."""
    if isinstance(options, model):
        return options
    if options is None:
        return model()
    if isinstance(options, BaseModel):
        options = options.model_dump(exclude_unset=True)
    return model.model_validate(options)


class TaskSource(Component):
    """Yields tasks. `load(options, seed)` returns a TaskSet with disjoint train/eval splits."""

    def load(self, options: BaseModel, seed: int) -> TaskSet:  # pragma: no cover - interface
        raise NotImplementedError


class Backend(Component):
    """Generates completions. `open(model, options)` loads a model once and returns a session with
    `generate(prompts, sampling, progress=None) -> list[list[Generation]]` (n per prompt) and
    `close()`. A backend never writes to the store."""

    def open(self, model: ModelRef, options: BaseModel) -> "GenerationSession":  # pragma: no cover
        raise NotImplementedError


class GenerationSession:
    """One loaded model. Optional, for the per-stage time breakdown of `loop show`: a session may
    set `load_seconds` (opening it: loading weights, merging an adapter, starting workers) and
    `model_seconds` (the part of `generate` calls spent in the model itself, tokenizing and
    detokenizing excluded); the engine records both with the stage, and counts what they leave
    out as loop's own overhead."""

    load_seconds: float | None = None
    model_seconds: float | None = None

    def generate(self, prompts: list[list[Message]], sampling: Sampling,
                 progress: Any = None) -> list[list[Generation]]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class Verifier(Component):
    """Judges one attempt: `verify(task, attempt) -> Verdict`. Must not raise for a bad answer.

    Optional: `verify_batch(items)` judges many `(task, attempt)` pairs at once (e.g. in parallel
    workers) and returns one Verdict per item, in order; the engine then calls it with chunks of
    a stage's attempts. `prepare()` is called once before a run starts or resumes: raising there
    stops the run with the exception's one-line message (e.g. a sandbox that does not isolate).
    """

    def verify(self, task: Task, attempt: Attempt) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def verify_batch(self, items: list[tuple[Task, Attempt]]) -> list[Verdict]:
        return [self.verify(task, attempt) for task, attempt in items]


class CriticContext:
    """What the refine stage offers critics that need a model (self-critique, judges).

    `generate(prompts, max_new_tokens)`: greedy answers of the round's policy model, one string
    per prompt (a prompt is a list of chat messages). `open_backend(name, model, options)`: a
    generation session on another model through any registered backend; close it when done.
    """

    def generate(self, prompts: list[list[Message]],
                 max_new_tokens: int = 256) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def open_backend(self, name: str, model: str,
                     options: dict[str, Any] | None = None) -> "GenerationSession":  # pragma: no cover
        raise NotImplementedError


class Critic(Component):
    """Explains a failure: `critique(task, attempt, verdicts) -> Critique | None`.

    Critics see the task without its reference, and verdicts with the reference masked, unless
    the task config sets `hints: true`. Returning None means "nothing to say" (the repair prompt
    then carries the other critics' texts, or none). Critics that need a model override
    `critique_batch(items, context)` to batch their generation; it gets `(task, attempt,
    verdicts)` triples and must return one Critique or None per item, in order.
    """

    def critique(self, task: Task, attempt: Attempt,
                 verdicts: dict[str, Verdict]) -> Critique | None:  # pragma: no cover
        raise NotImplementedError

    def critique_batch(self, items: list[tuple[Task, Attempt, dict[str, Verdict]]],
                       context: CriticContext) -> list[Critique | None]:
        return [self.critique(task, attempt, verdicts) for task, attempt, verdicts in items]


class Updater(Component):
    """Trains on a round: `update(context) -> UpdateResult`.

    Optional: `build_dataset(context) -> list[dict]` returns the rows `update` would train on
    for that context, built from `context.samples` without loading a model or writing anything;
    `loop export --what NAME` writes them as a dataset. Rows are flat dicts with one key set,
    values JSON-like (str, int, float, bool, None, and lists or dicts of those; chat messages as
    TRL's conversational format), so a round's rows load as one table. The default raises
    NotImplementedError: the updater has no dataset to export.
    """

    def update(self, context: Any) -> UpdateResult:  # pragma: no cover - interface
        raise NotImplementedError

    def build_dataset(self, context: Any) -> list[dict[str, Any]]:
        raise NotImplementedError(f"updater {self.name!r} has no dataset to export")
