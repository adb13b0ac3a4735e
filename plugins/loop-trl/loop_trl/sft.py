"""Updater `sft`: rejection-sampling fine-tuning (train on the round's verified-correct attempts).

Dataset: one prompt-completion example per passing attempt, in TRL's conversational format
(`prompt` = the task's messages, `completion` = the assistant answer), so SFTTrainer applies the
chat template and computes the loss on the completion only. Identical answers to one prompt are
kept once by default, so a prompt the model already answers the same way four times does not
count four times. Training continues the run's LoRA adapter from the previous round (or starts
one), with TRL's SFTTrainer and PEFT; the result is written to `context.output_dir`.

Episodes (agent rejection sampling: fine-tuning on the successful episodes): one pre-tokenized
example per passing episode, `input_ids` = the prompt's and every turn's stored ids and
`completion_mask` = 1 on the model's own tokens only, so SFTTrainer trains on exactly the
sampled model turns, with the prompt, tool results and observations as context. Identical
episodes (same ids) are kept once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop_trl.datasets import episodes_truncated, sft_rows
from loop_trl.training import train_with_trl


class SFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dedupe: bool = Field(default=True, description="keep one copy of identical answers per prompt")
    max_per_prompt: int | None = Field(default=None, ge=1,
                                       description="cap on kept answers per prompt (None: all)")
    shortest_first: bool = Field(default=False, description=(
        "order each prompt's passing answers shortest first, so that max_per_prompt keeps the "
        "shortest: a verifier that checks only the final answer also passes rambling answers "
        "that happen to end right"))
    padding_free: bool = Field(default=False, description=(
        "flatten each batch into one sequence without padding (TRL's padding_free; the model "
        "keeps the examples apart by their position ids). Same loss, fewer tokens computed "
        "(BENCHMARKS.md, training). TRL enforces train.max_length only when packing, so under "
        "this option an example is as long as its prompt plus answer (bounded by "
        "generate.max_new_tokens)"))


class SFTUpdater(loop.Updater):
    name = "sft"
    Options = SFTOptions

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        options: SFTOptions = context.options or SFTOptions()
        return sft_rows(context.samples, dedupe=options.dedupe,
                        max_per_prompt=options.max_per_prompt,
                        shortest_first=options.shortest_first)

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        rows = self.build_dataset(context)
        if not rows:
            raise loop.EmptyDataset(f"sft: none of the round's {len(context.samples)} attempts "
                                    "passed verification, so there is nothing to train on")
        from trl import SFTConfig, SFTTrainer

        options: SFTOptions = context.options or SFTOptions()
        settings = {"completion_only_loss": True}
        if options.padding_free:
            settings.update(padding_free=True, max_length=None)
        metrics = train_with_trl(
            context, rows, trainer_cls=SFTTrainer, config_cls=SFTConfig, config_kwargs=settings,
        )
        if "input_ids" in rows[0]:  # episodes
            metrics["episodes_truncated"] = episodes_truncated(
                rows, settings.get("max_length", context.config.train.max_length))
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics=metrics)
