"""The math verifier: the answer table, the numeric rule, and that it never raises."""

import threading

import pytest

from loop import Attempt, Task, Verdict
from loop_math.verifier import MathOptions, MathVerifier

VERIFIER = MathVerifier()


def judge(completion, reference="85"):
    verdict = VERIFIER.check(completion, reference)
    assert isinstance(verdict, Verdict)
    return verdict


@pytest.mark.parametrize("completion, reference", [
    ("85", "85"),
    ("85.", "85"),
    ("47 + 38 = 85", "85"),
    ("The answer is 85.", "85"),
    ("**85**", "85"),
    ("85.0", "85"),
    (r"Adding gives \boxed{85}.", "85"),
    (r"so \boxed{85} (my scratch work said 86)", "85"),
    (r"The answer is $\frac{170}{2}$", "85"),
    ("The answer is 85. Let me double-check: 86", "85"),
    ("1,234", "1234"),
    ("The total is $1,234.", "1234"),
    ("The answer is 1,234,567", "1234567"),
    ("The answer is -12", "-12"),
    ("3/4", "0.75"),
    ("\x00 85", "85"),
    ("\udcff 85", "85"),
    ("9" * 1500, "9" * 1500),
    ("The answer is $x+1$", "x+1"),
])
def test_passes(completion, reference):
    verdict = judge(completion, reference)
    assert verdict.passed and verdict.score == 1.0
    assert verdict.error_kind is None and verdict.mistake is None


@pytest.mark.parametrize("completion, reference, got", [
    ("84", "85", "84"),
    ("47+38=85. Then 85+1=86", "85", "86"),  # the last number is the final answer
    ("It is 85, not 86.", "85", "86"),
    ("**86**", "85", "86"),
    ("What is 47+38?", "85", "47"),
    ("1,235", "1234", "1235"),
    ("99999999999999999999999", "99999999999999999999998", "99999999999999999999999"),
])
def test_wrong_answers(completion, reference, got):
    verdict = judge(completion, reference)
    assert not verdict.passed and verdict.score == 0.0
    assert (verdict.error_kind, verdict.mistake) == ("model", "wrong_answer")
    assert verdict.feedback == f"expected {reference}, got {got}"
    assert verdict.details["extracted"] == got


@pytest.mark.parametrize("completion", [
    "", "   ", "I think it is eighty-five", "x85", "\x00" * 10, "\udcff\udcfe",
    r"\boxed{" * 3000, "{" * 5000, "$" * 4000,
    "1" + "0" * 5000 + "85",  # the cut at max_chars must not leave "...0085" behind
    "9" * 10_000,
])
def test_no_final_answer_is_a_format_mistake(completion):
    verdict = judge(completion)
    assert not verdict.passed and verdict.score == 0.0
    assert (verdict.error_kind, verdict.mistake) == ("model", "format")
    assert verdict.feedback == "no final answer found"


@pytest.mark.parametrize("completion", ["47+38", r"\boxed{47+38}", "The answer is 9^9^9^9",
                                        "2**10000000", "85\n\nsince that is 47+38"])
def test_expression_where_a_number_is_expected_is_a_format_mistake(completion):
    verdict = judge(completion)
    assert (verdict.passed, verdict.error_kind, verdict.mistake) == (False, "model", "format")
    assert "is not a number" in verdict.feedback


def test_long_answer_is_read_from_its_tail():
    assert judge("blah " * 5000 + "The answer is 85").passed
    assert not judge("The answer is 85. " + "blah " * 5000).passed  # beyond max_chars
    assert MathVerifier({"max_chars": 100_000}).check("The answer is 85. " + "blah " * 5000,
                                                      "85").passed


def test_huge_number_within_the_cap_is_not_a_crash():
    # Python refuses int() of more than 4300 digits; that is an unreadable answer, not an outage.
    verdict = MathVerifier({"max_chars": 20_000}).check("9" * 10_000, "85")
    assert (verdict.passed, verdict.error_kind, verdict.mistake) == (False, "model", "format")
    assert verdict.feedback == "could not read the final answer"


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_missing_reference_is_an_infra_error(reference):
    verdict = judge("85", reference)
    assert (verdict.passed, verdict.error_kind, verdict.mistake) == (False, "infra", None)


def test_non_string_completion_does_not_raise():
    assert judge(85).passed
    assert judge(None).mistake == "format"


def test_timeout_is_reported_as_timeout_not_a_wrong_answer():
    # A symbolic reference lets the hostile tower reach sympy's comparison, which math-verify
    # interrupts after timeout_s (main thread only: it uses SIGALRM).
    verdict = MathVerifier({"timeout_s": 1}).check(r"The answer is $9^{9^{9^9}}$", "x+1")
    assert (verdict.passed, verdict.error_kind) == (False, "timeout")


def test_checker_failure_is_infra(monkeypatch):
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(math_verify, "verify", broken)
    verdict = judge("85")
    assert (verdict.passed, verdict.error_kind) == (False, "infra")
    assert "RuntimeError" in verdict.feedback


def test_works_off_the_main_thread():
    results = {}

    def work():
        results["pass"] = judge("The answer is 85")
        results["fail"] = judge("86")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert results["pass"].passed and results["fail"].mistake == "wrong_answer"


def test_verify_reads_task_reference_and_attempt_completion():
    task = Task(source="arithmetic", split="eval", prompt=[{"role": "user", "content": "47+38?"}],
                reference="85")
    attempt = Attempt(id="a", run_id="r", round_index=0, task_id=task.id, purpose="eval",
                      sample_index=0, messages=[], completion="47 + 38 = 85")
    assert VERIFIER.verify(task, attempt).passed
    assert not VERIFIER.verify(task, attempt.model_copy(update={"completion": "86"})).passed


def test_name_and_options():
    assert MathVerifier.name == "math" and MathVerifier.Options is MathOptions
    assert VERIFIER.options == MathOptions(max_chars=2000, timeout_s=5)
    with pytest.raises(ValueError):
        MathVerifier({"max_chars": 0})
    with pytest.raises(ValueError):
        MathVerifier({"unknown": 1})
