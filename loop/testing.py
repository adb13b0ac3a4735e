"""Test doubles for plugin authors and loop's own tests (as llm's MockModel is for llm's).

- `ScriptedBackend`: a backend that answers from a script and needs no model, also registered as
  the backend `scripted` (`--set backend.name=scripted --set
  'backend.options.completions=["The answer is 3."]'`); `respond=fn(prompt, k, sampling)` or a
  subclass gives prompt-dependent answers.
- `NoopUpdater`: an update method that trains nothing but publishes a checkpoint of counts; also
  registered as the update method `noop`.
- `plugin_manager()` / `registry()`: the plugin manager and name registry with the installed
  plugins, for a test that a plugin loads next to the others without a name clash.

Contracts in loop.doubles. Use the doubles where the subject of a test is bookkeeping (what the
store holds, what a resume redoes), never where it is a model's behaviour.
"""

from __future__ import annotations

from typing import Any

from loop.doubles import (
    NoopUpdater,
    ScriptedBackend,
    ScriptedOptions,
    ScriptedSession,
    scripted_reply,
)
from loop.plugin_manager import Registry, build_registry, get_plugin_manager

__all__ = ["NoopUpdater", "ScriptedBackend", "ScriptedOptions", "ScriptedSession",
           "scripted_reply", "plugin_manager", "registry"]


def plugin_manager(plugins_dir: str | None = None) -> Any:
    """A plugin manager with the built-ins and every installed plugin (entry points)."""
    return get_plugin_manager(plugins_dir=plugins_dir)


def registry(plugins_dir: str | None = None) -> Registry:
    """The name registry of the installed plugins; raises loop.PluginError on a name clash."""
    return build_registry(plugin_manager(plugins_dir))
