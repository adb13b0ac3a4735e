"""Updater `grpo`: TRL's GRPO loss on the round's own samples, read from the store.

loop samples in its generate stage, not inside the trainer, so GRPOTrainer must train on
completions it did not generate. TRL's public hook for that is `rollout_func`: `StoredRollouts`
answers each request with a group's stored token ids and sampling log-probabilities, and the
stored rewards reach TRL through reward functions that only read them back. Advantages,
clipping and loss aggregation are TRL's own.

The PPO ratio's old policy is TRL's own by default: the policy at the step that trains the batch
(a ratio of 1 on the batch's first pass, TRL's old log-probs on later passes). One addition
(`StoredGroupTrainer`), the option `behaviour_logprobs`: TRL uses the log-probabilities a
rollout returns only on its vLLM path; with the option they become the `old_per_token_logps`,
so every step of a round takes its ratio π_θ/π_sample, clipped, against the policy that sampled
the round (the round's starting model): PPO's trust region around one rollout. On the default
task that region clips away the later steps of a round once the policy has moved, and grpo
learned about half as much with it (BENCHMARKS.md, "grpo's old policy"), so it is off by
default. The stored log-probs are raw (temperature 1) ones, so the trainer scores with
temperature 1 too.

Groups are each prompt's n first-try attempts. A group whose rewards are all equal carries no
signal and is skipped and counted, as is a group with an unscored attempt (checker failure).
The same trainer, with its loss replaced, serves `nft` and `redi` (loop_trl.negative).

Episodes: a rollout is the episode as sampled, `prompt_ids` the stored prompt ids and
`completion_ids` every turn's ids (the model's and the environment's, in order), with TRL's
`env_mask` (`Attempt.loss_mask()`: 1 on the model's tokens) so the environment's tokens are
context and never trained, and the stored log-probs (0.0 on the environment's tokens, which
the mask leaves out). The episode's reward is its group's reward like any other.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop_trl.datasets import Group, Groups, build_groups, episode_sequence
from loop_trl.training import DEFAULT_LEARNING_RATE, train_with_trl

# GRPO's default learning rate on a LoRA adapter (train.options.learning_rate, or a
# train.learning_rate the run chose, overrides it; loop_trl.training.learning_rate): loop's
# shared LoRA rate, kept until a lower one is measured better on the default task.
GRPO_LEARNING_RATE = 2e-4


def encode_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The prompt's token ids exactly as the hf backend built them for sampling."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


class StoredRollouts:
    """A TRL `rollout_func` that returns stored completions instead of generating.

    TRL calls it with the prompts of a generation batch, each repeated `num_generations` times
    in a row; the k-th occurrence of a prompt gets the k-th attempt of that prompt's group
    (cycling through the groups that share the prompt text). `last` keeps the answered batch's
    per-completion facts for the trainer (pass flags, solve rates, behaviour log-probs).
    """

    def __init__(self, groups: list[Group], tokenizer: Any, reward_names: list[str],
                 behaviour_logprobs: bool = True):
        self.tokenizer = tokenizer
        self.behaviour_logprobs = behaviour_logprobs
        self.reward_names = reward_names
        self.by_prompt: dict[str, list[Group]] = {}
        for group in groups:
            self.by_prompt.setdefault(_key(group.prompt), []).append(group)
        self.seen: dict[str, int] = {}
        self.last: dict[str, list] = {}

    def __call__(self, prompts: list, trainer: Any = None) -> dict[str, Any]:
        prompt_ids, completion_ids, logprobs, env_mask = [], [], [], []
        passed, solve_rate, episodes = [], [], False
        rewards: dict[str, list] = {name: [] for name in self.reward_names}
        for prompt in prompts:
            key = _key(prompt)
            groups = self.by_prompt.get(key)
            if not groups:
                raise KeyError(f"StoredRollouts: no stored group for prompt {key[:80]}")
            count = self.seen.get(key, 0)
            self.seen[key] = count + 1
            size = len(groups[0].samples)
            group = groups[(count // size) % len(groups)]
            sample = group.samples[count % size]
            if sample.attempt.is_episode:
                episodes = True
                whole, mask = episode_sequence(sample, "StoredRollouts")
                cut = len(sample.attempt.prompt_ids)
                prompt_ids.append(whole[:cut])
                ids = whole[cut:]
                env_mask.append(mask[cut:])
            else:
                prompt_ids.append(encode_prompt(self.tokenizer, group.prompt))
                ids = self._completion_ids(sample)
                env_mask.append([1] * len(ids))
            completion_ids.append(ids)
            stored = sample.attempt.logprobs
            logprobs.append(list(stored) if stored and len(stored) == len(ids) else None)
            passed.append(float(sample.passed))
            solve_rate.append(group.solve_rate)
            for name, values in zip(self.reward_names, group.rewards(self.reward_names)):
                rewards[name].append(values[count % size])
        have_logprobs = all(lp is not None for lp in logprobs)
        self.last = {"passed": passed, "solve_rate": solve_rate,
                     "logprobs": logprobs if have_logprobs else None}
        return {
            "prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "logprobs": logprobs if have_logprobs else None,
            # single-turn rollouts return no env_mask, exactly as before
            **({"env_mask": env_mask} if episodes else {}),
            **{f"loop_reward_{name}": values for name, values in rewards.items()},
        }

    def _completion_ids(self, sample) -> list[int]:
        """The stored token ids (lossless); re-encoded text (+ EOS if it stopped) when absent."""
        if sample.attempt.token_ids:
            return list(sample.attempt.token_ids)
        ids = self.tokenizer(sample.attempt.completion, add_special_tokens=False).input_ids
        if sample.attempt.finish_reason == "stop" and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def _key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def stored_reward(name: str):
    """A TRL reward function that returns the stored value of reward `name` (None for NaN)."""

    def reward(prompts=None, completions=None, **kwargs) -> list[float | None]:
        return [None if v is None or math.isnan(v) else float(v)
                for v in kwargs[f"loop_reward_{name}"]]

    reward.__name__ = name
    return reward


@functools.cache
def stored_group_trainer():
    """The StoredGroupTrainer class (built on first use: importing TRL is slow)."""
    from trl import GRPOTrainer

    class StoredGroupTrainer(GRPOTrainer):
        """GRPOTrainer on stored rollouts; adds per-completion `loop_passed`,
        `loop_solve_rate` and, when stored, the behaviour log-probs as `old_per_token_logps`."""

        def _generate_and_score_completions(self, inputs):
            import torch

            output = super()._generate_and_score_completions(inputs)
            facts = self.rollout_func.last
            device = output["completion_mask"].device
            output["loop_passed"] = torch.tensor(facts["passed"], device=device)
            output["loop_solve_rate"] = torch.tensor(facts["solve_rate"], device=device)
            if self.rollout_func.behaviour_logprobs and facts["logprobs"] is not None:
                width = output["completion_mask"].shape[1]
                padded = [lp[:width] + [0.0] * (width - len(lp[:width])) for lp in facts["logprobs"]]
                dtype = output["advantages"].dtype
                output["old_per_token_logps"] = torch.tensor(padded, device=device, dtype=dtype)
            return output

    return StoredGroupTrainer


class GRPOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = Field(
        default="dapo", description="TRL's loss aggregation (its default: dapo)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group", description="divide advantages by the group's reward std (TRL default)")
    epsilon: float = Field(default=0.2, gt=0, description="PPO clip range")
    beta: float = Field(default=0.0, ge=0, description="KL penalty to the round's starting model")
    behaviour_logprobs: bool = Field(default=False, description=(
        "use the stored sampling log-probs as the PPO ratio's π_old, a trust region around the "
        "round's sampling policy for all of its steps; false: TRL's own π_old, the policy at "
        "each step (faster learning on the default task)"))
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        f"None: {GRPO_LEARNING_RATE:g}, or train.learning_rate when the run sets one"))


class GroupUpdater(loop.Updater):
    """What grpo, nft and redi share: groups from the store, TRL's GRPO pipeline on them."""

    name = "group"
    skip_equal = True  # redi learns from all-solved groups too
    skip_unsolved = False  # redi: a group without a passing answer has no positive to weigh
    # the method's own rate (loop_trl.training.learning_rate says what overrides it)
    default_learning_rate = DEFAULT_LEARNING_RATE

    def build_groups(self, context: loop.UpdateContext) -> Groups:
        n = context.config.generate.n
        if n < 2:
            raise loop.EmptyDataset(f"{self.name}: needs at least 2 samples per prompt to form "
                                    f"groups; generate.n is {n}")
        names = context.reward_names or ["reward"]
        groups = build_groups(context.samples, n, names, skip_equal=self.skip_equal,
                              skip_unsolved=self.skip_unsolved)
        for group in groups.groups:
            for sample in group.samples:
                if sample.attempt.is_episode:
                    episode_sequence(sample, self.name)  # refuses an episode without token ids
        return groups

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        """The groups `update` trains on, flattened: one row per attempt, groups in order and
        each group's attempts in sample order (what `loop export --what grpo|nft|redi` writes).

        Columns: `group_id` ("<round>:<task id>", one group per prompt and round), `task_id`,
        `attempt_id`, `sample_index`, `prompt` (the task's messages), `completion` (the answer
        as one assistant message, text exactly as sampled), `completion_tokens`, `passed`,
        `solve_rate` (the group's share of passing answers), one `reward_<name>` per reward
        function (`reward_reward` when the run named none; None where the reward is not
        applicable), and `logprob_sum`: the sum of the stored sampling log-probs of the
        completion's tokens (log π_behaviour(y|x) at temperature 1), None when the backend
        stored none for every token. Groups the method skips (incomplete; all rewards equal,
        for redi only those where no answer passed) are left out, as in training.

        Episodes: `prompt` is the episode's own prompt (with the tool text and reset text),
        `completion` every message after it (assistant turns, tool results, observations), and
        three more columns hold what training reads: `prompt_ids`, `completion_ids` (every turn's
        ids as sampled) and `completion_mask` (1 on the model's tokens, 0 on the environment's);
        `logprob_sum` counts the model's tokens only.
        """
        groups = self.build_groups(context)
        names = context.reward_names or ["reward"]
        rows = []
        for group in groups.groups:
            values = group.rewards(names)  # NaN where the stored reward is None
            for k, sample in enumerate(group.samples):
                attempt = sample.attempt
                logprobs = attempt.logprobs
                row = {
                    "group_id": f"{context.round_index}:{group.task_id}",
                    "task_id": group.task_id, "attempt_id": attempt.id,
                    "sample_index": attempt.sample_index, "prompt": group.prompt,
                    "completion": [{"role": "assistant", "content": attempt.completion}],
                    "completion_tokens": attempt.completion_tokens, "passed": sample.passed,
                    "solve_rate": group.solve_rate,
                    **{f"reward_{name}": None if math.isnan(v[k]) else v[k]
                       for name, v in zip(names, values)},
                    "logprob_sum": (math.fsum(logprobs) if logprobs
                                    and len(logprobs) == len(attempt.token_ids) else None),
                }
                if attempt.is_episode:
                    row.update(_episode_columns(sample, self.name))
                rows.append(row)
        return rows

    def trainer_cls(self, options: Any):
        return stored_group_trainer()

    def grpo_settings(self, options: Any) -> dict:
        return {}

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        import os

        from trl import GRPOConfig

        # rollout_func is experimental in TRL 1.16; we pin and test it (plugins/loop-trl/README.md)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

        groups = self.build_groups(context)
        if not groups.groups:
            raise loop.EmptyDataset(
                f"{self.name}: no usable group among the round's {len(context.samples)} attempts "
                f"({groups.skipped_equal} with all rewards equal, {groups.skipped_incomplete} "
                "incomplete)")
        n = context.config.generate.n
        names = context.reward_names or ["reward"]
        per_step = max(1, context.config.train.batch_size // n)
        rows = [{"prompt": g.prompt} for g in groups.groups]
        padded = (-len(rows)) % per_step  # fill the last batch: TRL drops incomplete ones
        rows += [rows[i % len(rows)] for i in range(padded)]
        longest = max(len(s.attempt.token_ids) or s.attempt.completion_tokens or 1
                      for g in groups.groups for s in g.samples)
        # an episode's completion_tokens counts the model's tokens only; the trainer sees all
        tokens = sum(s.attempt.prompt_tokens + (len(s.attempt.token_ids) if s.attempt.is_episode
                                                else s.attempt.completion_tokens)
                     for g in groups.groups for s in g.samples)
        options = context.options
        if options is None and getattr(self, "Options", None) is not None:
            options = self.Options()
        trainer_cls = self.trainer_cls(options)
        # only grpo and nft have the option; redi's loss reads no old log-probs
        behaviour = bool(getattr(options, "behaviour_logprobs", False))
        settings = {
            "num_generations": n,
            "per_device_train_batch_size": per_step * n,
            "steps_per_generation": 1,
            "num_iterations": max(1, round(context.config.train.epochs)),  # PPO epochs per batch
            "num_train_epochs": 1,
            "max_completion_length": longest,
            "temperature": 1.0,  # stored log-probs are raw (temperature 1) ones
            "log_completions": False,
            **self.grpo_settings(options),
        }
        metrics = train_with_trl(
            context, rows, trainer_cls=trainer_cls, config_cls=GRPOConfig,
            config_kwargs=settings, train_tokens=tokens,
            default_learning_rate=self.default_learning_rate,
            trainer_kwargs=lambda tokenizer: {
                "reward_funcs": [stored_reward(name) for name in names],
                "rollout_func": StoredRollouts(groups.groups, tokenizer, names, behaviour),
            },
        )
        metrics.update(groups.counts())
        metrics["dataset_size"] = len(groups.groups) * n
        metrics["groups_repeated_to_fill_batch"] = padded
        metrics["behaviour_logprobs"] = behaviour and all(
            s.attempt.logprobs and len(s.attempt.logprobs) == len(s.attempt.token_ids)
            for g in groups.groups for s in g.samples)
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics=metrics)


