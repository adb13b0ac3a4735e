"""The episode loop: multi-turn, tool-using answers, sampled batch by batch.

`run_episodes` advances every active episode of a stage together, one model turn per batched
backend call, until each ends: the model answers without a tool call (a tool environment), the
environment says done (a text environment), `max_turns`, or the episode's token budget. A tool
call that is malformed, names an unknown tool, has wrong arguments, raises or runs past
`tool_timeout_s` is answered by a `tool` message saying what was wrong (stored with the error);
an environment that fails outside a tool (its constructor, `reset`, `respond`, `reward`) ends
its episode with `env_error`, judged `infra`. Nothing here raises into the round.

Token-exact: with a session that has a `chat` format, each episode keeps one list of token ids
— the prompt as rendered once, then each model turn's ids exactly as sampled, then the
environment's tokens (`ChatFormat.continuation_ids`) — and every turn records its own slice,
so the trainer gets the very ids that were sampled and a mask of which ones were the model's.
Without `chat`, turns go through `generate` on the growing message list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from loop.failpoints import failpoint
from loop.interfaces import Environment, Episode, GenerationSession
from loop.schema import EndReason, Message, Sampling, Task, Turn
from loop.tool_calls import (call_tool, parse_tool_calls, run_limited, tool_schema,
                             with_tools_text)


@dataclass
class EpisodeSettings:
    """The limits of every episode of a stage (from the task's `environment:` config)."""

    max_turns: int
    max_tokens: int
    tool_timeout_s: float
    environment: str  # its name in the store


@dataclass
class EpisodeResult:
    """A finished episode, as the engine stores it (see loop.schema.Attempt)."""

    prompt: list[Message]          # the task's prompt with the tool text and reset text
    prompt_ids: list[int]
    turns: list[Turn]
    tools: list[str]
    end_reason: EndReason
    env_reward: float | None = None
    env_error: str | None = None

    @property
    def completion(self) -> str:
        """The last model turn's text: what verifiers judge."""
        return next((t.text for t in reversed(self.turns) if t.role == "assistant"), "")

    @property
    def messages(self) -> list[Message]:
        return [*self.prompt, *(turn_message(t) for t in self.turns)]


def turn_message(turn: Turn) -> Message:
    """A turn as a chat message (`tool` messages carry the tool's name)."""
    message: Message = {"role": turn.role, "content": turn.text}
    if turn.role == "tool" and turn.name:
        message["name"] = turn.name
    return message


@dataclass
class _Live:
    """One episode while it runs."""

    task: Task
    env: Episode | None
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)
    schemas: list[dict] = field(default_factory=list)
    prompt: list[Message] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)      # prompt + every turn, token path only
    prompt_ids: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    used: int = 0                                     # tokens after the prompt
    model_turns: int = 0
    end: EndReason | None = None
    error: str | None = None
    pending_errors: list[str] = field(default_factory=list)  # malformed calls of the last turn

    @property
    def messages(self) -> list[Message]:
        return [*self.prompt, *(turn_message(t) for t in self.turns)]


def run_episodes(session: GenerationSession, environment: Environment, tasks: list[Task],
                 sampling: Sampling, settings: EpisodeSettings, *, batch_size: int = 64,
                 progress: Callable[..., None] | None = None,
                 stage: str = "generate") -> list[list[EpisodeResult]]:
    """`sampling.n` episodes per task (each with its own fresh environment), in task order.
    Greedy sampling (temperature 0) runs one episode per task and repeats it n times, as a
    backend repeats a greedy answer."""
    n = sampling.n if sampling.temperature > 0 else 1
    chat = session.chat
    live = [_start(environment, task, chat, settings) for task in tasks for _ in range(n)]
    for turn in range(settings.max_turns):
        active = [ep for ep in live if ep.end is None]
        if not active:
            break
        _model_turn(session, active, sampling, settings, turn, batch_size, progress)
        for ep in active:
            if ep.end is None:
                _environment_turn(ep, chat, settings)
        failpoint(f"{stage}.in_episode")
    results = []
    for i, ep in enumerate(live):
        if ep.end is None:
            ep.end = "max_turns"
        results.append(_finish(ep, settings))
        if progress is not None and (i + 1) % n == 0:
            progress(prompts=1)
    grouped = [results[i * n:(i + 1) * n] for i in range(len(tasks))]
    return [g * sampling.n if n < sampling.n else g for g in grouped]


