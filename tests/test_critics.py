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


def test_repair_request_continues_the_conversation():
    messages = repair_messages(_attempt(), "Off by one.", "Wrong.\n{critique}\nAgain.")
    assert messages[:2] == _attempt().messages
    assert messages[2] == {"role": "user", "content": "Wrong.\nOff by one.\nAgain."}
    # no critique at all: the template still asks, without a blank gap
    assert repair_messages(_attempt(), "", "Wrong.\n{critique}\n\nAgain.")[2]["content"] == \
        "Wrong.\n\nAgain."


@pytest.mark.slow
def test_model_critics_review_through_real_models(weak_adder_dir, pm):
    """self_critique asks the round's policy, judge opens another model through a registered
    backend; both get the question and the answer, never the reference."""
    from loop.schema import ModelRef
    from loop.refine import EngineCriticContext
    from loop_hf.backend import HFBackend, HFOptions

    prompts_seen = []

    class Recording:
        def __init__(self, session):
            self.session = session

        def generate(self, prompts, sampling, **kw):
            prompts_seen.extend(prompts)
            return self.session.generate(prompts, sampling, **kw)

        def close(self):
            self.session.close()

    policy = Recording(HFBackend().open(ModelRef(base=str(weak_adder_dir)), HFOptions()))

    class Context(EngineCriticContext):
        def open_backend(self, name, model, options=None):
            return Recording(super().open_backend(name, model, options))

    context = Context(lambda: policy, pm, seed=0, batch_size=4)
    task, verdicts = critic_view(TASK, {"math": _wrong()}, hints=False)
    items = [(task, _attempt(), verdicts), (task, _attempt("The answer is 9"), verdicts)]
    self_critic = SelfCritiqueCritic()
    self_critic.options = SelfCritiqueCritic.Options(max_new_tokens=4)
    judge = JudgeCritic()
    judge.options = JudgeCritic.Options(model=str(weak_adder_dir), max_new_tokens=4)
    for critic in (self_critic, judge):
        prompts_seen.clear()
        results = critic.critique_batch(items, context)
        assert len(results) == 2 and len(prompts_seen) == 2
        assert all(r is None or (r.critic == critic.name and r.kind == "wrong_answer")
                   for r in results)
        assert "What is 47+38?" in prompts_seen[0][0]["content"]
        assert "The answer is 9" in prompts_seen[1][0]["content"]
        assert not any("85" in p[0]["content"] for p in prompts_seen)
    policy.close()
