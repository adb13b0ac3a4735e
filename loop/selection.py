"""Which training prompts a round uses: fresh tasks, replayed mistakes, retired tasks, hints.

`choose_prompts` is a pure function of the run's history, so the select stage is deterministic
under the run's seed (and tested without a model):

1. **Retire** a task that every first try solved in each of its last `retire_solved_after`
   rounds (learned), or that no attempt (repairs included) solved in `retire_unsolved_after`
   rounds (out of reach for now). Retired tasks are neither replayed nor reused.
2. **Replay** up to `replay_share` of the round's prompts from tasks with open mistakes, most
   frequent mistakes first, ties broken by a seeded shuffle.
3. **Hint** (ReGFT): a replayed task that no attempt solved in `hint_unsolved_after` rounds, and
   whose source gives a reference solution (`metadata["solution"]`), is shown the first
   `hint_share` of that solution's lines; the updaters still learn the answer for the original
   prompt.
4. **Fresh** tasks, in the source's order, fill the rest; when none are left, earlier tasks are
   reused (retired ones last).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from loop.config import SelectConfig
from loop.schema import Message, Task

HINT_INTRO = "Hint: a worked solution begins like this:"


@dataclass
class Selection:
    tasks: list[Task]
    replayed: list[str] = field(default_factory=list)
    hinted: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def retired_tasks(history: dict[str, dict[int, tuple[int, int, bool]]],
                  config: SelectConfig) -> set[str]:
    out = set()
    for task_id, rounds in history.items():
        ordered = [rounds[r] for r in sorted(rounds)]
        k = config.retire_solved_after
        if k and len(ordered) >= k and all(t > 0 and p == t for t, p, _ in ordered[-k:]):
            out.add(task_id)
        m = config.retire_unsolved_after
        if m and len(ordered) >= m and not any(ok for _, _, ok in ordered):
            out.add(task_id)
    return out


def _never_solved_for(rounds: dict[int, tuple[int, int, bool]], n: int) -> bool:
    return len(rounds) >= n and not any(ok for _, _, ok in rounds.values())


def choose_prompts(train: list[Task], history: dict[str, dict[int, tuple[int, int, bool]]],
                   open_mistakes: dict[str, int], config: SelectConfig, seed: int) -> Selection:
    """The round's prompts (see the module docstring); `seed` is the round's select seed."""
    want = config.prompts_per_round
    by_id = {t.id: t for t in train}
    retired = retired_tasks(history, config)
    rng = random.Random(seed)

    candidates = sorted(t for t in open_mistakes if t in by_id and t not in retired)
    rng.shuffle(candidates)
    candidates.sort(key=lambda t: -open_mistakes[t])  # stable: the shuffle breaks ties
    replay = candidates[: int(round(config.replay_share * want))]

    hinted = []
    if config.hint_unsolved_after:
        hinted = [t for t in replay
                  if _never_solved_for(history.get(t, {}), config.hint_unsolved_after)
                  and isinstance(by_id[t].metadata.get("solution"), str)]

    chosen = [by_id[t] for t in replay]
    taken = set(replay)
    fresh = [t for t in train if t.id not in history and t.id not in taken]
    chosen += fresh[: want - len(chosen)]
    taken.update(t.id for t in chosen)
    reused = []
    if len(chosen) < want:
        again = [t for t in train if t.id not in taken and t.id not in retired]
        again += [t for t in train if t.id not in taken and t.id in retired]
        reused = [t.id for t in again[: want - len(chosen)]]
        chosen += [by_id[t] for t in reused]
    return Selection(tasks=chosen, replayed=replay, hinted=hinted,
                     retired=sorted(retired), reused=reused)


def with_hint(task: Task, share: float) -> Task:
    """The task with the first `share` of its reference solution's lines added to the last user
    message (the id stays the task's: attempts and updates belong to the original task)."""
    solution = str(task.metadata.get("solution", ""))
    lines = [line for line in solution.splitlines() if line.strip() and "####" not in line]
    shown = lines[: max(1, int(len(lines) * share))] if lines else []
    if not shown:
        return task
    prompt: list[Message] = [dict(m) for m in task.prompt]
    for message in reversed(prompt):
        if message.get("role") == "user":
            message["content"] = (f"{message['content']}\n\n{HINT_INTRO}\n" + "\n".join(shown))
            break
    return task.model_copy(update={"prompt": prompt})
