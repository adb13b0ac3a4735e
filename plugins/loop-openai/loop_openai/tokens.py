"""The model's tokenizer, if it is on this machine: it renders token-exact episodes (`chat()`,
a `loop.TokenizerChat`: the server then continues the ids it renders), and counts tokens when a
server gives none.

Re-tokenizing an answer's text is an approximation: it can split the text differently from how
the model sampled it, and it has no end-of-sequence token. It is used only when the server
returned no token ids (a server without vLLM's extensions, or `request_token_ids: false`);
without a local tokenizer the ids stay empty and the prompt's length unknown (0).
"""

from __future__ import annotations

from pathlib import Path

import loop


class LocalTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: str | None) -> "LocalTokenizer | None":
        """The tokenizer in local folder `path`; None when there is no folder, no tokenizer in
        it, or no transformers."""
        if not path or not Path(path).is_dir():
            return None
        try:
            from transformers import AutoTokenizer

            return cls(AutoTokenizer.from_pretrained(path))
        except (ImportError, OSError, ValueError):
            return None

    def chat(self) -> loop.ChatFormat:
        """The chat format of token-exact episodes: this tokenizer's chat template."""
        return loop.TokenizerChat(self.tokenizer)

    def completion_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_length(self, messages: list[loop.Message]) -> int:
        """Tokens in the prompt as the chat template renders it (0 without a template)."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception:  # no template, or a template that fails on these messages (jinja)
            return 0
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)
