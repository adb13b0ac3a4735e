"""Old import paths that keep working for a deprecation period (see CHANGELOG.md).

An old module that moved whole is `__getattr__ = redirect(__name__, NEW_HOME, ...)`; a live
module some of whose names moved defines `__getattr__` calling `moved(...)`. Either way the name
is imported from its new home and returned, with a DeprecationWarning naming that home. The
public home of every name a plugin needs is `loop` itself.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

import loop


def moved(module: str, name: str, homes: dict[str, str]) -> Any:
    """`name` of the old `module`, from its new home in `homes` (name -> module), with a
    DeprecationWarning; AttributeError for a name that never lived there."""
    if name not in homes:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    public = name in getattr(loop, "__all__", ())
    where = f"loop.{name}" if public else f"{homes[name]}.{name}"
    warnings.warn(f"{module}.{name} moved: use {where} (the old path will be removed)",
                  DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(homes[name]), name)



def redirect(module: str, *homes: str) -> Callable[[str], Any]:
    """The `__getattr__` of an old module whose names now live in `homes` (looked up in order)."""

    def __getattr__(name: str) -> Any:
        for home in homes:
            if hasattr(importlib.import_module(home), name):
                return moved(module, name, {name: home})
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
