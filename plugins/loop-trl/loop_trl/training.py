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

from loop.checkpoints import TMP_PREFIX
from loop.rounds import UpdateContext


class NoLearning(RuntimeError):
    """The trainer ran but every step had a zero gradient norm: the update did nothing."""


def load_policy(context: UpdateContext):
    """(model, tokenizer, peft_config): the model to train this round.

    With an adapter from an earlier round, that adapter is loaded trainable and training continues
    it; the first round gets a fresh LoRA (peft_config passed to the trainer). A folder with its own
    config.json is a full model (full fine-tuning), loaded as it is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loop_hf.models import quiet_transformers, resolve_model

    quiet_transformers()
    base = resolve_model(context.base_model)
    lora = context.config.train.lora
    adapter = context.adapter_in
    source = adapter if adapter and (Path(adapter) / "config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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


def _progress_callback(context: UpdateContext):
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


def train_with_trl(context: UpdateContext, rows: list[dict], *, trainer_cls: Any, config_cls: Any,
                   config_kwargs: dict | None = None, trainer_kwargs: dict | None = None) -> dict:
    """Train `trainer_cls` on `rows`, save the model/adapter into `context.output_dir`, return
    metrics (dataset_size, steps, train_loss, grad_norm_mean, train_tokens, seconds)."""
    import torch
    from datasets import Dataset

    started = time.perf_counter()
    train = context.config.train
    model, tokenizer, peft_config = load_policy(context)
    # The trainer's scratch folder sits beside the checkpoint's temporary folder, so a killed
    # run's leftovers are removed with the rest at the next start (loop.checkpoints).
    scratch = Path(context.output_dir).with_name(f"{TMP_PREFIX}trainer-round-{context.round_index}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        args = config_cls(
            output_dir=str(scratch),
            per_device_train_batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            num_train_epochs=train.epochs,
            max_length=train.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=context.seed,
            data_seed=context.seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,  # fp32: on CPU bf16 changes the default model's answers (offline-stack.md)
            gradient_checkpointing=False,  # memory is not the constraint at these sizes
            dataset_num_proc=None,
            **(config_kwargs or {}),
        )
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
        trainer.model.save_pretrained(context.output_dir)
        _sort_target_modules(Path(context.output_dir))
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) \
            if "input_ids" in trainer.train_dataset.column_names else 0
        return {
            "dataset_size": len(rows),
            "steps": trainer.state.global_step,
            "train_loss": output.training_loss,
            "grad_norm_mean": sum(norms) / len(norms) if norms else None,
            "train_tokens": int(tokens * train.epochs),
            "seconds": time.perf_counter() - started,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