def _start(environment: Environment, task: Task, chat: Any, settings: EpisodeSettings) -> _Live:
    """A new episode: the environment's instance, its tools, the prompt with the tool text and
    the reset text, and (token path) the prompt's ids. A failure here ends it before any turn."""
    ep = _Live(task=task, env=None, prompt=[dict(m) for m in task.prompt])
    limit = settings.tool_timeout_s
    env, error = run_limited(lambda: environment.episode(task), limit, "the environment")
    if error is None:
        ep.env = env
        fns, error = run_limited(env.tools, limit, "the environment's tools()")
        if error is None:
            try:
                ep.schemas = [tool_schema(fn) for fn in fns or []]
                ep.tools = {s["function"]["name"]: fn for s, fn in zip(ep.schemas, fns or [])}
            except ValueError as exc:
                error = str(exc)
    if error is None:
        text, error = run_limited(ep.env.reset, limit, "the environment's reset()")
        if error is None and text:
            _append_to_last_user(ep.prompt, str(text))
    if error is not None:
        ep.end, ep.error = "done", error
        return ep
    native = bool(chat is not None and chat.native_tools)
    if ep.schemas and not native:
        ep.prompt = with_tools_text(ep.prompt, ep.schemas)
    if chat is not None:
        try:
            ep.prompt_ids = chat.prompt_ids(ep.prompt, ep.schemas if native else None)
        except Exception as exc:  # noqa: BLE001 - a template that cannot render this prompt
            ep.end, ep.error = "done", f"rendering the prompt failed: {exc}"
        ep.ids = list(ep.prompt_ids)
    return ep


def _append_to_last_user(messages: list[Message], text: str) -> None:
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = f"{message.get('content', '')}\n\n{text}".lstrip("\n")
            return
    messages.append({"role": "user", "content": text})


def _model_turn(session: GenerationSession, active: list[_Live], sampling: Sampling,
                settings: EpisodeSettings, turn: int, batch_size: int,
                progress: Callable[..., None] | None) -> None:
    """One model turn of every active episode, in batched backend calls (one per token cap: an
    episode near its budget gets fewer new tokens)."""
    by_cap: dict[int, list[_Live]] = {}
    for ep in active:
        cap = min(sampling.max_new_tokens, settings.max_tokens - ep.used)
        by_cap.setdefault(cap, []).append(ep)
    for cap, group in sorted(by_cap.items()):
        turn_sampling = sampling.model_copy(update={
            "n": 1, "max_new_tokens": cap, "seed": sampling.seed + 7919 * turn})
        counted = (lambda **c: progress(tokens=c["tokens"]) if "tokens" in c else None
                   ) if progress else None
        started = time.perf_counter()
        if session.chat is not None:
            outputs = session.generate_ids([ep.ids for ep in group], turn_sampling,
                                           progress=counted, batch_size=batch_size)
        else:
            outputs = session.generate([ep.messages for ep in group], turn_sampling,
                                       progress=counted, batch_size=batch_size)
        seconds = (time.perf_counter() - started) / max(1, len(group))
        for ep, out in zip(group, outputs):
            gen = out[0]
            calls = (session.chat.parse_tool_calls if session.chat is not None
                     else parse_tool_calls)(gen.text)
            ep.turns.append(Turn(
                role="assistant", text=gen.text, token_ids=list(gen.token_ids),
                logprobs=gen.logprobs, trained=True,
                tool_calls=calls.calls if ep.tools else [], seconds=seconds,
                finish_reason=gen.finish_reason))
            ep.ids += gen.token_ids
            ep.used += len(gen.token_ids)
            ep.model_turns += 1
            ep.pending_errors = calls.errors if ep.tools else []
            if gen.finish_reason == "length":
                ep.end = "budget" if cap < sampling.max_new_tokens else "length"


