"""`@loop.reward_verifier`: a TRL reward function becomes a verifier with one decorator, judged
through the engine's own path (`loop.safe_verify_batch`)."""

from __future__ import annotations

import math

import pytest

import loop
from loop.resolve import Chosen
from loop.plugin_manager import build_registry
from loop.schema import Attempt, Task, Verdict
from loop.guarded import safe_verify_batch


def make_items(pairs, metadata=None):
    """(task, attempt) pairs for (reference, completion) pairs."""
    items = []
    for i, (reference, completion) in enumerate(pairs):
        task = Task(source="t", split="train", reference=reference,
                    prompt=[{"role": "user", "content": f"question {i}"}],
                    metadata=(metadata or {}).get(i, {}))
        attempt = Attempt(id=f"a{i}", run_id="r", round_index=1, task_id=task.id,
                          purpose="train", sample_index=0, completion=completion,
                          token_ids=[ord(c) for c in completion],
                          messages=[*task.prompt, {"role": "assistant", "content": completion}])
        items.append((task, attempt))
    return items


def through_engine(verifier, items, timeout_s=5.0):
    return safe_verify_batch(Chosen(verifier.name, verifier, None, "test-plugin"), items, timeout_s)


def test_trl_arguments_and_verdicts_through_the_engine():
    seen = []

    @loop.reward_verifier(threshold=0.5)
    def overlap(prompts, completions, reference, **kwargs):
        seen.append({"prompts": prompts, "completions": completions, "reference": reference,
                     **kwargs})
        out = []
        for completion, ref in zip(completions, reference):
            said = set(completion[0]["content"].split())
            out.append(len(said & set(ref.split())) / len(set(ref.split())))
        return out

    items = make_items([("a b", "a b"), ("a b", "a x"), ("a b c d", "a"), ("x", "y")],
                       metadata={0: {"level": 3}, 2: {"level": 5, "topic": "t"}})
    verdicts = through_engine(overlap, items)

    assert len(seen) == 1  # one call for the whole chunk
    call = seen[0]
    assert call["prompts"] == [task.prompt for task, _ in items]
    assert call["completions"] == [[{"role": "assistant", "content": a.completion}]
                                   for _, a in items]
    assert call["reference"] == ["a b", "a b", "a b c d", "x"]
    assert call["completion_ids"] == [a.token_ids for _, a in items]
    assert call["level"] == [3, None, 5, None] and call["topic"] == [None, None, "t", None]
    assert [v.passed for v in verdicts] == [True, True, False, False]
    assert [v.score for v in verdicts] == [1.0, 0.5, 0.25, 0.0]
    assert [v.error_kind for v in verdicts] == [None, None, "model", "model"]
    assert "below the threshold 0.5" in verdicts[2].feedback
    assert verdicts[2].details == {"reward": 0.25}


def test_scores_are_clipped_and_threshold_applies_to_the_raw_value():
    @loop.reward_verifier(threshold=2.0)
    def scaled(prompts, completions, **kwargs):
        return [3.0, 1.5, -4.0]

    verdicts = through_engine(scaled, make_items([("1", "x")] * 3))
    assert [(v.passed, v.score) for v in verdicts] == [(True, 1.0), (False, 1.0), (False, 0.0)]
    assert verdicts[2].details["reward"] == -4.0


def test_none_and_junk_values_are_infra_verdicts_not_wrong_answers():
    @loop.reward_verifier
    def patchy(prompts, completions, **kwargs):
        return [1.0, None, math.nan, "yes", True]

    verdicts = through_engine(patchy, make_items([("1", "x")] * 5))
    assert verdicts[0].passed and verdicts[0].error_kind is None
    assert [v.error_kind for v in verdicts[1:]] == ["infra"] * 4
    assert not any(v.passed for v in verdicts[1:])
    assert "returned None" in verdicts[1].feedback and "nan" in verdicts[2].feedback


