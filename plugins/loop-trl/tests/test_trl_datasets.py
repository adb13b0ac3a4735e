"""Each update method's dataset, built from a hand-made store (the rows the engine would hand an
updater): pairs, unpaired labels, groups, and the groups left out with their reasons."""

from __future__ import annotations

import pytest

from loop import SOLUTION_KEY, Attempt, Task, Verdict
from loop.updates import load_samples
from loop_trl.datasets import (build_groups, kto_balanced_rows, kto_rows, preference_pairs,
                               sft_rows)

# task -> answers as (completion, passed, reward); None reward = the checker failed (infra).
STORE = {
    "2+3=": [("5", True, 1.0), ("6", False, 0.0), ("5", True, 1.0), ("7", False, 0.0)],
    "4+4=": [("8", True, 1.0), ("8", True, 1.0), ("8", True, 1.0), ("8", True, 1.0)],
    "9+1=": [("11", False, 0.0), ("91", False, 0.0), ("11", False, 0.0), ("1", False, 0.0)],
    "6+1=": [("7", True, 1.0), ("8", False, None), ("7", True, 1.0), ("0", False, 0.0)],
}


@pytest.fixture
def samples(store):
    store.create_run(run_id="r", name="hand-made", task="t", model="m", config={}, seed=0,
                     rounds_planned=1, versions={}, git_sha=None, run_dir="/tmp/hand-made")
    store.ensure_round("r", 1, None)
    tasks, attempts, verdicts, rewards = [], [], [], []
    for prompt, answers in STORE.items():
        # every task but "6+1=" has a worked solution, as a gsm8k-style file's tasks do
        metadata = {} if prompt == "6+1=" else {SOLUTION_KEY: f"{prompt} {eval(prompt[:-1])} "}
        task = Task(source="t", split="train", prompt=[{"role": "user", "content": prompt}],
                    reference=str(eval(prompt[:-1])), metadata=metadata)
        tasks.append(task)
        for i, (text, passed, reward) in enumerate(answers):
            attempt = Attempt(id=f"{prompt}{i}", run_id="r", round_index=1, task_id=task.id,
                              purpose="train", sample_index=i, messages=[], completion=text)
            attempts.append(attempt)
            kind = None if passed else ("infra" if reward is None else "model")
            verdicts.append((attempt.id, "math", Verdict(passed=passed, score=float(passed),
                                                         error_kind=kind), 0.0))
            rewards.append((attempt.id, "binary", reward))
    # A repair of "2+3=" sample 1 (wrong "6") that passed, one level deep.
    repaired = Attempt(id="2+3=1-fix", run_id="r", round_index=1, task_id=tasks[0].id,
                       purpose="train", sample_index=0, parent_id="2+3=1", depth=1,
                       messages=[], completion="5 (fixed)")
    attempts.append(repaired)
    verdicts.append((repaired.id, "math", Verdict(passed=True, score=1.0), 0.0))
    rewards.append((repaired.id, "binary", 1.0))
    store.upsert_tasks(tasks)
    store.insert_attempts(attempts)
    store.insert_verdicts(verdicts)
    store.insert_rewards(rewards)
    return load_samples(store, "r", 1, ["binary"])


def _text(messages):
    return messages[0]["content"]


def _by_prompt(rows, *fields):
    out = {}
    for row in rows:
        out.setdefault(_text(row["prompt"]), []).append(tuple(
            _text(row[f]) if isinstance(row[f], list) else row[f] for f in fields))
    return out


def test_samples_carry_every_reward_and_the_repair_link(samples):
    by_id = {s.attempt.id: s for s in samples}
    assert by_id["6+1=1"].rewards == {"binary": None} and by_id["6+1=1"].reward is None
    assert by_id["2+3=1-fix"].attempt.parent_id == "2+3=1" and by_id["2+3=1-fix"].passed


def test_sft_learns_distinct_verified_answers_including_repairs(samples):
    rows = _by_prompt(sft_rows(samples), "completion")
    assert rows == {"2+3=": [("5",), ("5 (fixed)",)], "4+4=": [("8",)], "6+1=": [("7",)]}


