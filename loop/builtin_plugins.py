"""Built-in components that need nothing heavy; written exactly as a third-party plugin would be:
the `exact_match` verifier, the critics of loop.critics, and the test doubles of loop.doubles
(the `scripted` backend and the `noop` update method)."""

from __future__ import annotations

import loop


class ExactMatchVerifier(loop.Verifier):
    """Passes when the stripped answer equals the task's reference exactly (string compare).

    An attempt with an empty answer is a `format` mistake; any other mismatch a `wrong_answer`."""

    name = "exact_match"

    def verify(self, task, attempt):
        answer = attempt.completion.strip()
        reference = (task.reference or "").strip()
        if answer == reference:
            return loop.Verdict(passed=True, score=1.0)
        mistake = "format" if not answer else "wrong_answer"
        return loop.Verdict(passed=False, score=0.0, error_kind="model", mistake=mistake,
                            feedback=f"expected {reference!r}, got {answer[:200]!r}")


@loop.hookimpl
def register_verifiers(register):
    register(ExactMatchVerifier())


@loop.hookimpl
def register_critics(register):
    from loop.critics import JudgeCritic, SelfCritiqueCritic, TaxonomyCritic, VerifierFeedbackCritic

    for critic in (VerifierFeedbackCritic(), TaxonomyCritic(), SelfCritiqueCritic(), JudgeCritic()):
        register(critic)


@loop.hookimpl
def register_backends(register):
    from loop.doubles import ScriptedBackend

    register(ScriptedBackend())


@loop.hookimpl
def register_updaters(register):
    from loop.doubles import NoopUpdater

    register(NoopUpdater())
