"""Updaters `dpo` and `kto`: learn from good and bad answers with TRL's preference trainers.

`dpo` (TRL DPOTrainer): pairs from one prompt (a verified answer over a failed one, and a
repaired answer over the one it repaired). `kto` (TRL KTOTrainer): unpaired attempts labelled
desirable (passed) or undesirable (failed); no pairing needed, so every wrong answer counts.

The reference model is the round's starting model: a fresh LoRA's reference is the base with
the adapter switched off; a continued adapter gets a frozen copy named "ref" (TRL does both);
full fine-tuning loads the starting folder again.

Episodes: a pair is two episodes of one task (one passed, one failed), an unpaired example one
episode; both train on the stored token ids with the environment's tokens masked out of the loss
(`loop_trl.episodes`: TRL's trainer and loss, its collator's mask narrowed).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop_trl.datasets import (episodes_truncated, kto_balanced_rows, kto_rows,
                               preference_pairs)
from loop_trl.episodes import episode_trainer
from loop_trl.training import train_with_trl


class DPOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    beta: float = Field(default=0.1, gt=0, description="DPO temperature: how far from the reference")
    loss_type: str = Field(default="sigmoid", description="TRL DPO loss (sigmoid, ipo, robust, ...)")
    max_pairs_per_prompt: int = Field(default=4, ge=1, description="cap on pairs from one prompt")
    repair_pairs: bool = Field(default=True,
                               description="pair a repaired answer over the answer it repaired")


class DPOUpdater(loop.Updater):
    name = "dpo"
    Options = DPOOptions

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        options: DPOOptions = context.options or DPOOptions()
        return preference_pairs(context.samples, max_pairs_per_prompt=options.max_pairs_per_prompt,
                                repair_pairs=options.repair_pairs)

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        options: DPOOptions = context.options or DPOOptions()
        rows = self.build_dataset(context)
        if not rows:
            raise loop.EmptyDataset(f"dpo: no prompt among the round's {len(context.samples)} "
                                    "attempts has both a passing and a failing answer, so there "
                                    "is no pair")
        from trl import DPOConfig, DPOTrainer

        episodes = "chosen_loss_mask" in rows[0]
        trainer_cls = episode_trainer(DPOTrainer) if episodes else DPOTrainer
        metrics = train_with_trl(context, rows, trainer_cls=trainer_cls, config_cls=DPOConfig,
                                 config_kwargs={"beta": options.beta,
                                                "loss_type": [options.loss_type]})
        if episodes:
            metrics["episodes_truncated"] = episodes_truncated(rows,
                                                               context.config.train.max_length)
        return loop.UpdateResult(adapter_path=str(context.output_dir),
                                 metrics={**metrics, "pairs": len(rows)})


# KTO's default rate on a LoRA adapter (set in train.options.learning_rate or train.learning_rate
# to change it): half loop's shared LoRA rate, as the KTO paper advises a lower rate than
# SFT's (TRL's KTO default, 1e-6, is for full fine-tuning).
KTO_LEARNING_RATE = 1e-4


class KTOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    beta: float = Field(default=0.1, gt=0, description="KTO temperature (the paper's 0.1)")
    undesirable_per_desirable: float | None = Field(default=1.0, gt=0, description=(
        "keep at most this many failing answers per passing one (failures to prompts that also "
        "have a passing answer first); None keeps every failure"))
    balance: bool = Field(default=True, description=(
        "weight desirable and undesirable examples so both sides count equally, "
        "desirable_weight x #desirable / (undesirable_weight x #undesirable) = 1 (the paper "
        "advises [1, 4/3])"))
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        f"None: {KTO_LEARNING_RATE:g}, or train.learning_rate when the run sets one"))


class KTOUpdater(loop.Updater):
    """KTO (Ethayarajh et al. 2024) on the round's judged answers. A round of self-generated
    answers to a hard task holds far more failures than successes (e.g. 13 against 180); the
    paper's remedy, weighting the scarce side up, then puts a weight of 14-50 on a handful of
    examples and the rest of each batch pushes probability away from wrong answers, which
    degenerated the default model. So the failures are subsampled to at most
    `undesirable_per_desirable` per success before the (then mild) weighting."""

    name = "kto"
    Options = KTOOptions

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        options: KTOOptions = context.options or KTOOptions()
        return kto_balanced_rows(context.samples,
                                 undesirable_per_desirable=options.undesirable_per_desirable)

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        options: KTOOptions = context.options or KTOOptions()
        rows = self.build_dataset(context)
        good = sum(r["label"] for r in rows)
        bad = len(rows) - good
        if not rows:
            if kto_rows(context.samples):
                raise loop.EmptyDataset(
                    f"kto: none of the round's {len(context.samples)} attempts passed, and "
                    "undesirable_per_desirable keeps no failure without a passing answer to "
                    "weigh it against")
            raise loop.EmptyDataset(f"kto: none of the round's {len(context.samples)} attempts "
                                    "has a usable verdict, so there is nothing to train on")
        if len(rows) < 2:
            raise loop.EmptyDataset("kto: one example is not enough (KTO estimates its KL term "
                                    "from the other examples in a batch)")
        weights = {}
        if options.balance and good and bad:
            weights = {"desirable_weight": max(1.0, bad / good),
                       "undesirable_weight": max(1.0, good / bad)}
        from trl import KTOConfig, KTOTrainer

        episodes = "completion_loss_mask" in rows[0]
        trainer_cls = episode_trainer(KTOTrainer) if episodes else KTOTrainer
        batch = max(2, context.config.train.batch_size)
        metrics = train_with_trl(context, rows, trainer_cls=trainer_cls, config_cls=KTOConfig,
                                 config_kwargs={"beta": options.beta, "loss_type": options.loss_type,
                                                "per_device_train_batch_size": batch, **weights},
                                 default_learning_rate=KTO_LEARNING_RATE)
        if episodes:
            metrics["episodes_truncated"] = episodes_truncated(rows,
                                                               context.config.train.max_length)
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics={
            **metrics, "desirable": good, "undesirable": bad,
            "undesirable_left_out": len(kto_rows(context.samples)) - len(rows), **weights})
