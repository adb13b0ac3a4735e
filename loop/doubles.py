"""The test doubles (imported from loop.testing; registered by loop.builtin_plugins).

- `ScriptedBackend`: a backend that answers from a script and needs no model. It is also
  registered as the backend `scripted`:

      loop run arithmetic --rounds 0 --set backend.name=scripted \\
          --set 'backend.options.completions=["The answer is 3."]'

  The k-th assistant turn of any conversation (k = the number of assistant messages already in
  its prompt) gets `completions[k]`, the last one repeating; every one of a prompt's n samples
  gets the same text. Token ids are its own, one per character (the character's code point), so
  every stage and the store work on its answers; `max_new_tokens` cuts an answer (finish reason
  `length`), as a real model's would be cut. It runs episodes token-exactly too: its `chat`
  (`CharChat`) renders conversations as ChatML text, one id per character, and
  `generate_ids` reads the conversation back from the ids, so a scripted reply can depend on
  the tool results the episode got so far.
- `NoopUpdater`: an update method that trains nothing. It writes `update.json` (the counts of
  what it was given) into the output folder, so the train stage publishes and records a real
  checkpoint; registered as the update method `noop`.
Use them where the subject of a test is bookkeeping (what the store holds, what a resume redoes),
never where it is a model's behaviour.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from loop.chat import ChatFormat
from loop.interfaces import Backend, GenerationSession, Updater
from loop.schema import Generation, Message, ModelRef, Sampling, UpdateResult
from loop.updates import EmptyDataset, UpdateContext


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completions: list[str] = Field(default_factory=lambda: ["The answer is 0."], min_length=1,
                                   description="the k-th assistant turn's text; the last repeats")


def scripted_reply(completions: list[str], prompt: list[Message]) -> str:
    """`completions[k]` for the k-th assistant turn (k = assistant messages in `prompt`), the
    last one repeating."""
    turn = sum(1 for m in prompt if m.get("role") == "assistant")
    return completions[min(turn, len(completions) - 1)]


class CharChat(ChatFormat):
    """ChatML as text, one token id per character (its code point): the scripted backend's
    chat format. Tools are never native (loop's fallback format in the system message)."""

    START, END = "<|im_start|>", "<|im_end|>"

    def _render(self, messages: list[Message]) -> str:
        return "".join(f"{self.START}{m['role']}\n{m.get('content', '')}{self.END}\n"
                       for m in messages)

    def prompt_ids(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        return [ord(c) for c in self._render(messages) + f"{self.START}assistant\n"]

    def continuation_ids(self, new_messages: list[Message],
                         tools: list[dict] | None = None) -> list[int]:
        # A scripted turn has no end-of-turn token of its own: the carrier closes it.
        text = f"{self.END}\n" + self._render(new_messages) + f"{self.START}assistant\n"
        return [ord(c) for c in text]

    def messages(self, ids: list[int]) -> list[Message]:
        """The conversation that `ids` (a prompt ending with the assistant header) spells."""
        text = "".join(chr(i) for i in ids)
        out = []
        for part in text.split(self.START)[1:]:
            role, _, content = part.partition("\n")
            content = content.split(self.END)[0]
            out.append({"role": role, "content": content})
        return out[:-1] if out and out[-1] == {"role": "assistant", "content": ""} else out


class ScriptedSession(GenerationSession):
    """A session of the scripted backend: see the module docstring. `respond(prompt, k,
    sampling)` gives the text of sample k of a prompt."""

    def __init__(self, respond: Callable[[list[Message], int, Sampling], str], model: ModelRef):
        self.respond = respond
        self.model = model
        self.load_seconds = 0.0
        self.model_seconds = 0.0
        self.calls: list[list[list[Message]]] = []  # every generate call's prompts, for tests
        self.chat = CharChat()

    def generate(self, prompts: list[list[Message]], sampling: Sampling, progress: Any = None,
                 batch_size: int = 64) -> list[list[Generation]]:
        started = time.perf_counter()
        self.calls.append(prompts)
        out = []
        for prompt in prompts:
            prompt_tokens = sum(len(str(m.get("content", ""))) for m in prompt)
            samples = [self._generation(self.respond(prompt, k, sampling), prompt_tokens,
                                        sampling.max_new_tokens) for k in range(sampling.n)]
            out.append(samples)
            if progress is not None:
                progress(prompts=1, tokens=sum(g.completion_tokens for g in samples))
        self.model_seconds += time.perf_counter() - started
        return out

    def generate_ids(self, prompts: list[list[int]], sampling: Sampling, progress: Any = None,
                     batch_size: int = 64) -> list[list[Generation]]:
        """Token-id prompts (episodes): each is read back into its conversation and answered
        as `generate` answers it; `prompt_tokens` is the number of ids."""
        out = self.generate([self.chat.messages(ids) for ids in prompts], sampling,
                            progress=progress, batch_size=batch_size)
        return [[g.model_copy(update={"prompt_tokens": len(ids)}) for g in gens]
                for ids, gens in zip(prompts, out)]

    @staticmethod
    def _generation(text: str, prompt_tokens: int, max_new_tokens: int) -> Generation:
        finish = "stop"
        if len(text) > max_new_tokens:
            text, finish = text[:max_new_tokens], "length"
        ids = [ord(ch) for ch in text]  # one token per character
        return Generation(text=text, token_ids=ids, prompt_tokens=prompt_tokens,
                          finish_reason=finish, logprobs=[0.0] * len(ids))


class ScriptedBackend(Backend):
    """Answers from a script, with no model: never loads, converts or downloads one.

    `ScriptedBackend(completions=[...])` in a test, or `backend: {name: scripted, options:
    {completions: [...]}}` in a config. For answers that depend on the prompt (some right, some
    wrong), pass `respond=fn(prompt, sample_index, sampling) -> str` (sampling: the stage's
    loop.Sampling, with its seed), or subclass and override `respond`.
    `sessions` keeps every session it opened."""

    name = "scripted"
    Options = ScriptedOptions

    def __init__(self, completions: list[str] | None = None,
                 respond: Callable[[list[Message], int, Sampling], str] | None = None):
        self.options = ScriptedOptions(**({"completions": completions} if completions else {}))
        self._respond = respond
        self.sessions: list[ScriptedSession] = []

    def respond(self, prompt: list[Message], sample_index: int, sampling: Sampling,
                options: ScriptedOptions | None = None) -> str:
        """The text of sample `sample_index` for `prompt` (default: the script)."""
        if self._respond is not None:
            return self._respond(prompt, sample_index, sampling)
        return scripted_reply((options or self.options).completions, prompt)

    def prepare(self, model: str) -> str:
        return model  # nothing to load: the reference is passed on as it is

    def open(self, model: ModelRef, options: BaseModel | None = None) -> ScriptedSession:
        opts = options if isinstance(options, ScriptedOptions) else self.options
        session = ScriptedSession(lambda prompt, k, sampling: self.respond(prompt, k, sampling, opts),
                                  model)
        self.sessions.append(session)
        return session


class NoopUpdater(Updater):
    """Trains nothing: writes `update.json` with the counts of the samples it was given, so the
    train stage publishes and records a checkpoint as for a real update. Raises EmptyDataset
    when the round has no samples, as a real updater would."""

    name = "noop"

    def update(self, context: UpdateContext) -> UpdateResult:
        if not context.samples:
            raise EmptyDataset("no samples")
        # Only what the samples decide, so the same round gives the same checkpoint hash.
        counts = {"samples": len(context.samples),
                  "passed": sum(s.passed for s in context.samples)}
        (context.output_dir / "update.json").write_text(json.dumps(counts, sort_keys=True))
        return UpdateResult(adapter_path=str(context.output_dir),
                            metrics={"dataset_size": len(context.samples),
                                     "passed": counts["passed"]})
