"""Template of a task-source plugin (`loop plugin new task NAME`)."""

CLASS_SUFFIX = "Tasks"  # the component class: ${Camel}Tasks, or ${Camel} if it ends so

SUMMARY = "task source `$name`: reverse a random word (\"Reverse the letters of 'kqzva'.\")"

DEPENDENCIES = ["loop"]

USAGE = """\
Run it by name (its answers are checked by loop's built-in `exact_match` verifier unless the
config names others):

```bash
loop run $name --set task.options.length=4
```

or from a task file, `tasks/$name.yaml`:

```yaml
source: $name
options: {length: 5, train_size: 1000, eval_size: 100}
verifiers: [exact_match]
```
"""

MODULE = '''\
"""$dist: a loop plugin.

It registers the $summary.

A task source yields problems: `load(options, seed) -> TaskSet` with disjoint train and eval
(held-out) tasks. The whole contract is in loop's docs/plugins.md ("register_tasks").
"""

import random
import string

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop import Task, TaskSet

SYSTEM_PROMPT = "Answer with only the reversed word."


class ${Camel}Options(BaseModel):
    """The task's `options:`; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    length: int = Field(default=5, ge=1, le=20, description="letters per word")
    train_size: int = Field(default=1000, ge=1, le=100_000, description="training problems")
    eval_size: int = Field(default=100, ge=1, le=10_000, description="held-out problems")


class $Class(loop.TaskSource):
    """Distinct random lowercase words; the answer is the word reversed.

    The words depend only on the seed and `length`: eval takes the first `eval_size`, train the
    next `train_size`, so the splits never overlap and changing `train_size` never changes the
    held-out split.
    """

    name = "$name"
    Options = ${Camel}Options
    default_verifiers = ["exact_match"]  # built into loop; a config's task.verifiers wins

    def load(self, options: ${Camel}Options | None, seed: int) -> TaskSet:
        options = options or ${Camel}Options()
        needed = options.eval_size + options.train_size
        if needed > 26 ** options.length // 2:  # keep rejection sampling fast
            raise ValueError(f"{needed} distinct words of {options.length} letters are too many; "
                             "use longer words or fewer problems")
        rng = random.Random(seed)
        words: dict[str, None] = {}  # insertion-ordered set
        while len(words) < needed:
            words.setdefault("".join(rng.choices(string.ascii_lowercase, k=options.length)))
        ordered = list(words)
        return TaskSet(eval=[self.task(w, "eval") for w in ordered[:options.eval_size]],
                       train=[self.task(w, "train") for w in ordered[options.eval_size:]])

    def task(self, word: str, split: str) -> Task:
        return Task(source=self.name, split=split, reference=word[::-1], metadata={"word": word},
                    prompt=[{"role": "system", "content": SYSTEM_PROMPT},
                            {"role": "user", "content": f"Reverse the letters of '{word}'."}])


@loop.hookimpl
def register_tasks(register):
    register($Class())
'''

TEST = '''\
"""Tests of the `$name` task source."""

import importlib.metadata

import pytest

from loop import build_registry, get_plugin_manager

import $module


def load(seed=0, **options):
    source = $module.$Class()
    return source.load(source.Options(**options), seed)


def test_tasks_ask_for_the_reversed_word():
    tasks = load(train_size=20, eval_size=5)
    assert len(tasks.train) == 20 and len(tasks.eval) == 5
    task = tasks.train[0]
    word = task.metadata["word"]
    assert task.reference == word[::-1] and word in task.prompt[-1]["content"]
    assert {t.split for t in tasks.train} == {"train"} and {t.split for t in tasks.eval} == {"eval"}


def test_splits_are_disjoint_and_the_seed_decides():
    tasks = load(train_size=200, eval_size=50)
    assert not {t.id for t in tasks.train} & {t.id for t in tasks.eval}
    assert load(train_size=200, eval_size=50) == tasks
    assert load(seed=1, train_size=200, eval_size=50) != tasks
    assert load(train_size=10, eval_size=50).eval == tasks.eval  # eval ignores train_size


def test_too_many_problems_is_an_error():
    with pytest.raises(ValueError, match="too many"):
        load(length=1, train_size=20, eval_size=5)


def test_the_plugin_registers_the_task_source_by_name():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register($module, name="$name")
    assert build_registry(pm).plugin_of("tasks", "$name") == "$name"


def test_the_entry_point_is_installed():
    (entry_point,) = importlib.metadata.entry_points(group="loop", name="$name")
    assert entry_point.load() is $module
'''
