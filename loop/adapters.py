"""Deprecated: moved to loop.reward_verifiers; use `loop.reward_verifier` (see CHANGELOG.md)."""

from loop._moved import redirect

__getattr__ = redirect(__name__, "loop.reward_verifiers")
