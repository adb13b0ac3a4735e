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
from loop_trl.datasets import episodes_truncated, kto_rows, preference_pairs
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


class KTOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    beta: float = Field(default=0.1, gt=0, description="KTO temperature")
    balance: bool = Field(default=True, description=(
        "weight desirable and undesirable examples so both sides count equally (TRL's advice: "
        "desirable_weight x #desirable / (undesirable_weight x #undesirable) in [1, 4/3])"))
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"


class KTOUpdater(loop.Updater):
    name = "kto"
    Options = KTOOptions

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        return kto_rows(context.samples)

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        options: KTOOptions = context.options or KTOOptions()
        rows = self.build_dataset(context)
        good = sum(r["label"] for r in rows)
        bad = len(rows) - good
        if not rows:
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
                                                "per_device_train_batch_size": batch, **weights})
        if episodes:
            metrics["episodes_truncated"] = episodes_truncated(rows,
                                                               context.config.train.max_length)
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics={
            **metrics, "desirable": good, "undesirable": bad, **weights})
