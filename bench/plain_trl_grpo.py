"""The plain TRL script `bench/vs_trl.py` races against: GRPOTrainer with LoRA, as TRL's docs
recommend (a prompt dataset, a reward function, `GRPOTrainer(...).train()`), on a wall-clock
budget. Nothing of loop runs in it except the reward function, imported so both arms are graded
by the very same code (`loop_math.reward.binary` has TRL's reward-function contract).

    python bench/plain_trl_grpo.py --model DIR --data train.jsonl --out DIR
                                   [--budget 600] [--every 60] [--seed 0]
                                   [--max-completion-length 128]

`train.jsonl`: one {"prompt": [chat messages], "reference": "85"} per line. Settings, TRL's
defaults except where named: `GRPOConfig(per_device_train_batch_size=8, num_generations=4,
max_completion_length=128, learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0,
temperature=1.0, beta=0.0, use_vllm=False, bf16=False)`, so each step is 2 prompts x 4
completions with fresh rollouts (steps_per_generation=1, num_iterations=1), TRL's default loss
("dapo"), group reward scaling, epsilon 0.2; fp32; LoRA r=16/alpha 32 on all linear layers. The
learning rate is the one loop's SFT uses, not tuned; the scheduler is constant because training
stops on wall-clock time, not at a known step count.

The training clock starts at `on_train_begin` and stops when it passes `--budget`; every
`--every` seconds of it the adapter is saved (the time to save is taken off the clock, as
evaluation time is). `OUT/timeline.json` lists each checkpoint with its clock time
and step; the checkpoints are evaluated afterwards, by `bench/vs_trl.py`, exactly as loop
evaluates its rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from loop_math.reward import binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--every", type=float, default=60.0, help="checkpoint interval (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-completion-length", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = GRPOConfig(
        output_dir=str(args.out / "trainer"), max_steps=1_000_000, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=args.max_completion_length, learning_rate=2e-4,
        lr_scheduler_type="constant", warmup_steps=0, temperature=1.0, beta=0.0, use_vllm=False,
        bf16=False, gradient_checkpointing=False, use_cpu=True, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed)
    clock = Clock(args.budget, args.every, args.out)
    trainer = GRPOTrainer(
        model=model, reward_funcs=[binary], args=config, train_dataset=dataset,
        processing_class=tokenizer, callbacks=[clock],
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                               task_type="CAUSAL_LM"))
    trainer.train()
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    (args.out / "timeline.json").write_text(json.dumps({
        "checkpoints": clock.checkpoints, "budget_s": args.budget, "every_s": args.every,
        "steps": trainer.state.global_step, "rollout_rewards": rewards}, indent=1))


class Clock(TrainerCallback):
    """Saves the adapter every `every` training seconds (save time off the clock) and stops the
    trainer once the clock passes `budget`."""

    def __init__(self, budget: float, every: float, out: Path) -> None:
        self.budget, self.every, self.out = budget, every, out
        self.next_mark = every
        self.paused = 0.0
        self.checkpoints: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        clock = time.perf_counter() - self.started - self.paused
        if clock >= self.next_mark or clock >= self.budget:
            pause = time.perf_counter()
            folder = self.out / f"checkpoint-{state.global_step}"
            model.save_pretrained(folder)
            self.checkpoints.append({"train_s": round(clock, 1), "step": state.global_step,
                                     "adapter": str(folder)})
            print(f"checkpoint at {clock:.0f} s, step {state.global_step}", flush=True)
            while self.next_mark <= clock:
                self.next_mark += self.every
            self.paused += time.perf_counter() - pause
        if clock >= self.budget:
            control.should_training_stop = True


if __name__ == "__main__":
    main()
