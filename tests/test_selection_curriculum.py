"""The select stage's curriculum (loop.selection): skip tasks every first try solved, take a share
of the round from tasks solved sometimes (nearest half solved first), and for group updaters skip
never-solved tasks too and size the round from the latest round's all-equal groups; all of it a
pure function of the history, the config and the seed, blind to held-out tasks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loop.config import ConfigError, SelectConfig, build_config
from loop.schema import Task
from loop.selection import (choose_prompts, drops_equal_groups, equal_group_share, extra_prompts,
                            last_tried)

TRAIN = [Task(source="t", split="train", prompt=[{"role": "user", "content": f"q{i}"}],
              reference=str(i)) for i in range(12)]
IDS = [t.id for t in TRAIN]
HELD_OUT = Task(source="t", split="eval", prompt=[{"role": "user", "content": "held out"}],
                reference="0").id

# task -> {round: (first tries, first tries passed, any attempt passed)}; judged by the latest
# round a task was tried in
HISTORY = {
    IDS[0]: {1: (4, 4, True)},                    # solved by every sample: skipped
    IDS[1]: {1: (4, 2, True)},                    # half solved: the first frontier task
    IDS[2]: {1: (4, 1, True)},                    # frontier, a quarter
    IDS[3]: {1: (4, 3, True)},                    # frontier, three quarters
    IDS[4]: {1: (4, 0, False)},                   # never solved: skipped for group updaters
    IDS[5]: {1: (4, 4, True), 2: (4, 1, True)},   # solved sometimes when last seen: frontier
    IDS[6]: {1: (4, 2, True), 2: (4, 4, True)},   # solved by every sample when last seen: skipped
    HELD_OUT: {2: (4, 2, True)},                  # never a train task: never chosen
}
FRONTIER = {IDS[1], IDS[2], IDS[3], IDS[5]}


def _config(prompts=4, **curriculum):
    return SelectConfig(prompts_per_round=prompts, curriculum={"enabled": True, **curriculum})


def _ids(choice):
    return [t.id for t in choice.tasks]


def test_off_is_todays_selection():
    for prompts in (4, 10):
        on = choose_prompts(TRAIN, HISTORY, {}, SelectConfig(prompts_per_round=prompts,
                                                             curriculum={"share": 1.0}), 3)
        plain = choose_prompts(TRAIN, HISTORY, {}, SelectConfig(prompts_per_round=prompts), 3)
        assert _ids(on) == _ids(plain) and on.frontier == [] and on.skipped == []
    # fresh tasks in source order, then reuse in source order, the solved IDS[0] first
    assert _ids(plain) == IDS[7:12] + IDS[:5]


def test_last_tried_is_the_latest_round_with_first_tries():
    assert last_tried(HISTORY[IDS[5]]) == (4, 1)
    assert last_tried({1: (4, 2, True), 2: (0, 0, True)}) == (4, 2)
    assert last_tried({}) is None


def test_share_of_the_round_from_tasks_solved_sometimes_nearest_half_first():
    choice = choose_prompts(TRAIN, HISTORY, {}, _config(share=0.5), seed=0)
    assert choice.frontier[0] == IDS[1] and len(choice.frontier) == 2
    assert choice.frontier[1] in FRONTIER - {IDS[1]}
    assert _ids(choice) == choice.frontier + IDS[7:9]  # the rest fresh, in source order
    everything = choose_prompts(TRAIN, HISTORY, {}, _config(share=1.0), seed=0)
    assert set(everything.frontier) == FRONTIER and _ids(everything) == everything.frontier
    assert everything.frontier[0] == IDS[1]
    none = choose_prompts(TRAIN, HISTORY, {}, _config(share=0.0), seed=0)
    assert _ids(none) == IDS[7:11] and none.frontier == []


def test_deterministic_under_the_seed_and_ties_depend_on_it():
    config = _config(share=0.5)
    picks = {s: _ids(choose_prompts(TRAIN, HISTORY, {}, config, s)) for s in range(20)}
    assert {p[1] for p in picks.values()} == FRONTIER - {IDS[1]}  # the ties: the seed decides
    for s, pick in picks.items():
        assert _ids(choose_prompts(TRAIN, dict(reversed(HISTORY.items())), {}, config, s)) == pick


def test_solved_tasks_are_skipped_while_anything_else_is_left():
    choice = choose_prompts(TRAIN, HISTORY, {}, _config(prompts=10, share=0.0), seed=0)
    assert IDS[0] not in _ids(choice) and IDS[6] not in _ids(choice)
    assert choice.skipped == sorted([IDS[0], IDS[6]])
    # fresh first, then the frontier tasks (most telling first), then the never-solved task
    assert _ids(choice)[:5] == IDS[7:12] and set(_ids(choice)[5:9]) == FRONTIER
    assert _ids(choice)[5] == IDS[1] and _ids(choice)[9] == IDS[4]
    # only as a last resort, before retired tasks
    last = choose_prompts(TRAIN, HISTORY, {}, _config(prompts=11, share=0.0), seed=0)
    assert _ids(last)[-1] == IDS[0] and last.skipped == [IDS[6]]


def test_group_updaters_skip_never_solved_tasks_too():
    choice = choose_prompts(TRAIN, HISTORY, {}, _config(prompts=9, share=0.0), seed=0, groups=True)
    assert set(_ids(choice)) == set(IDS[7:12]) | FRONTIER
    assert choice.skipped == sorted([IDS[0], IDS[4], IDS[6]])
    # without the group rule the never-solved task is an ordinary candidate
    plain = choose_prompts(TRAIN, HISTORY, {}, _config(prompts=10, share=0.0), seed=0)
    assert IDS[4] in _ids(plain)
    # groups only ever apply with the curriculum on
    off = choose_prompts(TRAIN, HISTORY, {}, SelectConfig(prompts_per_round=10), 0, groups=True)
    assert _ids(off) == IDS[7:12] + IDS[:5]


def test_held_out_tasks_are_never_chosen_nor_counted():
    for groups in (False, True):
        choice = choose_prompts(TRAIN, HISTORY, {}, _config(prompts=12, share=1.0), 0, groups)
        assert HELD_OUT not in _ids(choice) and HELD_OUT not in choice.skipped
        assert sorted(_ids(choice)) == sorted(IDS)  # the whole train split, nothing else
    train_ids = set(IDS)
    # round 2's groups: IDS[5] mixed, IDS[6] all solved (the held-out task's is not counted)
    assert equal_group_share(HISTORY, train_ids) == 0.5
    assert equal_group_share({HELD_OUT: {1: (4, 2, True)}}, train_ids) is None


def test_replay_comes_first_and_the_frontier_fills_after_it():
    config = SelectConfig(prompts_per_round=4, replay_share=0.25,
                          curriculum={"enabled": True, "share": 0.5})
    choice = choose_prompts(TRAIN, HISTORY, {IDS[1]: 3}, config, seed=0)
    assert choice.replayed == [IDS[1]] and _ids(choice)[0] == IDS[1]
    assert len(choice.frontier) == 2 and IDS[1] not in choice.frontier
    assert _ids(choice) == [IDS[1], *choice.frontier, IDS[7]]


def test_extra_prompts_follow_the_latest_rounds_equal_groups_up_to_the_cap():
    history = {IDS[i]: {1: (4, p, p > 0)} for i, p in enumerate([0, 4, 4, 2])}  # q = 3/4
    train_ids = set(IDS)
    assert extra_prompts(history, train_ids, _config(prompts=8, extra_share=1.0)) == 8
    assert extra_prompts(history, train_ids, _config(prompts=8, extra_share=0.5)) == 4
    assert extra_prompts(history, train_ids, _config(prompts=8)) == 0  # the default: no extra
    third = {**history, IDS[4]: {1: (4, 1, True)}, IDS[5]: {1: (4, 3, True)}}  # q = 1/2
    assert extra_prompts(third, train_ids, _config(prompts=8, extra_share=1.0)) == 8
    quarter = {IDS[i]: {1: (4, p, p > 0)} for i, p in enumerate([0, 1, 2, 3])}  # q = 1/4
    assert extra_prompts(quarter, train_ids, _config(prompts=9, extra_share=1.0)) == 3
    assert extra_prompts({}, train_ids, _config(prompts=8, extra_share=1.0)) == 0  # round 1
    # one sample per prompt makes no groups
    single = {IDS[0]: {1: (1, 1, True)}}
    assert extra_prompts(single, train_ids, _config(prompts=8, extra_share=1.0)) == 0

    config = _config(prompts=4, share=0.5, extra_share=0.5)
    grown = choose_prompts(TRAIN, HISTORY, {}, config, seed=0, groups=True)
    assert grown.extra == 2 and len(grown.tasks) == 6 and len(grown.frontier) == 3
    assert choose_prompts(TRAIN, HISTORY, {}, config, seed=0).extra == 0  # not a group updater


def test_which_updaters_get_the_group_rules():
    assert drops_equal_groups("auto", SimpleNamespace(skip_equal=True))  # grpo, nft
    assert not drops_equal_groups("auto", SimpleNamespace(skip_equal=False))  # redi
    assert not drops_equal_groups("auto", object())  # sft, dpo, kto, ...
    assert drops_equal_groups("on", object())
    assert not drops_equal_groups("off", SimpleNamespace(skip_equal=True))


def test_config_switch_and_sub_keys():
    assert not SelectConfig().curriculum.enabled  # today's selection stays the default
    assert SelectConfig(curriculum="on").curriculum.enabled
    assert not SelectConfig(curriculum="off").curriculum.enabled
    config = build_config("arithmetic", sets=["select.curriculum=on"], environ={})
    assert config.select.curriculum.enabled and config.select.curriculum.share == 0.5
    config = build_config("arithmetic", environ={}, sets=[
        "select.curriculum.enabled=true", "select.curriculum.share=0.75",
        "select.curriculum.groups=on", "select.curriculum.extra_share=0.25"])
    curriculum = config.select.curriculum
    assert (curriculum.enabled, curriculum.share, curriculum.groups, curriculum.extra_share) == (
        True, 0.75, "on", 0.25)
    with pytest.raises(ConfigError, match="select.curriculum.share"):
        build_config("arithmetic", sets=["select.curriculum.share=1.5"], environ={})
    with pytest.raises(ConfigError, match="select.curriculum.groups"):
        build_config("arithmetic", sets=["select.curriculum.groups=sometimes"], environ={})
