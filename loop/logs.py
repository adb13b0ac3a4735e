"""Deprecated: moved to loop.queries (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "TEXT_CANDIDATES": "loop.queries",
    "TRIGRAMS_COUNTED": "loop.queries",
    "_like": "loop.queries",
    "_last_user_message": "loop.queries",
    "attempt_logs": "loop.queries",
    "_text_candidates": "loop.queries",
    "_trigram_rowids": "loop.queries",
    "_fts_string": "loop.queries",
    "_add_chains": "loop.queries",
    "_decorate": "loop.queries",
    "mistake_rows": "loop.queries",
    "_mistake_candidates": "loop.queries",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
