"""The select stage's choice: replayed mistakes, retired tasks, ReGFT hints, fresh tasks; the
same history and seed always give the same prompts."""

from __future__ import annotations

from loop.config import SelectConfig
from loop.schema import Task
from loop.selection import HINT_INTRO, choose_prompts, retired_tasks, with_hint

TRAIN = [Task(source="t", split="train", prompt=[{"role": "user", "content": f"q{i}"}],
              reference=str(i), metadata={"solution": f"step one of {i}\nstep two\nstep three\n"
                                                      f"step four\n#### {i}"} if i < 4 else {})
         for i in range(12)]
IDS = [t.id for t in TRAIN]


def _config(**kw):
    return SelectConfig(prompts_per_round=4, **kw)


# task -> {round: (first tries, first tries passed, any attempt passed)}
HISTORY = {
    IDS[0]: {1: (4, 4, True), 2: (4, 4, True)},      # learned: retired after 2 solved rounds
    IDS[1]: {1: (4, 0, False), 2: (4, 0, False), 3: (4, 0, False)},  # never solved in 3 rounds
    IDS[2]: {1: (4, 0, False), 2: (4, 0, False)},    # unsolved twice: hint candidate
    IDS[3]: {1: (4, 1, True)},
    IDS[4]: {1: (4, 0, True)},                       # only a repair passed
}
OPEN = {IDS[1]: 9, IDS[2]: 5, IDS[3]: 2, IDS[4]: 2}


def test_retirement_rules():
    assert retired_tasks(HISTORY, _config()) == {IDS[0], IDS[1]}
    assert retired_tasks(HISTORY, _config(retire_solved_after=0, retire_unsolved_after=0)) == set()
    assert retired_tasks(HISTORY, _config(retire_unsolved_after=2)) == {IDS[0], IDS[1], IDS[2]}


def test_replay_takes_its_share_from_open_mistakes_most_frequent_first():
    choice = choose_prompts(TRAIN, HISTORY, OPEN, _config(replay_share=0.5), seed=1)
    assert choice.replayed[0] == IDS[2]  # 9 occurrences but retired (IDS[1]) is skipped
    assert len(choice.replayed) == 2 and choice.replayed[1] in (IDS[3], IDS[4])
    # the rest are fresh tasks in source order, never a used one
    assert [t.id for t in choice.tasks] == choice.replayed + IDS[5:7]
    assert choice.retired == sorted([IDS[0], IDS[1]]) and choice.hinted == []


def test_replay_is_deterministic_under_a_seed_and_ties_depend_on_it():
    config = _config(replay_share=0.25)
    picks = {s: choose_prompts(TRAIN, HISTORY, {IDS[3]: 2, IDS[4]: 2}, config, s).replayed[0]
             for s in range(20)}
    assert set(picks.values()) == {IDS[3], IDS[4]}  # the tie is broken by the seed
    for s, pick in picks.items():
        assert choose_prompts(TRAIN, HISTORY, {IDS[3]: 2, IDS[4]: 2}, config, s).replayed[0] == pick


def test_no_replay_by_default_keeps_fresh_tasks_in_order():
    choice = choose_prompts(TRAIN, HISTORY, OPEN, _config(), seed=0)
    assert [t.id for t in choice.tasks] == IDS[5:9] and choice.replayed == []


def test_reuse_when_fresh_tasks_run_out_retired_last():
    history = {i: {1: (4, 4, True), 2: (4, 4, True)} for i in IDS[:10]}
    history[IDS[5]] = {1: (4, 1, True)}
    choice = choose_prompts(TRAIN, history, {}, _config(), seed=0)
    assert [t.id for t in choice.tasks] == [IDS[10], IDS[11], IDS[5], IDS[0]]
    assert choice.reused == [IDS[5], IDS[0]]


def test_hints_for_long_unsolved_replayed_tasks_with_a_solution():
    config = _config(replay_share=1.0, hint_unsolved_after=2)
    choice = choose_prompts(TRAIN, HISTORY, OPEN, config, seed=0)
    assert choice.hinted == [IDS[2]]  # IDS[1] is retired; IDS[3] and IDS[4] were solved
    hinted = with_hint(TRAIN[2], 0.5)
    assert hinted.id == TRAIN[2].id and hinted.reference == "2"
    assert hinted.prompt[-1]["content"] == f"q2\n\n{HINT_INTRO}\nstep one of 2\nstep two"
    assert TRAIN[2].prompt[-1]["content"] == "q2"  # the task itself is unchanged
    assert with_hint(TRAIN[7], 0.5) is TRAIN[7]  # no solution: no hint
