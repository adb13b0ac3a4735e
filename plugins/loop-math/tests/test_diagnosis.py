"""The math verifier's diagnosis of a wrong numeric answer (what the taxonomy critic explains)."""

from __future__ import annotations

import pytest

from loop import Attempt, Task
from loop_math.diagnosis import diagnose
from loop_math.verifier import MathVerifier


@pytest.mark.parametrize("question,expected,got,kind", [
    ("What is 47+38?", "85", "86", "off_by_one"),
    ("What is 47+38?", "85", "84", "off_by_one"),
    ("What is 47+38?", "85", "-85", "sign_error"),
    ("What is 47+38?", "85", "47", "copied_operand"),
    ("What is 47+38?", "85", "9", "wrong_operation"),       # 47-38
    ("What is 47+38?", "85", "1786", "wrong_operation"),    # 47*38
    ("What is 47+38?", "85", "850", "magnitude_error"),
    ("What is 47+38?", "85", "75", "arithmetic_slip"),      # a lost carry
    ("What is 47+38?", "85", "95", "arithmetic_slip"),
    ("What is 47+38?", "85", "1,085", "arithmetic_slip"),   # off by a power of ten
    ("What is 47+38?", "85", "42", None),
    ("What is 47+38?", "85", "85", None),
    ("What is 47+38?", "85", "many", None),
])
def test_diagnose(question, expected, got, kind):
    assert diagnose(question, expected, got) == kind


def test_the_verifier_attaches_the_diagnosis_to_wrong_answers_only():
    task = Task(source="t", split="train", prompt=[{"role": "user", "content": "What is 12+35?"}],
                reference="47")

    def judge(text):
        attempt = Attempt(id="a", run_id="r", round_index=1, task_id=task.id, purpose="train",
                          sample_index=0, messages=[], completion=text)
        return MathVerifier().verify(task, attempt)

    assert judge("The answer is 23").details["diagnosis"] == "wrong_operation"
    assert judge("The answer is 48").details["diagnosis"] == "off_by_one"
    assert "diagnosis" not in judge("The answer is 47").details
    assert "diagnosis" not in judge("The answer is 13").details  # no pattern fits
    assert judge("no idea").mistake == "format"
