"""Sampling throughput of the vllm backend against the hf backend, measured in one process run.

    python plugins/loop-vllm/bench_throughput.py --model smollm2-135m-instruct \
        --prompts 32 --n 4 --max-new-tokens 128 --vllm-python .venv-vllm/bin/python

Each backend opens a session on the same model, generates the same chat prompts (2-digit
additions, as the default task asks them) with the same sampling, and closes; the table gives
open and generate seconds, tokens generated and tokens per second of the generate call. Run the
backends one after the other on an otherwise idle machine: both use every core.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from loop.records import ModelRef, Sampling


def prompts(count: int, bare: bool, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]
    if bare:  # the tiny char models' format
        return [[{"role": "user", "content": f"{a}+{b}="}] for a, b in pairs]
    return [[{"role": "user", "content": f"What is {a}+{b}? Answer with the number."}]
            for a, b in pairs]


def measure(name: str, open_session, batch: list[list[dict]], sampling: Sampling) -> dict:
    started = time.perf_counter()
    session = open_session()
    opened = time.perf_counter()
    try:
        session.generate(batch[:2], sampling.model_copy(update={"max_new_tokens": 4}))  # warm-up
        begin = time.perf_counter()
        out = session.generate(batch, sampling)
        seconds = time.perf_counter() - begin
    finally:
        session.close()
    closed = time.perf_counter()
    tokens = sum(g.completion_tokens for group in out for g in group)
    return {"backend": name, "open_s": opened - started, "generate_s": seconds, "tokens": tokens,
            "tok_per_s": tokens / seconds, "close_s": closed - begin - seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--bare", action="store_true", help="'a+b=' prompts (tiny char models)")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--vllm-python", default=os.path.join(".venv-vllm", "bin", "python"))
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the vllm worker (repeatable)")
    args = parser.parse_args()

    batch = prompts(args.prompts, args.bare)
    sampling = Sampling(n=args.n, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, seed=0)
    ref = ModelRef(base=args.model)
    rows = []
    for backend in args.backends.split(","):
        if backend == "hf":
            from loop_hf.backend import HFBackend

            rows.append(measure("hf", lambda: HFBackend().open(ref), batch, sampling))
        elif backend == "vllm":
            from loop_vllm.backend import VLLMBackend
            from loop_vllm.options import VLLMOptions

            env = dict(item.split("=", 1) for item in args.env)
            options = VLLMOptions(python=args.vllm_python, max_model_len=args.max_model_len,
                                  env={"VLLM_CPU_KVCACHE_SPACE": "1", **env})
            label = "vllm" + (f" ({', '.join(args.env)})" if args.env else "")
            rows.append(measure(label, lambda: VLLMBackend().open(ref, options), batch, sampling))
        else:
            sys.exit(f"unknown backend {backend!r}")
    print(f"model {args.model}: {args.prompts} prompts x n={args.n}, temperature "
          f"{args.temperature}, max_new_tokens {args.max_new_tokens}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| backend | open s | generate s | tokens | tok/s | close s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['open_s']:.1f} | {r['generate_s']:.1f} | {r['tokens']} | "
              f"{r['tok_per_s']:.0f} | {r['close_s']:.1f} |")


if __name__ == "__main__":
    main()
