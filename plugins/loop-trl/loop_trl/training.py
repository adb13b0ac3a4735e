"""What every TRL-based updater shares: load the round's model (base + the run's adapter, or a
fresh LoRA), build the TRL config from `train:` settings, run the trainer, check that it really
learned something (a zero gradient on every step is a bug, not a result), and save the adapter.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import loop


class NoLearning(RuntimeError):
    """The trainer ran but every step had a zero gradient norm: the update did nothing."""


def load_policy(context: loop.UpdateContext):
    """(model, tokenizer, peft_config): the model to train this round.

    The base weights come from `context.model_path`, the folder the backend's `prepare()` made of
    the config's model. With an adapter from an earlier round, that adapter is loaded trainable
    and training continues it; the first round gets a fresh LoRA (peft_config passed to the
    trainer). A folder with its own config.json is a full model (full fine-tuning), loaded as it
    is, with its own tokenizer if it has one, else the base's.
    """
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    base = context.model_path
    lora = context.config.train.lora
    adapter = context.adapter_in
    source = adapter if adapter and (Path(adapter) / "config.json").is_file() else base
    tokenizer = load_tokenizer(context)  # a full model saved by an update may hold weights only
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if not lora.enabled:
        return model, tokenizer, None
    from peft import LoraConfig, PeftModel

    if adapter and source == base:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True), tokenizer, None
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )
    return model, tokenizer, peft_config


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs: loop draws its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# The rate of a TRL updater that names none of its own (a third party's, through
# train_with_trl): loop's LoRA rate for preference and policy-gradient losses.
DEFAULT_LEARNING_RATE = 2e-4


def learning_rate(context: loop.UpdateContext, method_default: float) -> float:
    """The learning rate a method trains with: its `learning_rate` option when given
    (`train.options.learning_rate`), else `train.learning_rate` when the run set one, else
    `method_default`; times the decay for each round after the first (the method's
    `learning_rate_decay` option when it has one and it is set, else `train.learning_rate_decay`).
    A good SFT rate on a LoRA adapter is far too large for some preference and policy-gradient
    losses, so each method brings its own."""
    chosen = getattr(context.options, "learning_rate", None)
    if chosen is None:
        run = context.config.train.learning_rate
        chosen = method_default if run is None else run
    decay = getattr(context.options, "learning_rate_decay", None)
    if decay is None:
        decay = context.config.train.learning_rate_decay
    return float(chosen) * decay ** max(0, context.round_index - 1)


def load_tokenizer(context: loop.UpdateContext):
    """The tokenizer training uses (load_policy's): a full model's own when it saved one, else
    the base model's."""
    from transformers import AutoTokenizer

    adapter = context.adapter_in
    source = (adapter if adapter and (Path(adapter) / "config.json").is_file()
              and (Path(adapter) / "tokenizer_config.json").is_file() else context.model_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _progress_callback(context: loop.UpdateContext):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.grad_norms: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            context.progress(total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            context.progress(items=1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "grad_norm" in logs and logs["grad_norm"] is not None:
                self.grad_norms.append(float(logs["grad_norm"]))
            if "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Progress()


def train_with_trl(context: loop.UpdateContext, rows: list[dict], *, trainer_cls: Any,
                   config_cls: Any, config_kwargs: dict | None = None, trainer_kwargs: Any = None,
                   train_tokens: int | None = None,
                   default_learning_rate: float = DEFAULT_LEARNING_RATE) -> dict:
    """Train `trainer_cls` on `rows`, save the model/adapter into `context.output_dir`, return
    metrics (dataset_size, steps, train_loss, loss_first, loss_last, grad_norm_mean, train_tokens,
    learning_rate, seconds).

    The trainer gets the shared `train:` settings, its learning rate by `learning_rate` with the
    method's `default_learning_rate`; `config_kwargs` (the method's own settings) win over them,
    and `train.max_steps` wins over both.

    `trainer_kwargs` is a dict, or a callable `(tokenizer) -> dict` for trainers whose extra
    arguments need the tokenizer (GRPO's rollout function). `train_tokens` overrides the count
    taken from the tokenized dataset (trainers that tokenize on the fly have none).
    """
    import dataclasses

    import torch
    from datasets import Dataset

    import datasets

    datasets.disable_progress_bars()  # TRL's dataset maps would print bars under loop's own
    started = time.perf_counter()
    train = context.config.train
    model, tokenizer, peft_config = load_policy(context)
    load_seconds = time.perf_counter() - started
    # The trainer's scratch folder: a killed run's leftovers are removed at the next start.
    scratch = loop.scratch_dir(context, "trainer")
    try:
        fields = {f.name for f in dataclasses.fields(config_cls)}
        # Settings only some TRL configs have (GRPO tokenizes rollouts itself: no max_length).
        optional = {"max_length": train.max_length, "dataset_num_proc": None,
                    # memory is not the constraint at these sizes (the old name is deprecated)
                    "activation_checkpointing": False}
        if "activation_checkpointing" not in fields:
            optional["gradient_checkpointing"] = False
        settings = dict(
            output_dir=str(scratch),
            per_device_train_batch_size=train.batch_size,
            learning_rate=learning_rate(context, default_learning_rate),
            num_train_epochs=train.epochs,
            logging_steps=1,
            save_strategy="no",
            report_to=train.report_to or "none",
            ddp_find_unused_parameters=False,  # LoRA under DDP: no extra pass every step
            disable_tqdm=True,
            seed=context.seed,
            data_seed=context.seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,  # fp32: on CPU bf16 changes the default model's answers (measured)
            **{k: v for k, v in optional.items() if k in fields},
        )
        settings.update(config_kwargs or {})  # the method's own settings win
        if train.max_steps:
            settings["max_steps"] = train.max_steps
        args = config_cls(**settings)
        if callable(trainer_kwargs):
            trainer_kwargs = trainer_kwargs(tokenizer)
        progress = _progress_callback(context)
        trainer = trainer_cls(
            model=model, args=args, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config, callbacks=[progress],
            **(trainer_kwargs or {}),
        )
        # With tqdm off, transformers prints every log dict to stdout; loop draws its own progress.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        norms = [g for g in progress.grad_norms if math.isfinite(g)]
        if progress.grad_norms and not any(g > 0 for g in norms):
            raise NoLearning(f"{trainer_cls.__name__}: gradient norm was 0 on every one of "
                             f"{len(progress.grad_norms)} steps; the update would be a no-op")
        _save(trainer.model, Path(context.output_dir), tokenizer)
        _sort_target_modules(Path(context.output_dir))
        if train_tokens is None:
            columns = trainer.train_dataset.column_names
            # SFT: input_ids; DPO: prompt_ids + chosen_ids + rejected_ids; KTO: *_input_ids
            token_columns = [c for c in columns if c.endswith("_ids") or c == "input_ids"]
            train_tokens = sum(len(ids) for c in token_columns for ids in trainer.train_dataset[c])
        return {
            "dataset_size": len(rows),
            "steps": trainer.state.global_step,
            "train_loss": output.training_loss,
            "loss_first": progress.losses[0] if progress.losses else None,
            "loss_last": progress.losses[-1] if progress.losses else None,
            "grad_norm_mean": sum(norms) / len(norms) if norms else None,
            "train_tokens": _tokens_seen(train_tokens, len(rows), trainer),
            "learning_rate": args.learning_rate,
            "seconds": time.perf_counter() - started,
            "load_seconds": load_seconds,
            # inside the optimizer loop (the trainer's own clock): the model's share of the stage
            "train_seconds": float(output.metrics.get("train_runtime", 0.0)),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tokens_seen(dataset_tokens: int, rows: int, trainer: Any) -> int:
    """Tokens the optimizer saw: the dataset's mean tokens per row x rows per step x steps
    (a GRPO row is a whole group, `num_generations` completions)."""
    per_row = dataset_tokens / max(1, rows)
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    per_step *= max(1, trainer.args.world_size)  # every DDP process trains on its own rows
    per_step /= getattr(trainer.args, "num_generations", None) or 1
    return int(per_row * per_step * trainer.state.global_step)


def _save(model: Any, folder: Path, tokenizer: Any) -> None:
    """Write the trained model or adapter. DPO and KTO keep a frozen copy of the round's starting
    adapter under the name "ref" as their reference model; only the trained one is saved. A full
    model is written with its tokenizer, so the folder is a model that transformers, vLLM and
    the next round load as it is."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and len(peft_config) > 1:
        model.save_pretrained(folder, selected_adapters=["default"])
    else:
        model.save_pretrained(folder)
    if peft_config is None:
        tokenizer.save_pretrained(folder)


def _sort_target_modules(folder: Path) -> None:
    """PEFT saves `target_modules` from a set, in an order that changes with Python's hash seed;
    sort it so the same training gives a byte-identical checkpoint (and checkpoint hash)."""
    import json

    config = folder / "adapter_config.json"
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
