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

With `select.curriculum` on, each train task's solve history decides where the rest of the
round's prompts go (replay, when configured, still comes first and is left as it is). A task is
judged by the latest round it was tried in (its first tries there: t tries, p passed):

- **Skip** a task with p == t (every sample solved it: little left to learn). It is neither taken
  as a frontier task nor reused while any other task is left; as a last resort it is reused
  before retired tasks.
- **Frontier**: up to `curriculum.share` of the round's prompts go to tasks with 0 < p < t
  (solved sometimes), those whose pass rate is nearest 1/2 first (where a group's rewards vary
  most), ties broken by the seeded shuffle. Fresh tasks fill the rest, then reuse as above with
  the remaining frontier tasks first.
- **Groups** (dynamic sampling, as DAPO's): for updaters that learn from reward differences
  within a prompt's group of n samples and drop all-equal groups (grpo, nft; redi learns from
  those too), a task with p == 0 is skipped as well: its group would most likely be all equal
  again and cost samples for nothing. DAPO over-samples until the batch holds enough groups with
  mixed rewards; here the round's size is decided before sampling, from stored history:
  `curriculum.extra_share` > 0 adds prompts in proportion to the share q of all-equal groups in
  the latest round (prompts_per_round * q / (1 - q), at most extra_share * prompts_per_round),
  so that about prompts_per_round groups are expected to have mixed results.

History is pass/fail of the first tries (what the binary reward gives); only the train split's
tasks are ever chosen, and history of any other task is ignored.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from loop.config import SelectConfig
from loop.schema import SOLUTION_KEY, Message, Task

HINT_INTRO = "Hint: a worked solution begins like this:"


@dataclass
class Selection:
    tasks: list[Task]
    replayed: list[str] = field(default_factory=list)
    hinted: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    frontier: list[str] = field(default_factory=list)  # taken for being solved sometimes
    skipped: list[str] = field(default_factory=list)  # left out by the curriculum, sorted
    extra: int = 0  # prompts beyond prompts_per_round (dynamic sampling)


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


def last_tried(rounds: dict[int, tuple[int, int, bool]]) -> tuple[int, int] | None:
    """(first tries, first tries passed) in the latest round the task was tried in; None if it
    never had a first try."""
    for r in sorted(rounds, reverse=True):
        tries, ok, _ = rounds[r]
        if tries:
            return tries, ok
    return None


def drops_equal_groups(setting: str, updater: object) -> bool:
    """Whether the curriculum's group rules apply: `setting` is curriculum.groups; `auto` asks
    the update method, which says so with a true `skip_equal` attribute (grpo and nft do)."""
    if setting == "auto":
        return bool(getattr(updater, "skip_equal", False))
    return setting == "on"


def equal_group_share(history: dict[str, dict[int, tuple[int, int, bool]]],
                      task_ids: set[str]) -> float | None:
    """The share of the latest round's groups (tasks of `task_ids` with at least 2 first tries
    there) whose first tries all passed or all failed; None without such a group."""
    latest = max((r for t in history if t in task_ids for r in history[t]), default=None)
    groups = [history[t][latest][:2] for t in history
              if t in task_ids and history[t].get(latest, (0, 0, False))[0] >= 2]
    if not groups:
        return None
    return sum(ok in (0, tries) for tries, ok in groups) / len(groups)


def extra_prompts(history: dict[str, dict[int, tuple[int, int, bool]]], task_ids: set[str],
                  config: SelectConfig) -> int:
    """Prompts to draw beyond prompts_per_round so that about prompts_per_round groups have
    mixed results, if the latest round's share of all-equal groups holds; at most
    `curriculum.extra_share` of prompts_per_round."""
    want = config.prompts_per_round
    cap = int(config.curriculum.extra_share * want)
    q = equal_group_share(history, task_ids) if cap else None
    if q is None:
        return 0
    return cap if q >= 1 else min(cap, math.ceil(want * q / (1 - q) - 1e-9))


def choose_prompts(train: list[Task], history: dict[str, dict[int, tuple[int, int, bool]]],
                   open_mistakes: dict[str, int], config: SelectConfig, seed: int,
                   groups: bool = False) -> Selection:
    """The round's prompts (see the module docstring); `seed` is the round's select seed,
    `groups` whether the curriculum's group rules apply (drops_equal_groups). Only tasks of
    `train` are chosen; the same arguments always give the same Selection."""
    by_id = {t.id: t for t in train}
    retired = retired_tasks(history, config)
    rng = random.Random(seed)
    curriculum = config.curriculum
    groups = groups and curriculum.enabled
    extra = extra_prompts(history, set(by_id), config) if groups else 0
    want = config.prompts_per_round + extra

    candidates = sorted(t for t in open_mistakes if t in by_id and t not in retired)
    rng.shuffle(candidates)
    candidates.sort(key=lambda t: -open_mistakes[t])  # stable: the shuffle breaks ties
    replay = candidates[: int(round(config.replay_share * want))]

    hinted = []
    if config.hint_unsolved_after:
        hinted = [t for t in replay
                  if _never_solved_for(history.get(t, {}), config.hint_unsolved_after)
                  and isinstance(by_id[t].metadata.get(SOLUTION_KEY), str)]

    chosen = [by_id[t] for t in replay]
    taken = set(replay)
    skipped: set[str] = set()
    ranked: list[str] = []  # frontier tasks, the most telling first
    frontier: list[str] = []
    if curriculum.enabled:
        seen = {t: last_tried(history[t]) for t in sorted(history)
                if t in by_id and t not in retired}
        seen = {t: s for t, s in seen.items() if s is not None}
        skipped = {t for t, (tries, ok) in seen.items() if ok == tries or (groups and ok == 0)}
        ranked = [t for t, (tries, ok) in seen.items() if 0 < ok < tries and t not in taken]
        # its own generator: the frontier's ties must not hang on how many replay candidates
        # the shuffle above happened to consume
        random.Random(f"curriculum-{seed}").shuffle(ranked)
        ranked.sort(key=lambda t: abs(seen[t][1] / seen[t][0] - 0.5))  # stable: shuffled ties
        frontier = ranked[: max(0, min(int(round(curriculum.share * want)), want - len(chosen)))]
        chosen += [by_id[t] for t in frontier]
        taken.update(frontier)
    fresh = [t for t in train if t.id not in history and t.id not in taken]
    chosen += fresh[: want - len(chosen)]
    taken.update(t.id for t in chosen)
    reused = []
    if len(chosen) < want:
        again = [t for t in ranked if t not in taken]
        first = set(again)
        again += [t.id for t in train
                  if t.id not in taken and t.id not in retired and t.id not in skipped
                  and t.id not in first]
        again += [t.id for t in train if t.id not in taken and t.id in skipped]
        again += [t.id for t in train if t.id not in taken and t.id in retired]
        reused = again[: want - len(chosen)]
        chosen += [by_id[t] for t in reused]
    return Selection(tasks=chosen, replayed=replay, hinted=hinted,
                     retired=sorted(retired), reused=reused, frontier=frontier,
                     skipped=sorted(skipped - set(reused)), extra=extra)


def with_hint(task: Task, share: float) -> Task:
    """The task with the first `share` of its reference solution's lines added to the last user
    message (the id stays the task's: attempts and updates belong to the original task)."""
    solution = str(task.metadata.get(SOLUTION_KEY, ""))
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
