"""Deprecated: moved to loop.plugin_manager; `loop.get_plugin_manager` and `loop.build_registry`
are public (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.plugin_manager")
