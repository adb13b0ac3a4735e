"""Update methods compared: the default task with each method, equal sampling and training.

    python bench/methods.py [--methods sft,dpo,kto,grpo,nft,redi] [--rounds 3] [--prompts 128]
                            [--eval 200] [--steps 16] [--samples 4] [--seed 0] [--keep DIR]

Every method runs `loop run arithmetic --config configs/default.yaml --method M` (a subprocess,
as a user would) with the same seed, so all of them evaluate the same untouched model in round 0
and sample the same prompts with the same n per round (equal sampling budget), and each trains
exactly `--steps` optimizer steps of `train.batch_size` per round (`train.max_steps`: equal
training steps, whatever the size of the dataset a method builds); sft trains on verified answers
only, without the default job's references. Prints held-out pass@1 per
round per method, the gain over round 0 as a ratio against that baseline (measured in the same
run), wall time, and each round's dataset size and what the group methods skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, finished_run, gain, machine, pass_at_1, run_loop  # noqa: E402


def own_answers_only(method: str) -> list[str]:
    """Flags that make `method` learn from the model's own answers alone, like every method here:
    the default job's sft also trains on references to the problems it leaves unsolved (the task
    file's sft options), data the others lack."""
    return ["--set", "train.options.references=never"] if method == "sft" else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sft,dpo,kto,grpo,nft,redi")
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=128, help="training prompts per round")
    parser.add_argument("--eval", type=int, default=200, help="held-out problems")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per round")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0,
                        help="the run's seed (sampling, training, which prompts)")
    parser.add_argument("--keep", default=None, help="keep the store in this folder")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs already in the --keep store (wall time from "
                             "their timestamps) and run only the missing methods")
    args = parser.parse_args()

    db = Path(args.keep or tempfile.mkdtemp(prefix="loop-methods-")) / "loop.db"
    settings = ["--rounds", str(args.rounds),
                "--set", f"select.prompts_per_round={args.prompts}",
                "--set", f"evaluate.problems={args.eval}",
                "--set", f"generate.n={args.samples}",
                "--set", f"train.max_steps={args.steps}",
                "--set", f"seed={args.seed}"]
    results = {}
    for method in args.methods.split(","):
        done = finished_run(db, method) if args.reuse else None
        if done is None:
            run_loop(db, method, "arithmetic", args.config, "--method", method, *settings,
                     *own_answers_only(method))
            done = finished_run(db, method)
        results[method] = done  # wall time: the run's stored start to finish (rounds 0..N)
        wall = done[1]
        print(f"[{method}] done in {wall:.0f} s", flush=True)

    print(f"\nmachine: {machine()}")
    print(f"command: python bench/methods.py --methods {args.methods} --rounds {args.rounds} "
          f"--prompts {args.prompts} --eval {args.eval} --steps {args.steps} "
          f"--samples {args.samples} --seed {args.seed}")
    head = " | ".join(f"round {i}" for i in range(args.rounds + 1))
    print(f"\nheld-out pass@1 (n={args.eval}, greedy)\n\n| method | {head} | gain vs round 0 "
          "| wall s |\n|---|" + "---|" * (args.rounds + 3))
    for method, (data, wall) in results.items():
        scores = pass_at_1(data)
        cells = " | ".join(f"{s:.3f}" for s in scores)
        print(f"| {method} | {cells} | {gain(scores)} | {wall:.0f} |")
    print("\ntraining data per round (rows the method built; groups used / skipped equal / "
          "incomplete)\n\n| method | " + " | ".join(f"round {i}" for i in range(1, args.rounds + 1))
          + " |\n|---|" + "---|" * args.rounds)
    for method, (data, _) in results.items():
        cells = []
        for update in [r["update"] for r in data["rounds"][1:]]:
            if update is None:
                cells.append("–")
                continue
            m = update["metrics"]
            cell = str(update.get("dataset_size", 0))
            if "groups" in m:
                cell += (f" ({m['groups']}/{m['groups_skipped_equal_rewards']}/"
                         f"{m['groups_skipped_incomplete']})")
            if "pairs" in m:
                cell += " pairs"
            cells.append(cell + f", {m.get('steps', 0)} steps")
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"\nstore: {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
