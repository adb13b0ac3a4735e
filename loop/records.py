"""Deprecated: records moved to loop.schema, base classes to loop.interfaces; plugins import both
from `loop` (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.schema", "loop.interfaces")
