"""Negative-aware updaters `nft` and `redi`: learn from wrong answers without a reward model.

Both are small subclasses of the stored-rollout GRPO trainer (loop_trl.grpo) that replace only
its loss; data, batching, old log-probs and logging stay TRL's. On episodes the loss runs over
the model's tokens only (TRL's `tool_mask` from the rollouts' `env_mask`), as GRPO's does.

NFT (Chen et al. 2025, "Bridging Supervised Learning and Reinforcement Learning in Math
Reasoning"; formula checked against the authors' public code, NVlabs/NFT `dp_actor.py`):
correct answers get maximum likelihood, wrong ones are fitted by the implicit negative policy
π⁻ = (π_old − r̂·π_θ)/(1 − r̂), r̂ the prompt's solve rate. Per token, with R = π_θ/π_old:

    loss = ω(r̂) · [ c · −log R  +  (1 − c) · −log max_sg((1 − r̂·R)/(1 − r̂), ε) ]

`max_sg` clamps the value but keeps the gradient (the authors' `clamp_preserve_grad`), r̂ is
clipped to [0.02, 0.98], and ω(r̂) = 1 − r̂ (the authors' `normalize=1`) makes the on-policy
gradient equal to GRPO's with unscaled advantages (r − mean); ω = sqrt((1 − r̂)/r̂) matches
std-scaled advantages. Tokens are averaged over the batch (TRL's `bnpo` aggregation).

REDI (Xu et al. 2025, "Harnessing Negative Signals: Reinforcement Distillation from Teacher Data
for LLM Reasoning"; checked against the authors' code, Tim-Siu/reinforcement-distillation, the
`reinforce` loss of their DPO trainer) is two-stage: SFT on the positive traces, then the REDI
objective on (positive, negative) pairs of one prompt, reference-free, per sequence,
length-normalised,

    loss = mean over positives of −log π(y⁺|x)/|y⁺|  +  α · mean over negatives of log π(y⁻|x)/|y⁻|

(each side averaged on its own, as over pairs), α < 1: negatives are pushed down more gently
than positives are pulled up (α = 0.8, the paper's stable setting). loop applies the recipe to
every round's own data: the round's update first fine-tunes on its verified answers (sft's
dataset and TRL's SFTTrainer), then continues that adapter with the REDI loss on the round's
groups. A group in which nothing passed is left out (its negatives have no positive to be
weighed against); all-solved groups stay.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop_trl.datasets import sft_rows
from loop_trl.grpo import GroupUpdater, stored_group_trainer
from loop_trl.sft import SFT_LEARNING_RATE
from loop_trl.training import train_with_trl

# The methods' default learning rates on a LoRA adapter (train.options.learning_rate, or a
# train.learning_rate the run chose, overrides them; loop_trl.training.learning_rate): loop's
# shared LoRA rate, kept until a lower one is measured better on the default task.
NFT_LEARNING_RATE = 2e-4
REDI_LEARNING_RATE = 2e-4


def _token_logps(trainer: Any, model: Any, inputs: dict):
    """(per-token log-probs of the completion under `model`, loss mask): the completion mask,
    times TRL's `tool_mask` where the rollouts have one (an episode's environment tokens are
    context, not trained)."""
    import torch

    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logits_to_keep = inputs["completion_ids"].size(1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, logits_to_keep, compute_entropy=False)
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    return logps, mask.to(logps.dtype)


def _accumulation(trainer: Any) -> float:
    return trainer.current_gradient_accumulation_steps if trainer.model.training else 1.0


def nft_token_loss(logps, old_logps, passed, solve_rate, *, weighting: str = "one_minus_rate",
                   negative_clamp: float = 1.0, positive_clamp: float = 0.0,
                   negative_weight: float = 1.0):
    """NFT's per-token loss (B, T); `passed` and `solve_rate` are (B,) tensors."""
    import torch

    def clamp_keep_grad(x, low):
        return x + (torch.clamp(x, min=low) - x).detach()

    ratio = torch.exp((logps - old_logps).clamp(max=10.0))
    rate = solve_rate.clamp(0.02, 0.98)[:, None]
    correct = passed[:, None]
    positive = -torch.log(clamp_keep_grad(ratio, positive_clamp))
    negative = -torch.log(clamp_keep_grad((1.0 - rate * ratio) / (1.0 - rate), negative_clamp))
    loss = correct * positive + (1.0 - correct) * negative_weight * negative
    if weighting == "one_minus_rate":
        loss = loss * (1.0 - rate)
    elif weighting == "grpo_std":
        loss = loss * ((1.0 - rate) / rate).sqrt()
    return loss


def redi_loss(per_sequence, passed, alpha: float):
    """REDI's loss from per-sequence length-normalised log-likelihoods: the mean over the
    batch's positives of −log π/|y| plus α × the mean over its negatives of log π/|y|. The paper
    writes it over (positive, negative) pairs, so each side is averaged on its own: a batch with
    many more failures than successes does not turn into pure likelihood minimisation."""
    positives, negatives = passed, 1.0 - passed
    pos = -(per_sequence * positives).sum() / positives.sum().clamp(min=1.0)
    neg = (per_sequence * negatives).sum() / negatives.sum().clamp(min=1.0)
    return pos + alpha * neg


class NFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weighting: Literal["one_minus_rate", "grpo_std", "none"] = Field(
        default="one_minus_rate",
        description="prompt weight ω(r̂): 1−r̂ (authors' default, = GRPO without std scaling), "
                    "sqrt((1−r̂)/r̂) (= GRPO with std scaling), or none")
    negative_clamp: float = Field(default=1.0, gt=0, description=(
        "floor on the negative policy's ratio (value clamped, gradient kept); authors: 1.0"))
    negative_weight: float = Field(default=1.0, ge=0, description="0 turns NFT into RFT")
    behaviour_logprobs: bool = Field(
        default=True, description="use the stored sampling log-probs as π_old")
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        f"None: {NFT_LEARNING_RATE:g}, or train.learning_rate when the run sets one"))


class REDIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    alpha: float = Field(default=0.8, ge=0, le=1, description="weight of the negative term")
    sft_stage: bool = Field(default=True, description=(
        "fine-tune on the round's verified answers before the REDI loss (the paper's first "
        "stage); false: the REDI loss alone"))
    sft_share: float = Field(default=0.5, gt=0, lt=1, description=(
        "the SFT stage's share of train.max_steps (at least one step each); without max_steps "
        "each stage makes train.epochs passes over its own data"))
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        f"the REDI stage's rate; None: {REDI_LEARNING_RATE:g}, or train.learning_rate when the "
        "run sets one (the SFT stage trains at sft's rate)"))


def _nft_trainer():
    base = stored_group_trainer()

    class NFTTrainer(base):
        nft_options = NFTOptions()

        def _compute_loss(self, model, inputs):
            logps, mask = _token_logps(self, model, inputs)
            old = inputs.get("old_per_token_logps")
            old = logps.detach() if old is None else old
            opts = self.nft_options
            per_token = nft_token_loss(
                logps, old, inputs["loop_passed"].to(logps.dtype),
                inputs["loop_solve_rate"].to(logps.dtype), weighting=opts.weighting,
                negative_clamp=opts.negative_clamp, negative_weight=opts.negative_weight)
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["nft/positive_share"].append(inputs["loop_passed"].float().mean().item())
            return loss / _accumulation(self)

    return NFTTrainer


def _redi_trainer():
    base = stored_group_trainer()

    class REDITrainer(base):
        alpha = 0.8

        def _compute_loss(self, model, inputs):
            logps, mask = _token_logps(self, model, inputs)
            per_sequence = (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
            passed = inputs["loop_passed"].to(logps.dtype)
            loss = redi_loss(per_sequence, passed, self.alpha)
            return loss / _accumulation(self)

    return REDITrainer


class NFTUpdater(GroupUpdater):
    name = "nft"
    Options = NFTOptions
    default_learning_rate = NFT_LEARNING_RATE

    def trainer_cls(self, options: NFTOptions | None):
        cls = _nft_trainer()
        cls.nft_options = options or NFTOptions()
        return cls


class REDIUpdater(GroupUpdater):
    """REDI's two stages in every round's update: SFT on the round's verified answers, then the
    REDI loss on its groups, continuing the SFT stage's adapter (see the module docstring).

    The metrics are the REDI stage's (its groups, dataset and losses), with the SFT stage's
    under `sft_*`; `steps`, `train_tokens` and the seconds count both stages."""

    name = "redi"
    Options = REDIOptions
    default_learning_rate = REDI_LEARNING_RATE
    skip_equal = False
    skip_unsolved = True

    def trainer_cls(self, options: REDIOptions | None):
        cls = _redi_trainer()
        cls.alpha = (options or REDIOptions()).alpha
        return cls

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        import dataclasses
        import shutil

        options: REDIOptions = context.options or REDIOptions()
        groups = self.build_groups(context)  # refuses n < 2 and episodes without token ids
        rows = sft_rows(context.samples) if options.sft_stage and groups.groups else []
        max_steps = context.config.train.max_steps
        if max_steps is not None and max_steps < 2:
            rows = []  # one step cannot hold two stages: the REDI loss alone
        if not rows:
            return super().update(context)  # without groups: EmptyDataset, saying what was skipped
        sft_steps = redi_steps = None
        if max_steps:
            sft_steps = min(max_steps - 1, max(1, int(max_steps * options.sft_share + 0.5)))
            redi_steps = max_steps - sft_steps
        from trl import SFTConfig, SFTTrainer

        folder = loop.scratch_dir(context, "redi-sft")
        try:
            # the SFT stage trains as sft does: redi's own learning_rate is the REDI stage's
            stage = dataclasses.replace(context, output_dir=folder, options=None,
                                        config=_with_max_steps(context.config, sft_steps))
            first = train_with_trl(stage, rows, trainer_cls=SFTTrainer, config_cls=SFTConfig,
                                   config_kwargs={"completion_only_loss": True},
                                   default_learning_rate=SFT_LEARNING_RATE)
            second = dataclasses.replace(context, adapter_in=str(folder),
                                         config=_with_max_steps(context.config, redi_steps))
            result = super().update(second)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        metrics = dict(result.metrics)
        metrics.update({f"sft_{key}": first[key] for key in (
            "dataset_size", "steps", "train_loss", "loss_first", "loss_last", "learning_rate")})
        for key in ("steps", "train_tokens", "seconds", "load_seconds", "train_seconds"):
            metrics[key] = metrics.get(key, 0) + first[key]
        return loop.UpdateResult(adapter_path=result.adapter_path, metrics=metrics)


def _with_max_steps(config: Any, steps: int | None) -> Any:
    """`config` with `train.max_steps` = steps (None: unchanged)."""
    if steps is None:
        return config
    train = config.train.model_copy(update={"max_steps": steps})
    return config.model_copy(update={"train": train})
