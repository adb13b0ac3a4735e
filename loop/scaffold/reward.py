"""Template of a reward plugin (`loop plugin new reward NAME`)."""

SUMMARY = "reward `$name`: 1.0 for the reference, 0.5 when the answer contains it"

DEPENDENCIES = ["loop"]

USAGE = """\
Rewards feed the update methods that use them (`grpo`, `nft`, `redi`; every reward's value is
stored). The first reward listed is the one single-reward updaters read:

```bash
loop run arithmetic --method grpo --set 'task.rewards=[$name]'
```

It is a plain TRL reward function, so TRL takes it unchanged:
`GRPOTrainer(reward_funcs=[$module.$ident], ...)` with a `reference` column in the dataset.
"""

MODULE = '''\
"""$dist: a loop plugin.

It registers the $summary.

A reward function has TRL's contract, `fn(prompts, completions, **kwargs) -> list[float | None]`
(None: not applicable to that completion), so it works in loop and in TRL's GRPOTrainer alike.
The whole contract is in loop's docs/plugins.md ("register_rewards").
"""

from collections.abc import Sequence
from typing import Any

import loop


def $ident(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    reference: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the answer is the reference, 0.5 when it contains the reference among other
    words (partial credit for a rambling answer), 0.0 otherwise; None where there is no
    reference. Both are compared stripped of surrounding whitespace.

    `completions` are conversational (`[{"role": "assistant", "content": ...}]`, what loop and
    TRL pass for chat prompts) or plain strings. Inside loop, kwargs also hold `tasks`,
    `attempts` and `verdicts`; TRL passes the dataset's columns instead.
    """
    if reference is None:
        return [None] * len(completions)
    rewards: list[float | None] = []
    for completion, expected in zip(completions, reference, strict=True):
        if expected is None:
            rewards.append(None)
            continue
        answer, expected = _text(completion).strip(), str(expected).strip()
        if answer == expected:
            rewards.append(1.0)
        elif expected and expected in answer.split():
            rewards.append(0.5)
        else:
            rewards.append(0.0)
    return rewards


def _text(completion: Any) -> str:
    """A plain-string completion, or the last message's content of a conversational one."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1].get("content") or "") if completion else ""


@loop.hookimpl
def register_rewards(register):
    register($ident, name="$name")
'''

TEST = '''\
"""Tests of the `$name` reward."""

import importlib.metadata

import pytest

from loop import build_registry, get_plugin_manager

import $module


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_rewards_follow_trls_contract():
    completions = [chat("4"), chat("It is 4 ."), chat("5"), chat("4")]
    rewards = $module.$ident(
        prompts=[[]] * 4, completions=completions, reference=["4", "4", "4", None])
    assert rewards == [1.0, 0.5, 0.0, None]


def test_plain_string_completions_and_no_reference():
    assert $module.$ident(prompts=["q"], completions=[" 4\\n"], reference=["4"]) == [1.0]
    assert $module.$ident(prompts=["q", "q"], completions=["4", "5"]) == [None, None]


def test_a_wrong_call_raises():
    with pytest.raises(ValueError):
        $module.$ident(prompts=["q"], completions=["4", "5"], reference=["4"])


def test_the_plugin_registers_the_reward_by_name():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register($module, name="$name")
    registry = build_registry(pm)
    assert registry.get("rewards", "$name") is $module.$ident


def test_the_entry_point_is_installed():
    (entry_point,) = importlib.metadata.entry_points(group="loop", name="$name")
    assert entry_point.load() is $module
'''
