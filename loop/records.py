"""Deprecated: records moved to loop.schema, base classes to loop.interfaces; plugins import both from `loop` (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "Message": "loop.schema",
    "Split": "loop.schema",
    "stable_id": "loop.schema",
    "Record": "loop.schema",
    "Task": "loop.schema",
    "TaskSet": "loop.schema",
    "Sampling": "loop.schema",
    "Generation": "loop.schema",
    "Attempt": "loop.schema",
    "ErrorKind": "loop.schema",
    "Verdict": "loop.schema",
    "Critique": "loop.schema",
    "Sample": "loop.schema",
    "ModelRef": "loop.schema",
    "UpdateResult": "loop.schema",
    "Component": "loop.interfaces",
    "OptionsT": "loop.interfaces",
    "coerce_options": "loop.interfaces",
    "TaskSource": "loop.interfaces",
    "Backend": "loop.interfaces",
    "GenerationSession": "loop.interfaces",
    "Verifier": "loop.interfaces",
    "CriticContext": "loop.interfaces",
    "Critic": "loop.interfaces",
    "Updater": "loop.interfaces",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
