"""Deprecated: moved to loop.resolve; `loop.Chosen` is public (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.resolve")