class GRPOUpdater(GroupUpdater):
    name = "grpo"
    Options = GRPOOptions
    default_learning_rate = GRPO_LEARNING_RATE

    def grpo_settings(self, options: GRPOOptions | None) -> dict:
        options = options or GRPOOptions()
        return {"loss_type": options.loss_type, "scale_rewards": options.scale_rewards,
                "epsilon": options.epsilon, "beta": options.beta}


def _episode_columns(sample: loop.Sample, method: str) -> dict[str, Any]:
    """An episode's export columns: its own prompt and the messages after it, and the ids and
    mask training reads (see `build_dataset`)."""
    attempt = sample.attempt
    ids, mask = episode_sequence(sample, method)
    after = len(attempt.turns)
    model_logprobs = [lp for t in attempt.turns if t.trained for lp in (t.logprobs or [])]
    model_tokens = sum(len(t.token_ids) for t in attempt.turns if t.trained)
    return {
        "prompt": attempt.messages[:len(attempt.messages) - after],
        "completion": attempt.messages[len(attempt.messages) - after:],
        "prompt_ids": list(attempt.prompt_ids),
        "completion_ids": ids[len(attempt.prompt_ids):],
        "completion_mask": mask[len(attempt.prompt_ids):],
        "logprob_sum": (math.fsum(model_logprobs)
                        if model_tokens and len(model_logprobs) == model_tokens else None),
    }
