"""Template of a verifier plugin (`loop plugin new verifier NAME`)."""

CLASS_SUFFIX = "Verifier"  # the component class: ${Camel}Verifier, or ${Camel} if it ends so

SUMMARY = "verifier `$name`: passes an answer equal to the task's reference"

DEPENDENCIES = ["loop"]

USAGE = """\
Select it by name, alone or beside the task's own verifiers (every verifier must pass an answer):

```bash
loop run arithmetic --set 'task.verifiers=[$name]'
loop verify arithmetic ITEM_ID answer.txt --set 'task.verifiers=[$name]'   # try one answer
```

or in a task file, with its options:

```yaml
verifiers: [{name: $name, options: {ignore_case: true}}]
```
"""

MODULE = '''\
"""$dist: a loop plugin.

It registers the $summary.

A verifier judges one answer: `verify(task, attempt) -> Verdict`. Change `verify` to judge answers
your way; the whole contract is in loop's docs/plugins.md ("register_verifiers").
"""

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop import Attempt, Task, Verdict


class ${Camel}Options(BaseModel):
    """The `options:` of `verifiers: [{name: $name, options: {...}}]`.

    Unknown keys are errors (extra="forbid"), so a typo in a config stops the run at once.
    """

    model_config = ConfigDict(extra="forbid")

    ignore_case: bool = Field(default=False, description="compare without regard to case")


class $Class(loop.Verifier):
    """Passes an answer that equals the task's reference once both are stripped of surrounding
    whitespace (and case-folded with `ignore_case`).

    Never raises for a bad answer: a wrong one is `error_kind="model"`. A check that cannot be
    made (here: a task without a reference) is `error_kind="infra"`, which loop never turns into
    a reward of 0 and checks again when the run is resumed.
    """

    name = "$name"
    Options = ${Camel}Options

    def __init__(self) -> None:
        self.options = ${Camel}Options()  # a run gives its copy the options from the config

    def verify(self, task: Task, attempt: Attempt) -> Verdict:
        if task.reference is None:
            return Verdict(passed=False, error_kind="infra",
                           feedback=f"task {task.id} has no reference to compare with")
        answer, reference = attempt.completion.strip(), task.reference.strip()
        if self.options.ignore_case:
            answer, reference = answer.casefold(), reference.casefold()
        if answer == reference:
            return Verdict(passed=True, score=1.0)
        return Verdict(passed=False, score=0.0, error_kind="model",
                       mistake="format" if not answer else "wrong_answer",
                       feedback=f"expected {task.reference.strip()!r}, "
                                f"got {attempt.completion.strip()[:200]!r}")


@loop.hookimpl
def register_verifiers(register):
    register($Class())
'''

TEST = '''\
"""Tests of the `$name` verifier."""

import importlib.metadata

import pytest

from loop import Attempt, Task, build_registry, get_plugin_manager

import $module


def judge(reference, answer, **options):
    verifier = $module.$Class()
    verifier.options = verifier.Options(**options)
    task = Task(source="test", split="train", reference=reference,
                prompt=[{"role": "user", "content": "What is 2+2?"}])
    attempt = Attempt(id="a1", run_id="r", round_index=1, task_id=task.id, purpose="train",
                      sample_index=0, messages=[], completion=answer)
    return verifier.verify(task, attempt)


def test_the_right_answer_passes():
    verdict = judge("4", " 4\\n")
    assert verdict.passed and verdict.score == 1.0 and verdict.error_kind is None


def test_a_wrong_answer_is_the_models_mistake():
    verdict = judge("4", "5")
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.error_kind == "model" and verdict.mistake == "wrong_answer"
    assert verdict.feedback == "expected '4', got '5'"
    assert judge("4", "  ").mistake == "format"


def test_ignore_case_option():
    assert not judge("Paris", "paris").passed
    assert judge("Paris", "paris", ignore_case=True).passed


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError):
        $module.$Class.Options.model_validate({"ignore_cases": True})


def test_no_reference_is_an_infra_verdict_not_a_wrong_answer():
    verdict = judge(None, "4")
    assert not verdict.passed and verdict.error_kind == "infra"


def test_the_plugin_registers_the_verifier_by_name():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register($module, name="$name")
    registry = build_registry(pm)
    assert registry.plugin_of("verifiers", "$name") == "$name"


def test_the_entry_point_is_installed():
    (entry_point,) = importlib.metadata.entry_points(group="loop", name="$name")
    assert entry_point.load() is $module
'''
