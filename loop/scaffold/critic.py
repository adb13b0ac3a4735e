"""Template of a critic plugin (`loop plugin new critic NAME`)."""

CLASS_SUFFIX = "Critic"  # the component class: ${Camel}Critic, or ${Camel} if it ends so

SUMMARY = "critic `$name`: turns a failed verdict into advice for the next try"

DEPENDENCIES = ["loop"]

USAGE = """\
Critics speak in the refine stage, which runs when `refine.depth` > 0: the model reads the
critique and answers again.

```bash
loop run arithmetic --set refine.depth=1 --set 'task.critics=[$name]'
```

or in a task file, with its options:

```yaml
critics: [{name: $name, options: {advice: "Recheck the carries."}}]
```
"""

MODULE = '''\
"""$dist: a loop plugin.

It registers the $summary.

A critic explains a failure: `critique(task, attempt, verdicts) -> Critique | None`. It sees the
task without its reference and the verdicts with the reference masked, unless the task sets
`hints: true`. The whole contract is in loop's docs/plugins.md ("register_critics").
"""

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop import Attempt, Critique, Task, Verdict


class ${Camel}Options(BaseModel):
    """The `options:` of `critics: [{name: $name, options: {...}}]`.

    Unknown keys are errors (extra="forbid"), so a typo in a config stops the run at once.
    """

    model_config = ConfigDict(extra="forbid")

    advice: str = Field(default="Work through the problem step by step before you answer.",
                        min_length=1, description="what the model is told after the feedback")


class $Class(loop.Critic):
    """Repeats what the first failing verifier said, then gives the advice from the options.

    Returns None (nothing to say) when no verifier failed the answer as a model mistake. The
    critique's `kind` is the verifier's mistake, so the mistake log groups failures by it.
    """

    name = "$name"
    Options = ${Camel}Options

    def __init__(self) -> None:
        self.options = ${Camel}Options()  # a run gives its copy the options from the config

    def critique(self, task: Task, attempt: Attempt,
                 verdicts: dict[str, Verdict]) -> Critique | None:
        failed = [(name, v) for name, v in verdicts.items()
                  if not v.passed and v.error_kind in (None, "model")]
        if not failed:
            return None
        verifier, verdict = failed[0]
        said = f"The checker ({verifier}) said: {verdict.feedback.strip()}\\n" \\
            if verdict.feedback.strip() else ""
        return Critique(kind=verdict.mistake or "wrong_answer", text=said + self.options.advice)


@loop.hookimpl
def register_critics(register):
    register($Class())
'''

TEST = '''\
"""Tests of the `$name` critic."""

import importlib.metadata

from loop import Attempt, Task, Verdict, build_registry, get_plugin_manager

import $module

TASK = Task(source="test", split="train", prompt=[{"role": "user", "content": "What is 2+2?"}])
ATTEMPT = Attempt(id="a1", run_id="r", round_index=1, task_id=TASK.id, purpose="train",
                  sample_index=0, messages=[], completion="5")


def test_a_failed_answer_gets_the_feedback_and_the_advice():
    verdicts = {"math": Verdict(passed=False, error_kind="model", mistake="off_by_one",
                                feedback="expected [hidden], got '5'")}
    critique = $module.$Class().critique(TASK, ATTEMPT, verdicts)
    assert critique.kind == "off_by_one"
    assert critique.text.startswith("The checker (math) said: expected [hidden], got '5'\\n")
    assert critique.text.endswith("step by step before you answer.")


def test_the_advice_comes_from_the_options():
    critic = $module.$Class()
    critic.options = critic.Options(advice="Recheck the carries.")
    critique = critic.critique(TASK, ATTEMPT, {"math": Verdict(passed=False)})
    assert critique.kind == "wrong_answer" and critique.text == "Recheck the carries."


def test_nothing_to_say_about_a_pass_or_a_broken_check():
    critic = $module.$Class()
    assert critic.critique(TASK, ATTEMPT, {"math": Verdict(passed=True, score=1.0)}) is None
    assert critic.critique(TASK, ATTEMPT, {"math": Verdict(passed=False, error_kind="infra")}) \\
        is None


def test_the_plugin_registers_the_critic_by_name():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register($module, name="$name")
    assert build_registry(pm).plugin_of("critics", "$name") == "$name"


def test_the_entry_point_is_installed():
    (entry_point,) = importlib.metadata.entry_points(group="loop", name="$name")
    assert entry_point.load() is $module
'''
