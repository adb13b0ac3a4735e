"""Critics on hand-made failures, what they may see, and how a repair is asked for."""

from __future__ import annotations

import pytest

from loop.critics import (
    EXPLANATIONS,
    JudgeCritic,
    SelfCritiqueCritic,
    TaxonomyCritic,
    VerifierFeedbackCritic,
    classify,
)
from loop.schema import Attempt, Critique, Task, Verdict
from loop.refine import HIDDEN, critic_view, model_failure, repair_messages

TASK = Task(source="t", split="train", prompt=[{"role": "user", "content": "What is 47+38?"}],
            reference="85")


def _attempt(text="The answer is 86", finish="stop"):
    return Attempt(id="a1", run_id="r", round_index=1, task_id=TASK.id, purpose="train",
                   sample_index=0, messages=[*TASK.prompt, {"role": "assistant", "content": text}],
                   completion=text, finish_reason=finish)


def _wrong(feedback="expected 85, got 86", mistake="wrong_answer", **details):
    return Verdict(passed=False, error_kind="model", mistake=mistake, feedback=feedback,
                   details=details)


@pytest.mark.parametrize("verdict,finish,kind", [
    (_wrong(diagnosis="off_by_one"), "stop", "off_by_one"),
    (_wrong(diagnosis="wrong_operation"), "stop", "wrong_operation"),
    (_wrong(), "stop", "wrong_answer"),
    (_wrong(diagnosis="off_by_one"), "length", "truncated"),
    (_wrong("no final answer found", "format"), "stop", "no_final_answer"),
    (_wrong("final answer 'x' is not a number", "format"), "stop", "wrong_format"),
    (Verdict(passed=False, error_kind="timeout", feedback="timed out"), "stop", "timeout"),
    (_wrong("test 2 failed", "wrong_output", error="  File x\nSyntaxError: invalid syntax"),
     "stop", "syntax_error"),
    (_wrong("assert f(2) == 4", "wrong_output", error="AssertionError"), "stop",
     "failed_assertion"),
    (_wrong("f(0) raised", "wrong_output", error="ZeroDivisionError: division by zero"), "stop",
     "exception:ZeroDivisionError"),
])
def test_taxonomy_classifies_each_documented_kind(verdict, finish, kind):
    attempt = _attempt(finish=finish)
    assert classify(attempt, {"v": verdict}) == kind
    critique = TaxonomyCritic().critique(TASK, attempt, {"v": verdict})
    assert critique.kind == kind and critique.critic == "taxonomy" and critique.text
    if kind in EXPLANATIONS:
        assert critique.text == EXPLANATIONS[kind]


def test_no_critique_for_a_pass_or_a_checker_failure():
    infra = Verdict(passed=False, error_kind="infra", feedback="verifier crashed")
    ok = Verdict(passed=True, score=1.0)
    for critic in (TaxonomyCritic(), VerifierFeedbackCritic()):
        assert critic.critique(TASK, _attempt(), {"v": infra}) is None
        assert critic.critique(TASK, _attempt(), {"v": ok}) is None
    assert not model_failure({"v": infra}) and not model_failure({"v": ok})
    assert not model_failure({"a": _wrong(), "b": infra})  # the checker is suspect: no repair
    assert model_failure({"a": _wrong(), "b": ok})


def test_verifier_feedback_joins_every_failing_verifier():
    critique = VerifierFeedbackCritic().critique(
        TASK, _attempt(), {"math": _wrong(), "len": _wrong("too long", "format"),
                           "ok": Verdict(passed=True)})
    assert critique == Critique(kind="wrong_answer", critic="verifier_feedback",
                                text="The checker says: expected 85, got 86; too long.")


def test_critics_do_not_see_the_reference_without_hints():
    verdicts = {"math": _wrong("expected 85, got 86 (not 850 or 8.5)", extracted="86",
                               expected="85", nested={"list": ["85", "185"]})}
    task, seen = critic_view(TASK, verdicts, hints=False)
    assert task.reference is None and task.id == TASK.id
    assert seen["math"].feedback == f"expected {HIDDEN}, got 86 (not 850 or 8.5)"
    assert seen["math"].details == {"extracted": "86", "expected": HIDDEN,
                                    "nested": {"list": [HIDDEN, "185"]}}
    assert verdicts["math"].feedback == "expected 85, got 86 (not 850 or 8.5)"  # not mutated
    critique = VerifierFeedbackCritic().critique(task, _attempt(), seen)
    assert "85," not in critique.text and HIDDEN in critique.text
    task, seen = critic_view(TASK, verdicts, hints=True)
    assert task.reference == "85" and seen["math"].feedback.startswith("expected 85")


