"""What the default job's training could reach with other answers: one LoRA SFT of the base model.

    python bench/sft_ceiling.py --answers reference [--problems 277] [--sample-seed 1]
    python bench/sft_ceiling.py --answers verified|reference-for-verified --db DB [--run RUN]

Trains a fresh LoRA adapter on the default model once, with the default job's sft settings
(LoRA r/alpha/targets and batch size from loop's defaults, learning rate 1e-3, 2 epochs,
padding-free, seed 0), then scores it as every round does: greedy answers to the arithmetic
task's 200 held-out problems at the task's evaluation token limit, graded by the `math`
verifier. The answers it trains on:

- `reference`: `--problems` train problems drawn at random (`--sample-seed`), each answered by
  the task's one-line solution (`metadata["solution"]`), the form the default job's model
  converges to ("47 + 38 = 85");
- `verified`: a finished loop run's own training data pooled over all its rounds: the shortest
  verified answer to each train task it solved (`--db`, `--run`, default the latest run);
- `reference-for-verified`: the same tasks as `verified`, answered by their one-line solutions
  (a store written by this version of the arithmetic source, which keeps them).

Comparing the three separates what limits rejection-sampling fine-tuning on this task: the text
of the model's answers, or which problems it can solve at all. Prints one line: the answers, how
many, held-out pass@1, mean answer tokens and training seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_answers(db: Path, run: str | None) -> list[tuple[Any, str]]:
    """[(task, answer)]: a loop run's own training data pooled over all its rounds, as the `sft`
    updater builds it (loop_trl.datasets.sft_rows, the shortest verified answer to each train
    task) from every round's train samples at once; `run` is an id or name, None the latest."""
    from loop.store import Store, StoreError
    from loop.updates import load_samples
    from loop_trl.datasets import sft_rows

    store = Store.open(db)
    try:
        row = store.get_run(run) if run else store.list_runs()[-1]
    except (StoreError, IndexError) as exc:
        raise SystemExit(f"sft_ceiling: {exc if isinstance(exc, StoreError) else 'no run'} "
                         f"in {db}") from None
    samples = [s for r in store.rounds(row["id"])
               for s in load_samples(store, row["id"], r["idx"], [])]
    task_of = {json.dumps(s.task.prompt): s.task for s in samples}
    return [(task_of[json.dumps(r["prompt"])], r["completion"][0]["content"])
            for r in sft_rows(samples, max_per_prompt=1, shortest_first=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", choices=["reference", "verified", "reference-for-verified"],
                        default="reference")
    parser.add_argument("--problems", type=int, default=277, help="for --answers reference")
    parser.add_argument("--sample-seed", type=int, default=1)
    parser.add_argument("--db", type=Path, help="a loop store, for the verified answers")
    parser.add_argument("--run", default=None, help="run id or name in --db (default: latest)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    if args.answers != "reference" and args.db is None:
        parser.error(f"--answers {args.answers} needs --db")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import loop
    from loop.config import build_config
    from loop_hf.backend import HFBackend
    from loop_math.arithmetic import ArithmeticTasks
    from loop_math.verifier import MathVerifier

    config = build_config("arithmetic", environ={})  # loop's defaults under the task file's
    tasks = ArithmeticTasks().load(config.task.options, seed=config.seed)
    if args.answers == "reference":
        chosen = random.Random(args.sample_seed).sample(tasks.train, args.problems)
        pairs = [(t, t.metadata[loop.SOLUTION_KEY]) for t in chosen]
    else:
        pairs = [(t, text if args.answers == "verified" else t.metadata[loop.SOLUTION_KEY])
                 for t, text in run_answers(args.db, args.run)]
    rows = [{"prompt": t.prompt, "completion": [{"role": "assistant", "content": text}]}
            for t, text in pairs]

    torch.manual_seed(0)
    scratch = tempfile.mkdtemp(prefix="sft-ceiling-")  # the trainer's; it saves nothing there
    path = loop.resolve_model(args.model)
    session = HFBackend().open(loop.ModelRef(base=args.model))  # tokenizer and chat template
    lora = config.train.lora
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=SFTConfig(output_dir=scratch, save_strategy="no",
                       per_device_train_batch_size=config.train.batch_size,
                       learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                       padding_free=True, max_length=None, gradient_checkpointing=False,
                       use_cpu=not torch.cuda.is_available(), bf16=False, seed=0, data_seed=0,
                       report_to="none", disable_tqdm=True, logging_steps=1000),
        train_dataset=Dataset.from_list(rows), processing_class=session.tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=lora.target_modules, task_type="CAUSAL_LM"),
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # one line of output: the result
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    session.model = trainer.model.merge_and_unload().eval()

    sampling = loop.Sampling(n=1, temperature=0.0, top_p=1.0,
                             max_new_tokens=config.evaluate.max_new_tokens, seed=0)
    outputs = session.generate([t.prompt for t in tasks.eval], sampling,
                               batch_size=config.evaluate.batch_size)
    verifier = MathVerifier()
    passed, tokens = 0, 0
    for task, (generation,) in zip(tasks.eval, outputs):
        passed += verifier.check(generation.text, task.reference).passed
        tokens += len(generation.token_ids)
    print(json.dumps({"answers": args.answers, "examples": len(rows),
                      "evaluated": len(tasks.eval),
                      "held_out_pass_at_1": passed / len(tasks.eval),
                      "mean_answer_tokens": round(tokens / len(tasks.eval), 1),
                      "train_seconds": round(train_seconds, 1),
                      "command": "python bench/sft_ceiling.py " + " ".join(sys.argv[1:])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
