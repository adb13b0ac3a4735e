"""Deprecated: moved to loop.builtin_plugins (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.builtin_plugins")
