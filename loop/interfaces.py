"""The base classes plugins subclass, with every optional capability declared here with its default.

A plugin overrides what it needs; the engine calls the rest through these defaults and never
probes a component with `getattr`. Options: a component's nested `Options` pydantic model
validates its `options:` block in the config; each run gets a copy carrying `self.options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from loop.schema import (
    Attempt,
    Critique,
    Generation,
    Message,
    ModelRef,
    Sampling,
    Step,
    Task,
    TaskSet,
    UpdateResult,
    Verdict,
)

if TYPE_CHECKING:
    from loop.chat import ChatFormat
    from loop.updates import UpdateContext


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
    """Yields tasks. `load(options, seed)` returns a TaskSet with disjoint train/eval splits.

    Optional: `default_verifiers`, the verifier names a config that lists none gets.
    """

    default_verifiers: ClassVar[list[str]] = []

    def load(self, options: BaseModel, seed: int) -> TaskSet:  # pragma: no cover - interface
        raise NotImplementedError


class Backend(Component):
    """Generates completions. `open(model, options)` loads a model once and returns a session with
    `generate(prompts, sampling, progress=None) -> list[list[Generation]]` (n per prompt) and
    `close()`. A backend never writes to the store.

    Optional:
    - `prepare(model) -> str`, called once before a run starts or resumes with the config's model
      reference: make the model usable (e.g. convert an embedded model once) and return what
      updaters should train, usually a local folder. The engine hands the result to updaters as
      `UpdateContext.model_path`. Raising stops the run with the exception's one-line message.
      Default: the reference unchanged.
    - `can_load_adapters`: False for a backend whose model is fixed (a remote server), so a
      config with training rounds is refused before anything is written. Default True.
    """

    can_load_adapters: ClassVar[bool] = True

    def prepare(self, model: str) -> str:
        return model

    def open(self, model: ModelRef, options: BaseModel) -> "GenerationSession":  # pragma: no cover
        raise NotImplementedError


class GenerationSession:
    """One loaded model. Optional, for the per-stage time breakdown of `loop show`: a session may
    set `load_seconds` (opening it: loading weights, merging an adapter, starting workers) and
    `model_seconds` (the part of `generate` calls spent in the model itself, tokenizing and
    detokenizing excluded); the engine records both with the stage, and counts what they leave
    out as loop's own overhead.

    Optional, for token-exact episodes (multi-turn, with an environment): `chat`, a
    `loop.ChatFormat` that renders conversations to the model's token ids, and
    `generate_ids(prompts, sampling, progress, batch_size)`, which continues token-id prompts.
    A session without them (`chat` None) still runs episodes, turn by turn through `generate`
    on the messages, but what it samples is re-rendered each turn, so it cannot be trained on
    token-exactly (fine for a remote model that is only evaluated).
    """

    load_seconds: float | None = None
    model_seconds: float | None = None
    chat: "ChatFormat | None" = None

    def generate(self, prompts: list[list[Message]], sampling: Sampling,
                 progress: Any = None) -> list[list[Generation]]:  # pragma: no cover
        raise NotImplementedError

    def generate_ids(self, prompts: list[list[int]], sampling: Sampling, progress: Any = None,
                     batch_size: int = 64) -> list[list[Generation]]:  # pragma: no cover
        """`sampling.n` continuations of each token-id prompt (the ids already end with the
        assistant header). Required when `chat` is set."""
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

    def prepare(self) -> None:
        """Check, once before a run starts or resumes, that this verifier can work here."""

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

    Critics see the task without its reference (nor `metadata["solution"]`), and verdicts with
    the reference masked, unless the task config sets `hints: true`. Returning None means
    "nothing to say" (the repair prompt then carries the other critics' texts, or none). Critics
    that need a model override `critique_batch(items, context)` to batch their generation; it
    gets `(task, attempt, verdicts)` triples and must return one Critique or None per item, in
    order.

    Optional: `classifies = True` makes the critic's `Critique.kind` key the mistake log (the
    taxonomy critic); the mistakes stage then runs it on failures the refine stage did not reach.
    """

    classifies: ClassVar[bool] = False

    def critique(self, task: Task, attempt: Attempt,
                 verdicts: dict[str, Verdict]) -> Critique | None:  # pragma: no cover
        raise NotImplementedError

    def critique_batch(self, items: list[tuple[Task, Attempt, dict[str, Verdict]]],
                       context: CriticContext) -> list[Critique | None]:
        return [self.critique(task, attempt, verdicts) for task, attempt, verdicts in items]


class Episode:
    """One episode's world: a fresh instance per episode (per sample), never shared.

    The engine calls `reset()` first, then alternates model turns and the environment's answers
    until the model answers without a tool call (a tool environment), `respond` says done (a
    text environment), `max_turns` or the episode's token budget; then `reward()` once, then
    `close()`. Everything here may raise or hang: a tool's failure becomes a `tool` message
    saying what was wrong, a failure elsewhere ends the episode with an `infra` verdict.

    - `reset() -> str | None`: a string is appended to the task's last user message.
    - `tools() -> list[callable]`: the tools of this episode, functions (usually bound methods)
      with a docstring whose `Args:` section describes each argument; their JSON schemas are
      built from signature and docstring as transformers' `get_json_schema` builds them. An
      episode with tools is a tool environment; without, a text environment.
    - `respond(text) -> Step`: a text environment's answer to the model's turn (ignored when
      `tools()` is not empty). Default: done after one turn.
    - `reward() -> float | None`: the episode's reward (None: none), stored as a reward under the
      environment's name and judged as a verdict at `environment.pass_threshold`.
    """

    def reset(self) -> str | None:
        return None

    def tools(self) -> list[Callable[..., Any]]:
        return []

    def respond(self, text: str) -> Step:
        return Step(done=True)

    def reward(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class Environment(Component):
    """Makes episodes: `episode(task) -> Episode`, one fresh Episode per episode of a task.

    Registered with `register_environments` and chosen by the task config's `environment:`.
    `max_turns` is the default limit of model turns per episode (the config may lower or raise
    it). A TRL `environment_factory` class or a gym-style text environment needs no subclass:
    `loop.environments` wraps them (see docs/environments.md).

    Optional: `prepare()` is called once before a run starts or resumes, as a verifier's is:
    raising there stops the run with the exception's one-line message (e.g. a sandbox that
    does not isolate), before anything is written.
    """

    max_turns: ClassVar[int] = 8

    def episode(self, task: Task) -> Episode:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self) -> None:
        pass


class Updater(Component):
    """Trains on a round: `update(context) -> UpdateResult`.

    Optional: `build_dataset(context) -> list[dict]` returns the rows `update` would train on
    for that context, built from `context.samples` without loading a model or writing anything;
    `loop export --what NAME` writes them as a dataset. Rows are flat dicts with one key set,
    values JSON-like (str, int, float, bool, None, and lists or dicts of those; chat messages as
    TRL's conversational format), so a round's rows load as one table. The default raises
    NotImplementedError: the updater has no dataset to export.
    """

    def update(self, context: "UpdateContext") -> UpdateResult:  # pragma: no cover - interface
        raise NotImplementedError

    def build_dataset(self, context: "UpdateContext") -> list[dict[str, Any]]:
        raise NotImplementedError(f"updater {self.name!r} has no dataset to export")
