"""Updater `sft`: rejection-sampling fine-tuning (train on the round's verified-correct attempts).

Dataset: one prompt-completion example per passing attempt, in TRL's conversational format
(`prompt` = the task's messages, `completion` = the assistant answer), so SFTTrainer applies the
chat template and computes the loss on the completion only. Identical answers to one prompt are
kept once by default, so a prompt the model already answers the same way four times does not
count four times. Training continues the run's LoRA adapter from the previous round (or starts
one), with TRL's SFTTrainer and PEFT; the result is written to `context.output_dir`.

A model learns only the problems it can already solve from its own answers. The `references`
option also trains on a task's worked reference solution (where the task source gives one) for
the prompts the round left unsolved, those any sample failed, or every prompt: STaR's
rationalization and the RFT of Yuan et al. (2023), which adds the model's verified answers to the
supervised data.

Episodes (agent rejection sampling: fine-tuning on the successful episodes): one pre-tokenized
example per passing episode, `input_ids` = the prompt's and every turn's stored ids and
`completion_mask` = 1 on the model's own tokens only, so SFTTrainer trains on exactly the
sampled model turns, with the prompt, tool results and observations as context. Identical
episodes (same ids) are kept once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import loop
from loop_trl.datasets import References, episodes_truncated, sft_rows
from loop_trl.training import load_tokenizer, train_with_trl

# sft's default rate on a LoRA adapter (train.learning_rate or the `learning_rate` option
# overrides it): on the default task, two epochs a round at 5e-4 took held-out pass@1 from 0.070
# to 0.510 in one round where 2e-4 reached 0.240 (BENCHMARKS.md, "The default job").
SFT_LEARNING_RATE = 5e-4


class SFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dedupe: bool = Field(default=True, description="keep one copy of identical answers per prompt")
    max_per_prompt: int | None = Field(default=None, ge=1,
                                       description="cap on kept answers per prompt (None: all)")
    shortest_first: bool = Field(default=False, description=(
        "order each prompt's passing answers shortest first, so that max_per_prompt keeps the "
        "shortest: a verifier that checks only the final answer also passes rambling answers "
        "that happen to end right"))
    references: References = Field(default="never", description=(
        "also train on the task's worked reference solution (metadata 'solution', where its "
        "source has one: the gsm8k-style jsonl files, arithmetic, code files with a solution): "
        "`unsolved` for a prompt no sample solved, so the model also learns the problems it "
        "cannot solve yet (STaR's rationalization, with the reference as the rationale); "
        "`failed` for a prompt any sample failed (solved only sometimes, or never); "
        "`always` for every prompt (RFT as Yuan et al. 2023: the supervised data plus the "
        "model's own verified answers); `never`: only the model's own answers"))
    padding_free: bool | None = Field(default=None, description=(
        "flatten each batch into one sequence without padding (TRL's padding_free; the model "
        "keeps the examples apart by their position ids): the same loss on fewer computed "
        "tokens (BENCHMARKS.md, training). TRL enforces train.max_length only when packing, so "
        "padding-free examples are never cut; None (the default): on exactly when every "
        "example of the round fits train.max_length, where the loss is the same either way"))
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        f"None: train.learning_rate when the run sets one, else {SFT_LEARNING_RATE:g}"))
    learning_rate_decay: float | None = Field(default=None, gt=0, le=1, description=(
        "each round after the first trains at the previous round's rate times this; None: "
        "train.learning_rate_decay"))


def row_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens of each sft row as SFTTrainer tokenizes it: a pre-tokenized episode's input_ids,
    or the chat template over prompt and completion (TRL's prompt-completion rendering)."""
    out = []
    for row in rows:
        if "input_ids" in row:
            out.append(len(row["input_ids"]))
        else:
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"],
                                                tokenize=True, return_dict=False)
            out.append(len(ids))
    return out


def _rows(samples: list[loop.Sample], options: SFTOptions,
          references: References | None = None) -> list[dict]:
    """sft's dataset under `options` (`references` overrides the option's)."""
    return sft_rows(samples, dedupe=options.dedupe, max_per_prompt=options.max_per_prompt,
                    shortest_first=options.shortest_first,
                    references=references or options.references)


class SFTUpdater(loop.Updater):
    name = "sft"
    Options = SFTOptions

    def build_dataset(self, context: loop.UpdateContext) -> list[dict]:
        return _rows(context.samples, context.options or SFTOptions())

    def update(self, context: loop.UpdateContext) -> loop.UpdateResult:
        rows = self.build_dataset(context)
        if not rows:
            raise loop.EmptyDataset(f"sft: none of the round's {len(context.samples)} attempts "
                                    "passed verification, so there is nothing to train on")
        from trl import SFTConfig, SFTTrainer

        options: SFTOptions = context.options or SFTOptions()
        settings = {"completion_only_loss": True}
        padding_free = options.padding_free
        if padding_free is None:  # on where it changes nothing but the speed
            longest = max(row_lengths(rows, load_tokenizer(context)))
            padding_free = longest <= context.config.train.max_length
        if padding_free:
            settings.update(padding_free=True, max_length=None)
        metrics = train_with_trl(
            context, rows, trainer_cls=SFTTrainer, config_cls=SFTConfig, config_kwargs=settings,
            default_learning_rate=SFT_LEARNING_RATE)
        metrics["padding_free"] = padding_free
        if options.references != "never":  # how many of the rows are reference solutions
            metrics["reference_rows"] = len(rows) - len(_rows(context.samples, options, "never"))
        if "input_ids" in rows[0]:  # episodes
            metrics["episodes_truncated"] = episodes_truncated(
                rows, settings.get("max_length", context.config.train.max_length))
        return loop.UpdateResult(adapter_path=str(context.output_dir), metrics=metrics)
