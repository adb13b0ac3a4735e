"""Deprecated: moved to loop.guarded; `loop.call_plugin` and `loop.PluginFailure` are public (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "PluginFailure": "loop.guarded",
    "call_plugin": "loop.guarded",
    "describe_callable": "loop.guarded",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
