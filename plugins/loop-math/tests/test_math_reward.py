"""The binary reward: TRL's contract, verdict handling, and the TRL-direct fallback."""

import pytest

from loop import Verdict
from loop_math.reward import binary, completion_text

PASS = Verdict(passed=True, score=1.0)
WRONG = Verdict(passed=False, error_kind="model", mistake="wrong_answer")
FORMAT = Verdict(passed=False, error_kind="model", mistake="format")
INFRA = Verdict(passed=False, error_kind="infra", feedback="sandbox died")
TIMEOUT = Verdict(passed=False, error_kind="timeout")


def test_rewards_from_verdicts():
    verdicts = [
        {"math": PASS},
        {"math": WRONG},
        {"math": FORMAT},
        {"math": INFRA},
        {"math": TIMEOUT},
        {"math": PASS, "style": PASS},
        {"math": PASS, "style": WRONG},
        {"math": PASS, "style": INFRA},
        {"math": WRONG, "style": INFRA},  # an error row: NULL, never 0
        {},
    ]
    completions = ["x"] * len(verdicts)
    assert binary(["p"] * len(verdicts), completions, verdicts=verdicts) == [
        1.0, 0.0, 0.0, None, None, 1.0, 0.0, None, None, None]


def test_verdicts_win_over_the_completion_text():
    # loop's verdicts are authoritative; the reward must not re-grade the text.
    assert binary(["p"], ["85"], verdicts=[{"math": WRONG}], reference=["85"]) == [0.0]


def test_verdicts_as_plain_dicts():
    verdicts = [{"math": PASS.model_dump()}, {"math": INFRA.model_dump()},
                {"math": {"passed": False}}]  # no error_kind: still a failed answer
    assert binary(["p"] * 3, ["x"] * 3, verdicts=verdicts) == [1.0, None, 0.0]


def test_trl_direct_with_string_completions():
    completions = ["47 + 38 = 85", "86", "", r"\boxed{1,234}", "85"]
    references = ["85", "85", "85", "1234", None]
    assert binary(["q"] * 5, completions, reference=references) == [1.0, 0.0, 0.0, 1.0, None]


def test_trl_direct_with_conversational_completions():
    prompts = [[{"role": "user", "content": "What is 47+38?"}]] * 3
    completions = [
        [{"role": "assistant", "content": "The answer is 85."}],
        [{"role": "assistant", "content": "The answer is 84."}],
        [{"role": "assistant", "content": [{"type": "text", "text": "It is "},
                                           {"type": "text", "text": "85"}]}],
    ]
    assert binary(prompts, completions, reference=["85"] * 3,
                  completion_ids=[[1]] * 3, trainer_state=None) == [1.0, 0.0, 1.0]


def test_trl_direct_never_raises_on_hostile_text():
    hostile = ["\x00" * 100, "\udcff" * 10, r"\boxed{" * 5000, "9" * 50_000, None, 12]
    rewards = binary(["q"] * len(hostile), hostile, reference=["85"] * len(hostile))
    assert rewards == [0.0] * len(hostile)


def test_wrong_calls_are_errors_not_silent_zeros():
    with pytest.raises(ValueError, match="reference"):
        binary(["q"], ["85"])
    with pytest.raises(ValueError, match="2 reference for 1 completions"):
        binary(["q"], ["85"], reference=["85", "85"])
    with pytest.raises(ValueError, match="verdicts"):
        binary(["q", "q"], ["85", "86"], verdicts=[{"math": PASS}])


@pytest.mark.parametrize("completion, text", [
    ("plain", "plain"),
    ([{"role": "assistant", "content": "a"}], "a"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
      {"role": "assistant", "content": "b"}], "b"),
    ({"role": "assistant", "content": "c"}, "c"),
    ([{"content": "no role"}], "no role"),
    ([{"role": "assistant", "content": None}], ""),
    (None, ""),
])
def test_completion_text(completion, text):
    assert completion_text(completion) == text


def test_registered_name_is_the_function_name():
    assert binary.__name__ == "binary"
