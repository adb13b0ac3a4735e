"""Deprecated: moved to loop.guarded; `loop.call_plugin` and `loop.PluginFailure` are public (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.guarded")
