"""Conversations as token ids, for token-exact episodes.

An episode's training sequence is built once, as it is sampled, and never re-tokenised:
`prompt_ids(messages, tools)` renders the prompt (with the assistant header), each model turn
adds exactly the ids it sampled, and `continuation_ids(new_messages, tools)` adds the tokens
that carry the environment's messages (tool results, observations) plus the next assistant
header. Re-rendering a whole conversation after each turn is what makes other frameworks train
on different tokens than they sampled (a template that trims whitespace or drops a thinking
block changes the history); here the history's ids are never rebuilt.

`TokenizerChat` does this with a transformers tokenizer's chat template; backends with such a
tokenizer (hf, vllm) set `session.chat = loop.TokenizerChat(tokenizer)`.
"""

from __future__ import annotations

from typing import Any

from loop.tool_calls import ParsedCalls, parse_tool_calls

Message = dict[str, Any]

# A stand-in conversation the new messages are rendered after: their tokens do not depend on the
# real history (which is never re-rendered).
_BEFORE = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]


class ChatFormat:
    """How a model's conversations become token ids (see the module docstring).

    `native_tools`: the chat template renders `tools=` itself; otherwise the episode loop puts
    loop's fallback tool description in the system message and passes no tools here.
    """

    native_tools: bool = False

    def prompt_ids(self, messages: list[Message],
                   tools: list[dict] | None = None) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def continuation_ids(self, new_messages: list[Message],
                         tools: list[dict] | None = None) -> list[int]:  # pragma: no cover
        """The ids that follow a model turn which ended with its end-of-turn token: the end of
        that turn as the template writes it, `new_messages`, and the next assistant header."""
        raise NotImplementedError

    def parse_tool_calls(self, text: str) -> ParsedCalls:
        return parse_tool_calls(text)


class TokenizerChat(ChatFormat):
    """ChatFormat over a transformers tokenizer and its chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        template = getattr(tokenizer, "chat_template", None) or ""
        self.native_tools = isinstance(template, str) and "tools" in template
        self.end_of_turn = tokenizer.eos_token or ""

    def _render(self, messages: list[Message], tools: list[dict] | None,
                generation_prompt: bool) -> str:
        kwargs = {"tools": tools} if tools and self.native_tools else {}
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_ids(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        return self._ids(self._render(messages, tools, True))

    def continuation_ids(self, new_messages: list[Message],
                         tools: list[dict] | None = None) -> list[int]:
        before = self._render(_BEFORE, tools, False)
        after = self._render(_BEFORE + list(new_messages), tools, True)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier messages differently once more "
                             "follow, so an episode cannot be continued token-exactly")
        # The model's turn stopped at its end-of-turn token: what the template writes after that
        # token (e.g. ChatML's newline) comes before the new messages.
        end = before.rfind(self.end_of_turn) if self.end_of_turn else -1
        tail = before[end + len(self.end_of_turn):] if end >= 0 else ""
        return self._ids(tail + after[len(before):])
