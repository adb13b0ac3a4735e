"""Deprecated: moved to loop.resolve; `loop.Chosen` is public (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "Chosen": "loop.resolve",
    "Components": "loop.resolve",
    "validate_options": "loop.resolve",
    "_choose": "loop.resolve",
    "resolve_components": "loop.resolve",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
