"""How a round's samples become each update method's training data.

Pure functions of `context.samples` (no model, no trainer), so each rule is tested on a
hand-made store. Every builder keeps the task's own prompt: an attempt that repairs an earlier
answer (refinement, `attempt.parent_id`) is learned as an answer to the original prompt.

- `sft_rows`: verified answers (prompt/completion, TRL's conversational format), and where
  asked the task's reference solution.
- `preference_pairs`: DPO rows (prompt/chosen/rejected): a passing and a failing answer to one
  prompt, and a repaired answer over the answer it repaired.
- `kto_rows`: unpaired rows (prompt/completion/label), label = passed.
- `build_groups`: each prompt's n first-try attempts with their rewards, for the group methods
  (grpo, nft, redi), with counts of the groups left out and why.

Episodes (attempts with an environment) are trained token-exactly: their rows hold the stored
token ids, never text to re-render. `episode_sequence` is an episode's whole sequence (prompt
ids, every turn's ids) with its loss mask (0 on the prompt and on the environment's tokens).
`sft_rows` gives TRL's pre-tokenized `input_ids`/`completion_mask`; `preference_pairs` gives
`prompt_ids`/`chosen_ids`/`rejected_ids` with `chosen_loss_mask`/`rejected_loss_mask` (one entry
per completion id); `kto_rows` gives `prompt_ids`/`completion_ids`/`completion_loss_mask`/`label`.
A round with episodes trains on its episodes only (an attempt that is not one, e.g. a
refinement's single-turn repair, cannot join a token-exact dataset and is left out). An episode
sampled without token ids (a backend with no chat format) is refused with a ValueError, never
re-tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import loop


def episode_sequence(sample: loop.Sample, method: str = "train") -> tuple[list[int], list[int]]:
    """(ids, mask) of an episode as sampled: its prompt ids then every turn's ids, and 1 on the
    model's own tokens (`Attempt.loss_mask()`), 0 on the prompt and the environment's tokens.
    Raises ValueError when the episode has no token ids to train on."""
    attempt = sample.attempt
    mask = attempt.loss_mask()
    if not attempt.prompt_ids or not attempt.token_ids or len(mask) != len(attempt.token_ids):
        raise ValueError(
            f"{method}: episode {attempt.id} was sampled without token ids (its backend had no "
            "chat format, e.g. openai on a server that returns no token ids), so it cannot be "
            "trained token-exactly; sample with a backend that keeps token ids (hf, vllm, or "
            "openai on a vLLM server)")
    return ([*attempt.prompt_ids, *attempt.token_ids],
            [0] * len(attempt.prompt_ids) + mask)


def episodes_only(samples: list[loop.Sample]) -> tuple[list[loop.Sample], bool]:
    """(samples to build from, whether they are episodes): a round with episodes keeps only its
    episodes (see the module docstring); a round without any keeps every sample."""
    episodes = [s for s in samples if s.attempt.is_episode]
    return (episodes, True) if episodes else (samples, False)


def episodes_truncated(rows: list[dict], max_length: int | None) -> int:
    """How many episode rows (sft, dpo, kto) are longer than `max_length`, which TRL cuts at
    their end; 0 for single-turn rows."""
    if max_length is None:
        return 0
    count = 0
    for row in rows:
        if "input_ids" in row:
            lengths = [len(row["input_ids"])]
        elif "chosen_loss_mask" in row:
            lengths = [len(row["prompt_ids"]) + len(row[k]) for k in ("chosen_ids", "rejected_ids")]
        elif "completion_loss_mask" in row:
            lengths = [len(row["prompt_ids"]) + len(row["completion_ids"])]
        else:
            continue
        count += max(lengths) > max_length
    return count


def _answer(sample: loop.Sample) -> list[dict]:
    return [{"role": "assistant", "content": sample.attempt.completion.strip()}]


def _by_task(samples: list[loop.Sample]) -> dict[str, list[loop.Sample]]:
    out: dict[str, list[loop.Sample]] = {}
    for sample in samples:
        out.setdefault(sample.task.id, []).append(sample)
    for group in out.values():
        group.sort(key=lambda s: (s.attempt.depth, s.attempt.sample_index, s.attempt.id))
    return out


def _answer_key(sample: loop.Sample) -> object:
    """What makes two answers the same: the stripped text, and for an episode its whole
    sequence (two episodes with one final answer may have used their tools differently)."""
    attempt = sample.attempt
    if attempt.is_episode:
        return (tuple(attempt.prompt_ids), tuple(attempt.token_ids), attempt.completion.strip())
    return attempt.completion.strip()


def _length(sample: loop.Sample) -> int:
    """An answer's length: its token ids (an episode's whole sequence after the prompt), or its
    characters when the backend gave no ids."""
    attempt = sample.attempt
    return len(attempt.token_ids) if attempt.token_ids else len(attempt.completion)


def _distinct(samples: list[loop.Sample]) -> list[loop.Sample]:
    """One sample per distinct answer (`_answer_key`), first one kept."""
    seen, out = set(), []
    for sample in samples:
        text = _answer_key(sample)
        if text not in seen:
            seen.add(text)
            out.append(sample)
    return out


def _usable(sample: loop.Sample) -> bool:
    """A failed attempt whose failure was the checker's (infra/timeout reward None) says nothing
    about the answer; it is neither a positive nor a negative."""
    values = list(sample.rewards.values()) if sample.rewards else [sample.reward]
    return sample.passed or any(v is not None for v in values)


# When sft_rows adds a task's reference solution (see there).
References = Literal["never", "unsolved", "failed", "always"]
REFERENCES = get_args(References)


def sft_rows(samples: list[loop.Sample], *, dedupe: bool = True,
             max_per_prompt: int | None = None, shortest_first: bool = False,
             references: References = "never") -> list[dict]:
    """Verified-correct answers, one row each (identical answers to one prompt once if `dedupe`).
    A prompt's answers keep their sampled order, or with `shortest_first` go shortest first (ties
    in sampled order), so `max_per_prompt` keeps the shortest ones.

    `references` adds the task's worked reference solution (`metadata["solution"]`, where its
    source has one) as one more row, before the prompt's own answers: `unsolved` for a prompt
    none of whose samples passed, `failed` for a prompt any sample failed, `always` for every
    prompt, `never` (the default) for none.
    Single answers only: an episode has no reference to replay token-exactly.
    Episodes: `input_ids` (prompt and turns) and `completion_mask` (1 on the model's tokens)."""
    if references not in REFERENCES:
        raise ValueError(f"sft_rows: references must be one of {', '.join(REFERENCES)}, "
                         f"not {references!r}")
    samples, episodes = episodes_only(samples)
    rows = []
    for task_samples in _by_task(samples).values():
        passed = [s for s in task_samples if s.passed]
        task = task_samples[0].task
        solution = task.metadata.get(loop.SOLUTION_KEY)
        wanted = {"always": True, "never": False, "unsolved": not passed,
                  "failed": len(passed) < len(task_samples)}[references]
        if wanted and not episodes and isinstance(solution, str) and solution.strip():
            rows.append({"prompt": task.prompt,
                         "completion": [{"role": "assistant", "content": solution.strip()}]})
        if dedupe:
            passed = _distinct(passed)
        if shortest_first:
            passed.sort(key=_length)
        for sample in passed[:max_per_prompt]:
            if episodes:
                ids, mask = episode_sequence(sample, "sft")
                rows.append({"input_ids": ids, "completion_mask": mask})
            else:
                rows.append({"prompt": sample.task.prompt, "completion": _answer(sample)})
    return rows


def preference_pairs(samples: list[loop.Sample], *, max_pairs_per_prompt: int = 4,
                     repair_pairs: bool = True) -> list[dict]:
    """DPO pairs, chosen = a verified answer, rejected = a failed one, both to the same prompt.

    Per prompt, distinct passing and failing answers are paired in order, cycling the shorter
    list, up to max(#passing, #failing) pairs and at most `max_pairs_per_prompt`. A repaired
    answer that passed is also paired over the failed answer it repaired (`repair_pairs`).
    Episodes: token ids and loss masks (`episode_pair`).
    """
    samples, episodes = episodes_only(samples)
    rows = []
    by_id = {s.attempt.id: s for s in samples}
    for task_samples in _by_task(samples).values():
        good = _distinct([s for s in task_samples if s.passed])
        bad = _distinct([s for s in task_samples if not s.passed and _usable(s)])
        pairs: list[tuple[loop.Sample, loop.Sample]] = []
        if repair_pairs:
            for sample in good:
                parent = by_id.get(sample.attempt.parent_id or "")
                if parent is not None and not parent.passed:
                    pairs.append((sample, parent))
        if good and bad:
            for i in range(max(len(good), len(bad))):
                pair = (good[i % len(good)], bad[i % len(bad)])
                if pair not in pairs:
                    pairs.append(pair)
        for chosen, rejected in pairs[:max_pairs_per_prompt]:
            if episodes:
                rows.append(episode_pair(chosen, rejected))
            else:
                rows.append({"prompt": chosen.task.prompt, "chosen": _answer(chosen),
                             "rejected": _answer(rejected)})
    return rows


def episode_pair(chosen: loop.Sample, rejected: loop.Sample) -> dict:
    """A DPO row of two episodes of one task: `prompt_ids` is the longest start of the two
    prompts they share (their environment's reset text may differ), `chosen_ids`/`rejected_ids`
    the rest of each sequence, and `chosen_loss_mask`/`rejected_loss_mask` one 0/1 per id (0 on
    what is left of a prompt and on the environment's tokens)."""
    good, good_mask = episode_sequence(chosen, "dpo")
    bad, bad_mask = episode_sequence(rejected, "dpo")
    limit = min(len(chosen.attempt.prompt_ids), len(rejected.attempt.prompt_ids))
    shared = 0
    while shared < limit and good[shared] == bad[shared]:
        shared += 1
    return {"prompt_ids": good[:shared], "chosen_ids": good[shared:],
            "rejected_ids": bad[shared:], "chosen_loss_mask": good_mask[shared:],
            "rejected_loss_mask": bad_mask[shared:]}


def kto_rows(samples: list[loop.Sample], *, dedupe: bool = True) -> list[dict]:
    """Every usable attempt as an unpaired example: label True if it passed, False if not.
    Episodes: `prompt_ids`, `completion_ids` (every turn) and `completion_loss_mask`."""
    samples, episodes = episodes_only(samples)
    return [_kto_row(sample, label, episodes)
            for sample, label in _kto_examples(samples, dedupe)]


def kto_balanced_rows(samples: list[loop.Sample], *, undesirable_per_desirable: float | None,
                      dedupe: bool = True) -> list[dict]:
    """`kto_rows` with the undesirable side cut down and the rows mixed, the data `kto` trains on.

    With `undesirable_per_desirable` = k, at most ceil(k x #desirable) undesirable examples are
    kept (all of them when None; none when no answer passed), taken one per prompt in turn:
    first from prompts that also have a passing answer (the failures a verified answer can be
    told apart from), then from the rest, each prompt's in sample order. The rows are then put
    in a fixed pseudo-random order (a hash of task and attempt id, so no seed: the exported rows
    are the trained ones): TRL's KTO reads them in order and estimates its KL term from the
    mismatched prompt-answer pairs of each batch, so a batch should hold several prompts and
    both labels.
    """
    import hashlib
    import math

    samples, episodes = episodes_only(samples)
    examples = _kto_examples(samples, dedupe)
    good = [(s, label) for s, label in examples if label]
    bad = [(s, label) for s, label in examples if not label]
    if undesirable_per_desirable is not None:
        keep = math.ceil(undesirable_per_desirable * len(good) - 1e-9)
        solved = {s.task.id for s, _ in good}
        queues: dict[str, list] = {}
        for example in bad:
            queues.setdefault(example[0].task.id, []).append(example)
        chosen: list = []
        for contrasted in (True, False):
            tier = [q for task_id, q in queues.items() if (task_id in solved) == contrasted]
            depth = 0
            while len(chosen) < keep and any(depth < len(q) for q in tier):
                chosen += [q[depth] for q in tier if depth < len(q)][:keep - len(chosen)]
                depth += 1
        bad = chosen

    def position(example) -> str:
        sample, _ = example
        return hashlib.sha256(f"{sample.task.id}\0{sample.attempt.id}".encode()).hexdigest()

    return [_kto_row(sample, label, episodes)
            for sample, label in sorted(good + bad, key=position)]


def _kto_examples(samples: list[loop.Sample], dedupe: bool) -> list[tuple[loop.Sample, bool]]:
    """(sample, label) of every usable attempt: per task, its distinct passing answers, then its
    distinct failing ones."""
    out = []
    for task_samples in _by_task(samples).values():
        usable = [s for s in task_samples if _usable(s)]
        for label in (True, False):
            chosen = [s for s in usable if s.passed == label]
            out += [(sample, label) for sample in (_distinct(chosen) if dedupe else chosen)]
    return out


def _kto_row(sample: loop.Sample, label: bool, episodes: bool) -> dict:
    if episodes:
        ids, mask = episode_sequence(sample, "kto")
        cut = len(sample.attempt.prompt_ids)
        return {"prompt_ids": ids[:cut], "completion_ids": ids[cut:],
                "completion_loss_mask": mask[cut:], "label": label}
    return {"prompt": sample.task.prompt, "completion": _answer(sample), "label": label}


@dataclass
class Group:
    """One prompt's n first-try attempts, in sample order, with every reward's value."""

    task_id: str
    prompt: list[dict]
    samples: list[loop.Sample]

    @property
    def solve_rate(self) -> float:
        return sum(s.passed for s in self.samples) / len(self.samples)

    def rewards(self, names: list[str]) -> list[list[float]]:
        """rewards[name_index][sample_index]."""
        return [[_reward(s, name) for s in self.samples] for name in names]


@dataclass
class Groups:
    groups: list[Group] = field(default_factory=list)
    skipped_equal: int = 0       # every reward equal: no relative signal (GRPO, NFT); REDI:
    #                              no attempt passed
    skipped_incomplete: int = 0  # fewer than n attempts with a reward (checker failures)

    def counts(self) -> dict[str, int]:
        return {"groups": len(self.groups), "groups_skipped_equal_rewards": self.skipped_equal,
                "groups_skipped_incomplete": self.skipped_incomplete}


def _reward(sample: loop.Sample, name: str) -> float:
    value = sample.rewards.get(name) if sample.rewards else sample.reward
    return float("nan") if value is None else float(value)


def build_groups(samples: list[loop.Sample], n: int, names: list[str], *,
                 skip_equal: bool = True, skip_unsolved: bool = False) -> Groups:
    """Each prompt's first-try attempts (depth 0) as a group of exactly `n`.

    A group missing an attempt, or with an attempt whose every reward is None (the checker
    failed, not the model), is skipped and counted: GRPO's groups have one fixed size, and an
    unscored answer must not pull the group's baseline. With `skip_equal`, groups whose rewards
    are all equal (all solved, or none) carry no relative signal and are skipped and counted;
    with `skip_unsolved` (REDI) so are groups in which no attempt passed.
    """
    out = Groups()
    for task_id, task_samples in _by_task(samples).items():
        first_try = [s for s in task_samples if s.attempt.depth == 0]
        scored = [s for s in first_try
                  if any(v == v for v in (_reward(s, name) for name in names))]
        if len(first_try) != n or len(scored) != n:
            out.skipped_incomplete += 1
            continue
        group = Group(task_id=task_id, prompt=first_try[0].task.prompt, samples=first_try)
        totals = [sum(v for v in (_reward(s, name) for name in names) if v == v)
                  for s in first_try]
        if ((skip_equal and max(totals) == min(totals))
                or (skip_unsolved and not any(s.passed for s in first_try))):
            out.skipped_equal += 1
            continue
        out.groups.append(group)
    return out
