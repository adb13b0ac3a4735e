"""Deprecated: moved to loop.reward_verifiers; use `loop.reward_verifier` (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "RewardFn": "loop.reward_verifiers",
    "RESERVED": "loop.reward_verifiers",
    "RewardVerifier": "loop.reward_verifiers",
    "trl_arguments": "loop.reward_verifiers",
    "reward_verifier": "loop.reward_verifiers",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