def test_sft_adds_reference_solutions_where_asked(samples):
    """`unsolved`: the stored solution (stripped) for the prompt no sample solved; `failed`: for
    every prompt a sample failed; `always`: for every prompt; each before the prompt's own
    answers, and a task without a solution gets none."""
    assert sft_rows(samples) == sft_rows(samples, references="never")
    unsolved = _by_prompt(sft_rows(samples, references="unsolved"), "completion")
    assert unsolved == {"2+3=": [("5",), ("5 (fixed)",)], "4+4=": [("8",)],
                        "9+1=": [("9+1= 10",)], "6+1=": [("7",)]}
    failed = _by_prompt(sft_rows(samples, references="failed"), "completion")
    assert failed == {"2+3=": [("2+3= 5",), ("5",), ("5 (fixed)",)], "4+4=": [("8",)],
                      "9+1=": [("9+1= 10",)], "6+1=": [("7",)]}
    with pytest.raises(ValueError, match="references must be one of never, unsolved"):
        sft_rows(samples, references="sometimes")
    always = _by_prompt(sft_rows(samples, references="always", max_per_prompt=1), "completion")
    assert always == {"2+3=": [("2+3= 5",), ("5",)], "4+4=": [("4+4= 8",), ("8",)],
                      "9+1=": [("9+1= 10",)], "6+1=": [("7",)]}


def test_dpo_pairs_good_over_bad_and_repair_over_original(samples):
    rows = _by_prompt(preference_pairs(samples), "chosen", "rejected")
    # the repair pair first, then passing answers cycled against distinct failing ones
    assert rows["2+3="] == [("5 (fixed)", "6"), ("5", "6"), ("5 (fixed)", "7")]
    # the answer the checker could not judge (infra) is never a rejected answer
    assert rows["6+1="] == [("7", "0")]
    assert "4+4=" not in rows and "9+1=" not in rows  # no pair without both sides
    assert len(preference_pairs(samples, max_pairs_per_prompt=1)) == 2
    assert ("5 (fixed)", "6") not in _by_prompt(preference_pairs(samples, repair_pairs=False),
                                                "chosen", "rejected")["2+3="]


def test_kto_labels_every_usable_distinct_answer(samples):
    rows = _by_prompt(kto_rows(samples), "completion", "label")
    assert rows["2+3="] == [("5", True), ("5 (fixed)", True), ("6", False), ("7", False)]
    assert rows["9+1="] == [("11", False), ("91", False), ("1", False)]
    assert rows["6+1="] == [("7", True), ("0", False)]  # the unjudged "8" is left out


def test_kto_keeps_at_most_k_failures_per_success_contrasted_ones_first(samples):
    def picked(k):
        rows = kto_balanced_rows(samples, undesirable_per_desirable=k)
        return _by_prompt([r for r in rows if not r["label"]], "completion"), rows

    # 4 distinct passing answers; failures taken one per prompt in turn, first from the prompts
    # that also have a passing answer (2+3=, 6+1=), then from the unsolved 9+1=
    bad, rows = picked(1.0)
    assert bad == {"2+3=": [("6",), ("7",)], "6+1=": [("0",)], "9+1=": [("11",)]}
    assert sum(r["label"] for r in rows) == 4 and len(rows) == 8
    assert picked(0.5)[0] == {"2+3=": [("6",)], "6+1=": [("0",)]}
    everything = sorted(map(repr, kto_rows(samples)))
    assert sorted(map(repr, picked(None)[1])) == everything
    # a fixed order that mixes prompts and labels (TRL reads KTO rows in order), seed-free
    rows = picked(None)[1]
    assert rows == kto_balanced_rows(list(reversed(samples)), undesirable_per_desirable=None)
    assert [r["label"] for r in rows] != sorted((r["label"] for r in rows), reverse=True)
    # no passing answer: no failure is kept
    failed = [s for s in samples if not s.passed]
    assert kto_balanced_rows(failed, undesirable_per_desirable=1.0) == []


def test_groups_keep_first_tries_and_count_what_they_skip(samples):
    groups = build_groups(samples, 4, ["binary"])
    assert [_text(g.prompt) for g in groups.groups] == ["2+3="]
    group = groups.groups[0]
    assert [s.attempt.completion for s in group.samples] == ["5", "6", "5", "7"]  # no repair
    assert group.solve_rate == 0.5 and group.rewards(["binary"]) == [[1.0, 0.0, 1.0, 0.0]]
    assert groups.counts() == {"groups": 1, "groups_skipped_equal_rewards": 2,
                               "groups_skipped_incomplete": 1}
    kept = build_groups(samples, 4, ["binary"], skip_equal=False)
    assert sorted(_text(g.prompt) for g in kept.groups) == ["2+3=", "4+4=", "9+1="]
    # REDI keeps the all-solved group but not the all-failed one: no positive to weigh it against
    redi = build_groups(samples, 4, ["binary"], skip_equal=False, skip_unsolved=True)
    assert sorted(_text(g.prompt) for g in redi.groups) == ["2+3=", "4+4="]
    assert redi.counts() == {"groups": 2, "groups_skipped_equal_rewards": 1,
                             "groups_skipped_incomplete": 1}
    # a group of the wrong size is incomplete
    assert build_groups(samples, 3, ["binary"]).skipped_incomplete == 4
