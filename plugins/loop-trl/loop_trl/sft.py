"""Updater `sft`: rejection-sampling fine-tuning (train on the round's verified-correct attempts).

Dataset: one prompt-completion example per passing attempt, in TRL's conversational format
(`prompt` = the task's messages, `completion` = the assistant answer), so SFTTrainer applies the
chat template and computes the loss on the completion only. Identical answers to one prompt are
kept once by default, so a prompt the model already answers the same way four times does not
count four times. Training continues the run's LoRA adapter from the previous round (or starts
one), with TRL's SFTTrainer and PEFT; the result is written to `context.output_dir`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop.rounds import EmptyDataset, UpdateContext
from loop_trl.datasets import sft_rows
from loop_trl.training import train_with_trl


class SFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dedupe: bool = Field(default=True, description="keep one copy of identical answers per prompt")
    max_per_prompt: int | None = Field(default=None, ge=1,
                                       description="cap on kept answers per prompt (None: all)")


class SFTUpdater(loop.Updater):
    name = "sft"
    Options = SFTOptions

    def build_dataset(self, context: UpdateContext) -> list[dict]:
        options: SFTOptions = context.options or SFTOptions()
        return sft_rows(context.samples, dedupe=options.dedupe,
                        max_per_prompt=options.max_per_prompt)

    def update(self, context: UpdateContext) -> loop.UpdateResult:
        rows = self.build_dataset(context)
        if not rows:
            raise EmptyDataset(f"sft: none of the round's {len(context.samples)} attempts passed "
                               "verification, so there is nothing to train on")
        from trl import SFTConfig, SFTTrainer

        metrics = train_with_trl(
            context, rows, trainer_cls=SFTTrainer, config_cls=SFTConfig,
            config_kwargs={"completion_only_loss": True},
        )
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics=metrics)