def _environment_turn(ep: _Live, chat: Any, settings: EpisodeSettings) -> None:
    """The environment answers the model's last turn: tool results (a tool environment) or an
    observation (a text environment); then the tokens that carry them."""
    last = ep.turns[-1]
    new: list[Turn] = []
    if ep.tools:
        errors = ep.pending_errors
        if not last.tool_calls and not errors:
            ep.end = "answer"
            return
        for call in last.tool_calls:
            started = time.perf_counter()
            result = call_tool(ep.tools, call, settings.tool_timeout_s)
            new.append(Turn(role="tool", text=result.text, name=call.name,
                            arguments=call.arguments, error=result.error,
                            seconds=time.perf_counter() - started))
        for line in errors:
            new.append(Turn(role="tool", text=f"Error: {line}", error=line))
    else:
        started = time.perf_counter()
        step, error = run_limited(lambda: ep.env.respond(last.text), settings.tool_timeout_s,
                                  "the environment's respond()")
        if error is not None:
            ep.end, ep.error = "done", error
            return
        last.reward = step.reward
        if step.done:
            ep.end = "done"
            return
        if step.observation is None:
            return
        new.append(Turn(role="user", text=step.observation,
                        seconds=time.perf_counter() - started))
    if chat is not None:
        try:
            ids = chat.continuation_ids([turn_message(t) for t in new],
                                        ep.schemas if chat.native_tools else None)
        except Exception as exc:  # noqa: BLE001 - a template that cannot render a tool message
            ep.turns += new
            ep.end, ep.error = "done", f"rendering the environment's message failed: {exc}"
            return
        # The carrier tokens go with the last environment message (all of them untrained).
        new[-1].token_ids = ids
        ep.ids += ids
        ep.used += len(ids)
    ep.turns += new
    if ep.used >= settings.max_tokens:
        ep.end = "budget"


def _finish(ep: _Live, settings: EpisodeSettings) -> EpisodeResult:
    """Ask the environment for the episode's reward, close it, and freeze the result."""
    reward = None
    if ep.env is not None and ep.error is None:
        value, error = run_limited(ep.env.reward, settings.tool_timeout_s,
                                   "the environment's reward()")
        if error is not None:
            ep.error = error
        elif value is not None:
            try:
                reward = float(value)
            except (TypeError, ValueError):
                ep.error = f"the environment's reward() returned {value!r}, not a number"
            else:
                if reward != reward or reward in (float("inf"), float("-inf")):
                    ep.error, reward = f"the environment's reward() returned {value!r}", None
    if ep.env is not None:
        run_limited(ep.env.close, settings.tool_timeout_s, "the environment's close()")
    return EpisodeResult(prompt=ep.prompt, prompt_ids=ep.prompt_ids, turns=ep.turns,
                         tools=sorted(ep.tools), end_reason=ep.end or "max_turns",
                         env_reward=reward, env_error=ep.error)


def episode_stats(attempts: list[Any]) -> dict[str, Any]:
    """What a stage's episodes did, for `loop show`: how many, the share with at least one
    well-formed tool call that worked, mean model turns, tool calls and tool errors, how many
    the environment could not run, and why they ended."""
    episodes = [a for a in attempts if a.is_episode]
    count = len(episodes)
    tool_turns = [t for a in episodes for t in a.turns if t.role == "tool"]
    ends: dict[str, int] = {}
    for a in episodes:
        ends[a.end_reason or "?"] = ends.get(a.end_reason or "?", 0) + 1
    with_call = sum(any(t.role == "tool" and t.name and t.error is None for t in a.turns)
                    for a in episodes)
    return {
        "count": count,
        "tool_call_share": with_call / count if count else 0.0,
        "mean_turns": (sum(sum(t.role == "assistant" for t in a.turns) for a in episodes)
                       / count if count else 0.0),
        "tool_calls": len(tool_turns),
        "tool_errors": sum(t.error is not None for t in tool_turns),
        "env_errors": sum(a.env_error is not None for a in episodes),
        "end_reasons": dict(sorted(ends.items())),
    }
