"""Decoding benchmark: loop's row-dropping decoder against transformers' `generate`, same run.

    python bench/decoding.py [--prompts 64] [--max-new-tokens 128] [--batch 64] [--model REF]

Greedy answers of the default model to 2-digit additions (the default task's prompt). Prints useful
tokens/s (tokens up to and including end-of-sequence, divided by wall time) for
1. transformers `model.generate` with static padded batches (the baseline),
2. `loop_hf.decoding.decode_batch` (finished rows leave the batch and the KV cache),
and the ratio 2/1. It also checks that both produce the same tokens.
"""

from __future__ import annotations

import argparse
import os
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    import torch

    from loop.schema import ModelRef
    from loop_hf.backend import HFBackend
    from loop_hf.decoding import decode_batch

    session = HFBackend().open(ModelRef(base=args.model))
    tok, model = session.tokenizer, session.model
    rng = random.Random(0)
    prompts = [[{"role": "system", "content": "Answer with only the number."},
                {"role": "user", "content": f"What is {rng.randint(10, 99)}+{rng.randint(10, 99)}?"}]
               for _ in range(args.prompts)]
    encoded = [session.encode(p) for p in prompts]

    def useful(ids: list[int]) -> list[int]:
        for i, t in enumerate(ids):
            if t in session.eos_token_ids:
                return ids[: i + 1]
        return ids

    started = time.perf_counter()
    baseline: list[list[int]] = []
    with torch.inference_mode():
        for start in range(0, len(encoded), args.batch):
            chunk = encoded[start:start + args.batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[session.pad_token_id] * (width - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=args.max_new_tokens,
                                 pad_token_id=session.pad_token_id)
            baseline += [useful(row) for row in out[:, width:].tolist()]
    t_static = time.perf_counter() - started

    started = time.perf_counter()
    ours: list[list[int]] = []
    for start in range(0, len(encoded), args.batch):
        decoded = decode_batch(model, encoded[start:start + args.batch], n=1,
                               max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0,
                               eos_token_ids=session.eos_token_ids,
                               pad_token_id=session.pad_token_id)
        ours += [d[0].token_ids for d in decoded]
    t_ours = time.perf_counter() - started

    tokens = sum(map(len, baseline))
    same = sum(a == b for a, b in zip(baseline, ours))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; model {args.model}")
    print(f"command: python bench/decoding.py --prompts {args.prompts} "
          f"--max-new-tokens {args.max_new_tokens} --batch {args.batch}")
    print(f"useful tokens: {tokens} (ours {sum(map(len, ours))}); identical answers "
          f"{same}/{len(baseline)}")
    print(f"transformers generate (static batches): {t_static:6.1f} s  {tokens / t_static:6.1f} tok/s")
    print(f"loop decode_batch (drops finished rows): {t_ours:6.1f} s  "
          f"{sum(map(len, ours)) / t_ours:6.1f} tok/s")
    print(f"speed-up: {t_static / t_ours:.2f}x")


if __name__ == "__main__":
    main()
