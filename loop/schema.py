"""The records that flow between stages (the base classes plugins implement are in loop.interfaces).

Stages pass these plain pydantic objects to plugins and get them back; only `loop.store` turns
them into rows. Ids are deterministic (a hash of what identifies the row), so a stage that is run
again after a crash writes the same ids and never duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}
Split = Literal["train", "eval"]


# The encoder json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str) builds on every
# call, built once: stores hold ids made with it, so its output must never change.
_ID_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode


def stable_id(*parts: Any, length: int = 20) -> str:
    """A short deterministic id: sha256 over the JSON of `parts`, hex, `length` characters.

    Byte for byte the same ids as ever (stored rows are found again by them): the shortcut for
    parts that are plain strings writes exactly the JSON the encoder would."""
    if parts and all(map(_plain, parts)):
        text = '["' + '", "'.join(parts) + '"]'
    else:
        text = _ID_JSON(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _plain(part: Any) -> bool:
    """Whether JSON writes `part` as itself between quotes: a str with nothing to escape (the
    check is stricter than JSON's escaping, never looser: a doubtful string takes the encoder)."""
    return type(part) is str and part.isprintable() and '"' not in part and "\\" not in part


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The `Task.metadata` key of a reference solution (a worked answer), for sources that have one:
# the select stage shows its start as a hint (ReGFT), sft's `references` option trains on it, and
# critics never see it without `hints`.
SOLUTION_KEY = "solution"


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


class ToolCall(Record):
    """One tool call the model wrote: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Turn(Record):
    """One message of an episode after its prompt, as sampled and as trained.

    `assistant` turns are the model's (`trained` True, `token_ids` exactly as sampled, with their
    sampling `logprobs`, and the `tool_calls` parsed from `text`). `tool` turns are a tool's
    result (`name`, `arguments`, `text` = the result or what was wrong, `error` None when the
    call worked); `user` turns are a text environment's observation. The token ids of a `tool` or
    `user` turn are the chat-template tokens that carry it (and the next assistant header), never
    trained. `reward` is a per-turn reward where the environment gives one.
    """

    role: Literal["assistant", "tool", "user"]
    text: str
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] | None = None
    trained: bool = False
    tool_calls: list[ToolCall] = Field(default_factory=list)
    name: str | None = None
    arguments: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    reward: float | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Step(Record):
    """A text environment's answer to one model turn: the `observation` the model reads next (a
    `user` message; None: nothing to say), a per-turn `reward`, and `done` to end the episode."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    observation: str | None = None
    reward: float | None = None
    done: bool = False


EndReason = Literal["answer", "done", "max_turns", "budget", "length"]


class Attempt(Record):
    """One answer by the model to a task, as stored. `messages` is the full conversation the model
    saw plus its answer; `parent_id` links a refinement to the attempt it repairs.

    An episode (a task with an environment) also has `turns`: every message after the prompt.
    Then `messages` is the prompt (with the environment's reset text) followed by the turns,
    `completion` is the last assistant turn's text (what verifiers judge), `prompt_ids` are the
    prompt's token ids as the model saw them, `token_ids` every turn's ids in order (model and
    environment tokens: the sequence trained on, masked by `loss_mask()`), `completion_tokens`
    counts the model's tokens only, `tools` names the tools the episode offered, `env_reward` is
    the environment's reward for the episode (None: it gives none), `env_error` says what went
    wrong when the environment itself failed (then the episode is judged `infra`), and
    `end_reason` says why it ended.
    """

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
    turns: list[Turn] = Field(default_factory=list)
    prompt_ids: list[int] = Field(default_factory=list)
    environment: str | None = None
    tools: list[str] = Field(default_factory=list)
    env_reward: float | None = None
    env_error: str | None = None
    end_reason: EndReason | None = None

    @property
    def is_episode(self) -> bool:
        return self.environment is not None

    def loss_mask(self) -> list[int]:
        """One 0/1 per entry of `token_ids`: 1 for the model's own tokens (trained), 0 for the
        environment's. A single-turn answer is all model tokens."""
        if not self.turns:
            return [1] * len(self.token_ids)
        return [int(t.trained) for t in self.turns for _ in t.token_ids]

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
