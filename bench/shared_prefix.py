"""Shared-prefix decoding: prompts that start alike, prefilled whole or with their prefix once.

    python bench/shared_prefix.py [--task calculator|arithmetic] [--prompts 24]
                                  [--max-new-tokens 40] [--repeat 2]

A task's held-out prompts, rendered for the default model, decoded greedily by
`loop_hf.decoding.decode_batch` with the shared prefix computed once (its default
`min_shared_prefix`) and with every prompt prefilled whole (the baseline), alternately, in one
run. `calculator` (tasks/calculator.yaml): the system message with loop's tool description and
the worked tool-call exchange, then the question; ~270 tokens, all but the question shared.
`arithmetic` (tasks/arithmetic.yaml, the default job): the system message and "What is ", 17 of
29 tokens. Prints each arm's best wall time, the ratio, and whether both gave the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["calculator", "arithmetic"], default="calculator")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import loop
    from loop.config import load_task_file, task_run_settings
    from loop_hf.backend import HFBackend
    from loop_hf.decoding import decode_batch
    from loop_math.arithmetic import ArithmeticTasks
    from loop_math.calculator import CalculatorEpisode
    from loop.tool_calls import tool_schema, with_tools_text

    section = load_task_file(str(REPO / "tasks" / f"{args.task}.yaml"))
    task_run_settings(section)
    tasks = ArithmeticTasks().load(section["options"], seed=0).eval[:args.prompts]
    session = HFBackend().open(loop.ModelRef(base="smollm2-135m-instruct"))
    if args.task == "calculator":
        schema = [tool_schema(CalculatorEpisode(tasks[0]).calculator)]
        prompts = [session.chat.prompt_ids(with_tools_text(t.prompt, schema)) for t in tasks]
    else:
        prompts = [session.encode(t.prompt) for t in tasks]
    eos = session.eos_token_ids

    def decode(**min_shared_prefix):
        started = time.perf_counter()
        out = decode_batch(session.model, prompts, n=1, max_new_tokens=args.max_new_tokens,
                           temperature=0, top_p=1.0, eos_token_ids=eos,
                           pad_token_id=session.pad_token_id, **min_shared_prefix)
        return time.perf_counter() - started, [o[0].token_ids for o in out]

    shared_s, whole_s, same = [], [], True
    for _ in range(args.repeat):
        seconds, a = decode()  # decode_batch's default
        shared_s.append(seconds)
        seconds, b = decode(min_shared_prefix=10**9)
        whole_s.append(seconds)
        same = same and a == b
    tokens = sum(len(t) for t in a)
    lengths = sorted(len(p) for p in prompts)
    print(f"{len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens, {tokens} new tokens; "
          f"prefix prefilled once: {min(shared_s):.2f} s, every prompt whole: {min(whole_s):.2f} "
          f"s; {min(whole_s) / min(shared_s):.2f}x; same tokens: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
