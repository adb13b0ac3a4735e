"""The parent's side (no sandbox needed): code extraction, assert rewriting that keeps expected
values out of the sandbox, strict decoding, the judgement, and the start-up probe's messages."""

from __future__ import annotations

import json

import pytest

from loop.critics import classify
from loop import Attempt, Verdict
from loop_code import checks, probe, sandbox
from loop_code.extract import defines, extract_code, program


@pytest.mark.parametrize("answer,expected", [
    ("```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1"),
    ("Here:\n```\ndef f():\n    return 1\n```", "def f():\n    return 1"),
    ("```python\nprint(f())\n```\n```python\ndef f():\n    return 1\n```",
     "def f():\n    return 1"),  # the block that defines the entry point wins
    ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off by the token limit
    ("def f():\n    return 1", "def f():\n    return 1"),
    ("Sure! Here is the code:\ndef f():\n    return 1", "def f():\n    return 1"),
    ("I cannot help with that.", ""),
    ("", ""),
])
def test_extract_code(answer, expected):
    assert extract_code(answer, "f") == expected


def test_a_bare_body_completes_the_stub():
    stub = 'def f(x):\n    """Double x."""\n'
    assert program("    return 2 * x", "f", stub) == stub + "    return 2 * x\n"
    assert program("```python\ndef f(x):\n    return x + x\n```", "f", stub) == \
        "def f(x):\n    return x + x"
    assert defines("f = lambda x: x", "f") and not defines("def g(): pass", "f")


def test_literal_expected_values_never_reach_the_sandbox():
    plan = checks.plan(["assert add(1, 2) == 31337", "assert 'secret-value' == name()",
                        "assert sorted(f(x)) == g(x)", "assert is_ok(3)"])
    sent = "\n".join(plan.snippets)
    assert "31337" not in sent and "secret-value" not in sent
    assert "__loop_value(0, add(1, 2))" in sent and "__loop_value(1, name())" in sent
    assert "__loop_pair(2, sorted(f(x)), g(x))" in sent and "__loop_truth(3, is_ok(3))" in sent
    assert [c.expected for c in plan.checks[:2]] == [31337, "secret-value"]


def test_asserts_in_loops_are_not_required_to_run():
    plan = checks.plan(["def check(c):\n    for i in range(3):\n        assert c(i) == i\n"
                        "    assert c(9) == 9\ncheck(f)"])
    assert [c.top_level for c in plan.checks] == [False, False]


ROUND_TRIP = [None, True, 0, -7, 10**40, 1.5, float("inf"), "text", b"\x00\xff", 1 + 2j,
              [1, [2]], (1, "a"), {1: {"k": (2,)}}, {3, 4}, frozenset({5})]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=[type(v).__name__ for v in ROUND_TRIP])
def test_decode_reverses_the_harness_encoding(value):
    namespace: dict = {}
    exec(_encoder_source(), namespace)
    encoded = json.loads(json.dumps(namespace["encode"](value)))
    decoded = checks.decode(encoded)
    assert decoded == value and type(decoded) is type(value)


def _encoder_source() -> str:
    """The harness's `encode`, lifted out of its source (it is a nested function there)."""
    from loop_code.harness import HARNESS

    start = HARNESS.index("    def encode(")
    end = HARNESS.index("    def reporter(")
    body = "\n".join(line[4:] for line in HARNESS[start:end].splitlines())
    return "import base64\nbudget = [100000]\n" + body


def _channel(*messages: dict) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


def test_judge_needs_the_nonce_and_every_top_level_assert():
    plan = checks.plan(["assert f(1) == 2", "assert f(2) == 3"])
    good = [{"ready": 1}, {"k": 0, "v": {"i": "2"}}, {"s": 0, "end": 1},
            {"k": 1, "v": {"i": "3"}}, {"s": 1, "end": 1}]
    assert checks.judge(plan, _channel(*good, {"done": "n0"}), "n0").passed
    forged = checks.judge(plan, _channel(*good, {"done": "guess"}), "n0")
    assert not forged.passed and forged.mistake == "exited_early"
    skipped = checks.judge(plan, _channel({"ready": 1}, {"s": 0, "end": 1},
                                          {"s": 1, "end": 1}, {"done": "n0"}), "n0")
    assert not skipped.passed and skipped.score == 0.0  # ended without reporting its asserts
    half = checks.judge(plan, _channel({"ready": 1}, {"k": 0, "v": {"i": "2"}},
                                       {"s": 0, "end": 1}, {"k": 1, "v": {"i": "4"}},
                                       {"s": 1, "end": 1}, {"done": "n0"}), "n0")
    assert (half.passed, half.score, half.mistake) == (False, 0.5, "failed_assertion")
    assert half.feedback == "assert f(2) == 3 failed: got 4"


def test_judge_without_a_harness_is_infra_and_a_torn_line_is_ignored():
    plan = checks.plan(["assert f() == 1"])
    assert checks.judge(plan, b"", "n").infra
    torn = _channel({"ready": 1}, {"k": 0, "v": {"i": "1"}}, {"s": 0, "end": 1}) + b'{"done": "n'
    assert not checks.judge(plan, torn, "n").passed


def test_code_mistakes_key_the_taxonomy():
    attempt = Attempt(id="a", run_id="r", round_index=0, task_id="t", purpose="train",
                      sample_index=0, messages=[], completion="x")
    for mistake in ("no_code", "missing_function", "exited_early", "timeout",
                    "exception:RecursionError", "failed_assertion"):
        verdict = Verdict(passed=False, error_kind="model", mistake=mistake, feedback="...")
        assert classify(attempt, {"python_tests": verdict}) == mistake


def test_probe_names_what_is_missing(monkeypatch):
    box = sandbox.Sandbox("/usr/bin/python3")
    monkeypatch.setattr(probe, "missing_tools", lambda: ["unshare"])
    with pytest.raises(sandbox.SandboxUnavailable, match="missing commands unshare"):
        probe.probe(box)
    monkeypatch.setattr(probe, "missing_tools", lambda: [])
    monkeypatch.setattr(probe.os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxUnavailable, match="uid 1000, not root.*unsafe_no_sandbox"):
        probe.probe(box)


def test_a_missing_interpreter_is_refused(tmp_path):
    with pytest.raises(sandbox.SandboxUnavailable, match="does not exist or is not executable"):
        sandbox.pick_python(str(tmp_path / "python3"))
    assert sandbox.pick_python() == sandbox.os.path.realpath(sandbox.sys.executable)
