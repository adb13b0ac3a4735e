"""Old import paths that keep working for a deprecation period (see CHANGELOG.md).

A module whose names moved defines `__getattr__` that calls `moved(...)`: the name is imported
from its new home and returned, with a DeprecationWarning naming that home. The public home of
every name a plugin needs is `loop` itself.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

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

