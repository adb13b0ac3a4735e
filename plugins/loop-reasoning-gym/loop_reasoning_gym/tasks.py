"""Task sources `rg:<dataset>`: one per reasoning-gym dataset, all of them the same class.

Task.metadata holds, for the verifier and for people reading the store:
- "dataset", "config", "seed", "size", "index": the recipe of the entry: `create_dataset(dataset,
  seed=seed, size=size, **config)[index]` is exactly the entry the task was made from;
- "entry": that entry as plain JSON ({"question", "answer", "metadata"}), tuples as lists;
- "name": "train-<index>" or "eval-<index>", for `loop verify rg:<dataset> eval-3 answer.txt`.
Task.reference is the entry's answer (None for datasets that have many right answers and score
them with a checker: boxnet, graph_color, propositional_logic, rubiks_cube, rush_hour).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

import loop

from loop_reasoning_gym import gym

PREFIX = "rg:"


class ReasoningGymOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(default=500, ge=1, le=1_000_000, description=(
        "training questions generated; fewer are kept when some repeat or are held out (small "
        "datasets repeat themselves)"))
    eval_size: int = Field(default=100, ge=1, le=100_000, description=(
        "held-out questions generated (repeats dropped); they never change with size"))
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "the dataset's own config (its config dataclass's fields, e.g. difficulty ranges), "
        "passed to reasoning_gym.create_dataset; an unknown key is an error listing the valid "
        "ones"))
    system_prompt: str | None = Field(default="default", max_length=10_000, description=(
        "the system message: a name from reasoning_gym.utils.SYSTEM_PROMPTS (default, "
        "DeepSeekZero, simple, direct, chain_of_draft) or your own text; null or empty for "
        "none. reasoning-gym scores the text inside the reply's last <answer>...</answer>, so "
        "a prompt of your own should ask for that tag"))


def split_seeds(seed: int, dataset: str, eval_size: int) -> tuple[int, int]:
    """(eval seed, train seed) for a run seed: a 32-bit hash of (seed, dataset), and the train
    seed right after the eval seed's `eval_size` items, so datasets that draw item i from
    Random(seed + i) never give both splits the same item, and eval never depends on size."""
    digest = hashlib.sha256(f"loop-reasoning-gym:{seed}:{dataset}".encode()).hexdigest()
    eval_seed = int(digest[:8], 16)
    return eval_seed, eval_seed + eval_size


class ReasoningGymTasks(loop.TaskSource):
    """One reasoning-gym dataset as a task source named `rg:<dataset>`.

    Contract of `load(options, seed)`:
    - deterministic: the same options and seed give the same tasks in the same order;
    - eval is `create_dataset(dataset, seed=eval_seed, size=eval_size, **config)` minus repeated
      questions; train is the same with train_seed and size, minus repeats and minus every
      question in eval, so the splits never share a question (seeds: `split_seeds`);
    - the prompt is the system prompt (reasoning-gym's default unless set) and the question;
    - raises ValueError (one line) for a config key the dataset does not have (listing the valid
      ones), a config reasoning-gym rejects, or no training question left.
    Importing reasoning-gym waits for the first `load`: registering 106 sources costs nothing.
    """

    default_verifiers: ClassVar[list[str]] = ["reasoning_gym"]
    Options = ReasoningGymOptions

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.name = PREFIX + dataset

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(ReasoningGymOptions, options)
        gym.check_config(self.dataset, opts.config)
        system = gym.system_prompt(opts.system_prompt)
        eval_seed, train_seed = split_seeds(seed, self.dataset, opts.eval_size)
        held_out = self._split(opts, eval_seed, opts.eval_size, "eval", system, exclude=set())
        questions = {task.metadata["entry"]["question"] for task in held_out}
        train = self._split(opts, train_seed, opts.size, "train", system, exclude=questions)
        if not train:
            raise ValueError(f"every generated training question of {self.dataset!r} is also held "
                             "out: this config has too few distinct questions for these sizes")
        return loop.TaskSet(train=train, eval=held_out)

    def _split(self, opts: ReasoningGymOptions, seed: int, size: int, split: str,
               system: str | None, exclude: set[str]) -> list[loop.Task]:
        recipe = gym.Recipe.of(self.dataset, opts.config, seed, size)
        entries = gym.generate(recipe)
        tasks, seen = [], set(exclude)
        for index, entry in enumerate(entries):
            question = entry["question"]
            if question in seen:
                continue
            seen.add(question)
            tasks.append(self._task(opts, recipe, index, entry, split, system))
        return tasks

    def _task(self, opts: ReasoningGymOptions, recipe: gym.Recipe, index: int,
              entry: dict[str, Any], split: str, system: str | None) -> loop.Task:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": entry["question"]})
        answer = entry.get("answer")
        metadata = {"dataset": self.dataset, "config": opts.config, "seed": recipe.seed,
                    "size": recipe.size, "index": index, "name": f"{split}-{index}",
                    "entry": gym.json_safe({"question": entry["question"], "answer": answer,
                                            "metadata": entry.get("metadata", {})})}
        return loop.Task(source=self.name, split=split, prompt=messages,
                         reference=None if answer is None else str(answer), metadata=metadata)
