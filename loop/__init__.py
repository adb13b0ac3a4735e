"""loop: a plugin-based self-improvement loop for language models.

Plugins import what they need from here and never import pluggy themselves:

    import loop
    from loop.records import Verdict

    class AlwaysPass(loop.Verifier):
        name = "always_pass"
        def verify(self, task, attempt):
            return Verdict(passed=True, score=1.0)

    @loop.hookimpl
    def register_verifiers(register):
        register(AlwaysPass())
"""

from loop.adapters import reward_verifier
from loop.hookspecs import hookimpl
from loop.records import (
    Attempt,
    Backend,
    Critic,
    CriticContext,
    Critique,
    Generation,
    GenerationSession,
    ModelRef,
    Sample,
    Sampling,
    Task,
    TaskSet,
    TaskSource,
    UpdateResult,
    Updater,
    Verdict,
    Verifier,
)

__version__ = "0.1.0"

__all__ = [
    "Attempt", "Backend", "Critic", "CriticContext", "Critique", "Generation", "GenerationSession", "ModelRef",
    "Sample", "Sampling", "Task", "TaskSet", "TaskSource", "UpdateResult", "Updater", "Verdict",
    "Verifier", "hookimpl", "reward_verifier", "__version__",
]
