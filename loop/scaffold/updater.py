"""Template of an updater plugin (`loop plugin new updater NAME`)."""

CLASS_SUFFIX = "Updater"  # the component class: ${Camel}Updater, or ${Camel} if it ends so

SUMMARY = "updater `$name`: fine-tunes on answers whose reward reaches a threshold"

# It trains with TRL through loop-trl's shared helper (model loading, LoRA, checks, saving).
DEPENDENCIES = ["loop", "loop-trl"]

USAGE = """\
Select it as the run's update method; its options go under `train.options`:

```bash
loop run arithmetic --method $name --set train.options.min_reward=0.5
```

The threshold applies to the first reward of `task.rewards` (`binary` by default: 1.0 for a
verified answer, so the default `min_reward: 1.0` trains on verified answers only).
"""

MODULE = '''\
"""$dist: a loop plugin.

It registers the $summary.

An updater turns a round into a new model: `update(context) -> UpdateResult`. It chooses its
training data from `context.samples` and writes the new adapter (or model) into
`context.output_dir`; loop publishes that folder atomically. The whole contract is in loop's
docs/plugins.md ("register_updaters").
"""

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop import EmptyDataset, UpdateContext


class ${Camel}Options(BaseModel):
    """The `train.options` of a run with `train.method: $name`; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_reward: float = Field(default=1.0, description="train on answers whose reward is at "
                              "least this (the first configured reward)")


class $Class(loop.Updater):
    """Supervised fine-tuning (TRL's SFTTrainer, LoRA unless `train.lora.enabled: false`) on the
    round's answers whose reward is at least `min_reward`; answers whose reward is None (the
    check itself failed) are left out."""

    name = "$name"
    Options = ${Camel}Options

    def build_dataset(self, context: UpdateContext) -> list[dict]:
        """TRL's conversational prompt-completion rows, one per kept answer (also what
        `loop export RUN --what $name` writes; it must not load a model or write anything)."""
        options = context.options or ${Camel}Options()
        return [
            {"prompt": sample.task.prompt,
             "completion": [{"role": "assistant", "content": sample.attempt.completion.strip()}]}
            for sample in context.samples
            if sample.reward is not None and sample.reward >= options.min_reward
        ]

    def update(self, context: UpdateContext) -> loop.UpdateResult:
        rows = self.build_dataset(context)
        if not rows:  # the round keeps its model, with a warning; the run goes on
            raise EmptyDataset(f"$name: none of the round's {len(context.samples)} answers "
                               "has a reward of at least min_reward")
        from trl import SFTConfig, SFTTrainer  # heavy: imported only when training

        from loop_trl.training import train_with_trl

        metrics = train_with_trl(context, rows, trainer_cls=SFTTrainer, config_cls=SFTConfig,
                                 config_kwargs={"completion_only_loss": True})
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics=metrics)


@loop.hookimpl
def register_updaters(register):
    register($Class())
'''

TEST = '''\
"""Tests of the `$name` updater's data choice (training itself is loop-trl's, tested there)."""

import importlib.metadata
from types import SimpleNamespace

import pytest

from loop import Attempt, EmptyDataset, Sample, Task, build_registry, get_plugin_manager

import $module


def sample(answer, reward):
    task = Task(source="test", split="train", reference="4",
                prompt=[{"role": "user", "content": "What is 2+2?"}])
    attempt = Attempt(id=f"a-{answer}-{reward}", run_id="r", round_index=1, task_id=task.id,
                      purpose="train", sample_index=0, messages=[], completion=answer)
    return Sample(task=task, attempt=attempt, passed=reward == 1.0, score=reward or 0.0,
                  reward=reward, rewards={"binary": reward})


def context(samples, **options):
    updater = $module.$Class()
    return SimpleNamespace(samples=samples, options=updater.Options(**options))


def test_keeps_answers_whose_reward_reaches_the_threshold():
    samples = [sample("4 ", 1.0), sample("5", 0.0), sample("four", 0.5), sample("?", None)]
    rows = $module.$Class().build_dataset(context(samples))
    assert rows == [{"prompt": samples[0].task.prompt,
                     "completion": [{"role": "assistant", "content": "4"}]}]
    rows = $module.$Class().build_dataset(context(samples, min_reward=0.5))
    assert [r["completion"][0]["content"] for r in rows] == ["4", "four"]


def test_nothing_to_train_on_keeps_the_model():
    with pytest.raises(EmptyDataset, match="none of the round's 1 answers"):
        $module.$Class().update(context([sample("5", 0.0)]))


def test_the_plugin_registers_the_updater_by_name():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register($module, name="$name")
    assert build_registry(pm).plugin_of("updaters", "$name") == "$name"


def test_the_entry_point_is_installed():
    (entry_point,) = importlib.metadata.entry_points(group="loop", name="$name")
    assert entry_point.load() is $module
'''
