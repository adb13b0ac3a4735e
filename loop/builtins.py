"""Deprecated: moved to loop.builtin_plugins (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "ExactMatchVerifier": "loop.builtin_plugins",
    "register_verifiers": "loop.builtin_plugins",
    "register_critics": "loop.builtin_plugins",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