@pytest.mark.parametrize("body, reason", [
    ("raise RuntimeError('model server down')", "raised RuntimeError: model server down"),
    ("return [1.0]", "returned 1 values for 3 completions"),
    ("return 1.0", "returned float, not a list of floats"),
])
def test_a_failing_function_gives_the_chunk_infra_verdicts_naming_it(body, reason):
    namespace: dict = {}
    exec(f"def broken(prompts, completions, **kwargs):\n    {body}\n", namespace)
    verifier = loop.reward_verifier(namespace["broken"])
    verdicts = through_engine(verifier, make_items([("1", "x")] * 3))
    assert [v.error_kind for v in verdicts] == ["infra"] * 3
    assert all(reason in v.feedback and "'broken' (plugin test-plugin)" in v.feedback
               for v in verdicts)


def test_a_hanging_function_is_a_timeout_verdict():
    import threading

    release = threading.Event()

    @loop.reward_verifier
    def slow(prompts, completions, **kwargs):
        release.wait(10)
        return [1.0] * len(completions)

    try:
        verdicts = through_engine(slow, make_items([("1", "x")] * 2), timeout_s=0.05)
    finally:
        release.set()
    assert [v.error_kind for v in verdicts] == ["timeout", "timeout"]


def test_it_stays_the_same_trl_reward_function():
    def exact(prompts, completions, reference, **kwargs):
        """1.0 when the answer is the reference."""
        return [float(c[0]["content"] == r) for c, r in zip(completions, reference)]

    verifier = loop.reward_verifier(name="exact_answer")(exact)
    assert isinstance(verifier, loop.Verifier) and verifier.name == "exact_answer"
    assert verifier.__name__ == "exact" and verifier.__doc__ == exact.__doc__
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]
    assert verifier(prompts=[[], []], completions=completions, reference=["4", "4"]) == [1.0, 0.0]
    # verify() is verify_batch of one
    (task, attempt), = make_items([("4", "4")])
    assert verifier.verify(task, attempt) == Verdict(passed=True, score=1.0,
                                                     details={"reward": 1.0})


def test_registered_as_verifier_and_as_reward_by_one_plugin(pm):
    @loop.reward_verifier(name="long_enough", threshold=0.5)
    def length(prompts, completions, **kwargs):
        return [min(1.0, len(c[0]["content"]) / 10) for c in completions]

    class Plugin:
        @loop.hookimpl
        def register_verifiers(self, register):
            register(length)

        @loop.hookimpl
        def register_rewards(self, register):
            register(length)

    pm.register(Plugin(), name="lengths")
    registry = build_registry(pm)
    assert registry.plugin_of("verifiers", "long_enough") == "lengths"
    assert registry.get("rewards", "long_enough") is length
    verdicts = through_engine(registry.get("verifiers", "long_enough"),
                              make_items([("", "0123456789"), ("", "abc")]))
    assert [v.passed for v in verdicts] == [True, False]


def test_config_selects_it_and_rejects_options(pm):
    from loop.resolve import resolve_components
    from loop.config import ConfigError, build_config

    @loop.reward_verifier
    def always(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    class Plugin:
        @loop.hookimpl
        def register_verifiers(self, register):
            register(always)

    pm.register(Plugin(), name="always-plugin")
    registry = build_registry(pm)
    config = build_config("arithmetic", sets=["task.verifiers=[always]"])
    components = resolve_components(config, registry)
    assert [c.name for c in components.verifiers] == ["always"]
    assert components.verifiers[0].component.fn is always.fn
    bad = build_config("arithmetic", sets=["task.verifiers=[{name: always, options: {x: 1}}]"])
    with pytest.raises(ConfigError, match="task.verifiers.always.options"):
        resolve_components(bad, registry)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": math.inf}, "threshold must be a finite number"),
    ({"threshold": "high"}, "threshold must be a finite number"),
    ({"name": ""}, "name must be a non-empty string"),
])
def test_bad_decorator_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loop.reward_verifier(**kwargs)


def test_lambda_needs_a_name():
    with pytest.raises(ValueError, match="lambda needs name"):
        loop.reward_verifier(lambda prompts, completions, **kw: [1.0])
    named = loop.reward_verifier(name="one")(lambda prompts, completions, **kw: [1.0])
    assert named.name == "one"
