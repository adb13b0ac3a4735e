"""Deprecated: moved to loop.queries (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.queries")