def test_critics_do_not_see_a_reference_solution_in_the_metadata_without_hints():
    worked = TASK.model_copy(update={"metadata": {"a": 47, "b": 38,
                                                  "solution": "7 + 8 = 15\n#### 85"}})
    task, _ = critic_view(worked, {"math": _wrong()}, hints=False)
    assert task.metadata == {"a": 47, "b": 38}
    assert worked.metadata["solution"] == "7 + 8 = 15\n#### 85"  # not mutated
    # a task judged by tests, not a reference (code), hides its canonical solution all the same
    code = worked.model_copy(update={"reference": None})
    assert critic_view(code, {}, hints=False)[0].metadata == {"a": 47, "b": 38}
    task, _ = critic_view(worked, {"math": _wrong()}, hints=True)
    assert task.metadata == worked.metadata


def test_repair_request_continues_the_conversation():
    messages = repair_messages(_attempt(), "Off by one.", "Wrong.\n{critique}\nAgain.")
    assert messages[:2] == _attempt().messages
    assert messages[2] == {"role": "user", "content": "Wrong.\nOff by one.\nAgain."}
    # no critique at all: the template still asks, without a blank gap
    assert repair_messages(_attempt(), "", "Wrong.\n{critique}\n\nAgain.")[2]["content"] == \
        "Wrong.\n\nAgain."


def test_model_critics_review_through_their_models(pm):
    """self_critique asks the round's policy, judge opens another model through a registered
    backend (here the scripted one); both get the question and the answer, never the reference,
    with their options' token limit; what the model says is the critique, kind from the
    verdicts."""
    from loop.refine import EngineCriticContext
    from loop.schema import ModelRef
    from loop.testing import ScriptedBackend

    seen: list[tuple[str, list, object]] = []  # (which model, prompt, sampling)

    class Recording:
        def __init__(self, label, session):
            self.label, self.session = label, session

        def generate(self, prompts, sampling, **kw):
            seen.extend((self.label, p, sampling) for p in prompts)
            return self.session.generate(prompts, sampling, **kw)

        def close(self):
            self.session.close()

    policy = Recording("policy", ScriptedBackend(completions=["You added wrong."]).open(
        ModelRef(base="policy-model")))

    class Context(EngineCriticContext):
        def open_backend(self, name, model, options=None):
            session = super().open_backend(name, model, options)
            assert session.model == ModelRef(base=model)
            return Recording(f"{name}:{model}", session)

    context = Context(lambda: policy, pm, seed=0, batch_size=4)
    task, verdicts = critic_view(TASK, {"math": _wrong(diagnosis="off_by_one")}, hints=False)
    items = [(task, _attempt(), verdicts), (task, _attempt("The answer is 9"), verdicts)]
    self_critic = SelfCritiqueCritic()
    self_critic.options = SelfCritiqueCritic.Options(max_new_tokens=40)
    judge = JudgeCritic()
    judge.options = JudgeCritic.Options(model="judge-model", backend="scripted", max_new_tokens=7,
                                        backend_options={"completions": ["Check the carry."]})
    for critic, label, text in ((self_critic, "policy", "You added wrong."),
                                (judge, "scripted:judge-model", "Check t")):
        seen.clear()
        results = critic.critique_batch(items, context)
        assert results == [Critique(kind="off_by_one", text=text.strip(), critic=critic.name)] * 2
        assert [s[0] for s in seen] == [label, label]
        assert all(s[2].max_new_tokens == critic.options.max_new_tokens and s[2].temperature == 0
                   for s in seen)
        assert "What is 47+38?" in seen[0][1][0]["content"]
        assert "The answer is 86" in seen[0][1][0]["content"]
        assert "The answer is 9" in seen[1][1][0]["content"]
        assert not any("85" in s[1][0]["content"] for s in seen)
    assert critic.critique_batch([], context) == []
    policy.close()
