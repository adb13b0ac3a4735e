"""DPO and KTO on episodes: TRL's trainers on pre-tokenized rows with a per-token loss mask.

TRL 1.16's DPOTrainer and KTOTrainer always tokenize text themselves, and their collators mark
every completion token as trained. An episode's completion is the model's turns interleaved with
the environment's tokens, and only the model's are trained, so `episode_trainer(base)` changes
exactly two things, nothing in the loss:

- `_prepare_dataset` takes the rows of `loop_trl.datasets` (token ids as sampled) as they are,
  applying only what TRL's own preparation does to tokenized rows: it drops a row whose prompt
  alone fills `max_length`, and (KTO) adds the mismatched `KL_completion_ids`, rotating each
  completion's loss mask with it.
- the collator is TRL's own, wrapped (`LossMaskCollator`): after TRL has padded and truncated a
  batch, its `completion_mask` (and KTO's `KL_completion_mask`) is multiplied by the rows' loss
  masks, truncated the same way. TRL's losses read the log-probabilities of the tokens that
  mask marks, so the environment's tokens are context, never trained.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

# The mask columns of each trainer's rows: (the collator output it narrows, its attention mask,
# the rows' id and loss-mask columns, in the order the collator stacks them).
DPO_MASKS = {"completion_mask": ("attention_mask", [("chosen_ids", "chosen_loss_mask"),
                                                   ("rejected_ids", "rejected_loss_mask")])}
KTO_MASKS = {"completion_mask": ("attention_mask", [("completion_ids", "completion_loss_mask")]),
             "KL_completion_mask": ("KL_attention_mask",
                                    [("KL_completion_ids", "KL_completion_loss_mask")])}


class LossMaskCollator:
    """TRL's preference collator, then each row's loss mask applied to its completion mask.

    `masks` maps an output mask to (its attention mask, [(ids column, loss-mask column), ...]):
    the collator's rows are every example's first column pair, then every example's second.
    """

    def __init__(self, inner: Callable[[list[dict]], dict], masks: dict[str, tuple[str, list]]):
        self.inner = inner
        self.masks = masks
        self.max_length = getattr(inner, "max_length", None)
        self.truncation_mode = getattr(inner, "truncation_mode", "keep_start")

    def _truncate(self, row: list[int]) -> list[int]:
        if self.max_length is None:
            return row
        if self.truncation_mode == "keep_end":
            return row[-self.max_length:]
        return row[:self.max_length]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        output = self.inner(examples)
        for key, (attention, columns) in self.masks.items():
            if key not in output:
                continue
            rows = [self._truncate([0] * len(example["prompt_ids"]) + list(example[mask]))
                    for ids, mask in columns for example in examples]
            target = output[key]
            lengths = output[attention].sum(dim=1).tolist()
            if [len(r) for r in rows] != lengths:
                raise RuntimeError(f"{key}: the loss masks do not line up with TRL's batch "
                                   f"(lengths {[len(r) for r in rows]} vs {lengths})")
            padded = torch.zeros_like(target)
            for i, row in enumerate(rows):
                padded[i, :len(row)] = torch.tensor(row, dtype=target.dtype)
            output[key] = target * padded
        return output


def _rotate_kl(batch: dict[str, list]) -> dict[str, list]:
    """TRL's KL completions: within a batch, example i is paired with example i-1's completion
    (and here with that completion's loss mask)."""
    ids, masks = batch["completion_ids"], batch["completion_loss_mask"]
    batch["KL_completion_ids"] = [ids[-1]] + ids[:-1]
    batch["KL_completion_loss_mask"] = [masks[-1]] + masks[:-1]
    return batch


@functools.cache
def episode_trainer(base: type) -> type:
    """`base` (trl.DPOTrainer or trl.KTOTrainer) for pre-tokenized episode rows (see the module
    docstring). Built once per base class."""
    from trl import DPOTrainer

    masks = DPO_MASKS if issubclass(base, DPOTrainer) else KTO_MASKS
    mask_columns = [m for _, columns in masks.values() for _, m in columns]

    class EpisodeTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_collator = LossMaskCollator(self.data_collator, masks)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                raise ValueError(f"{base.__name__} on episodes expects pre-tokenized rows "
                                 "(prompt_ids and loss masks), built by loop_trl.datasets")
            # TRL drops a row whose prompt alone fills max_length (no completion token is left
            # after keep_start truncation); the same here.
            if args.max_length is not None and getattr(args, "truncation_mode",
                                                       "keep_start") == "keep_start":
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
            if getattr(self, "calculate_KL", False):
                dataset = dataset.map(_rotate_kl, batched=True,
                                      batch_size=args.per_device_train_batch_size)
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            # Keep the loss masks through Trainer's removal of unused columns.
            self._signature_columns += [c for c in mask_columns
                                        if c not in self._signature_columns]

    EpisodeTrainer.__name__ = EpisodeTrainer.__qualname__ = f"Episode{base.__name__}"
    return EpisodeTrainer
