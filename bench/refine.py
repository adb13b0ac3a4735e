"""Refinement vs best-of-n at equal total samples, on the default task.

    python bench/refine.py [--arms best-of-n,verifier_feedback,taxonomy,self_critique,judge]
                           [--rounds 3] [--prompts 128] [--n 4] [--eval 200] [--steps 16]

Arms (same seed, prompts, training steps and method):
- `best-of-n`: 2n samples per prompt, no refinement;
- one arm per critic: n samples per prompt, then up to 2 repair turns with that critic, capped at
  n x prompts extra samples per round (`refine.budget`), so no arm samples more than best-of-n.
  `judge` reviews with the untouched base model through the `hf` backend.

Prints held-out pass@1 per round per arm (gain against round 0, measured in the same run),
the samples actually drawn, the repair rate, and the repair rate per mistake kind (the taxonomy
kind of the answer being repaired, classified from the stored verdicts).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gain, machine, pass_at_1, run_loop, show  # noqa: E402

ARMS = "best-of-n,verifier_feedback,taxonomy,self_critique,judge"


def arm_settings(arm: str, n: int, prompts: int, model: str) -> list[str]:
    if arm == "best-of-n":
        return ["--set", f"generate.n={2 * n}", "--set", "refine.depth=0"]
    critic = arm if arm != "judge" else f"{{name: judge, options: {{model: {model}}}}}"
    return ["--set", f"generate.n={n}", "--set", "refine.depth=2",
            "--set", f"refine.budget={n * prompts}", "--set", f"task.critics=[{critic}]"]


def repair_rates(db: Path, run_name: str) -> tuple[dict[str, tuple[int, int]], int, int]:
    """kind -> (repairs, repaired) over the run's repairs; total samples; repairs."""
    from loop.critics import classify
    from loop.store import Store, open_db

    store = Store(open_db(db))
    run_id = store.get_run(run_name)["id"]
    conn = sqlite3.connect(db)
    samples = conn.execute("select count(*) from attempts where run_id = ? and purpose = 'train'",
                           [run_id]).fetchone()[0]
    by_kind: dict[str, tuple[int, int]] = {}
    repairs = 0
    for idx in range(1, 100):
        attempts = store.attempts(run_id, idx, "train")
        if not attempts:
            break
        by_id = {a.id: a for a in attempts}
        verdicts = store.verdicts(by_id)
        for attempt in attempts:
            if attempt.depth == 0 or attempt.parent_id not in by_id:
                continue
            repairs += 1
            parent = by_id[attempt.parent_id]
            kind = classify(parent, verdicts[parent.id]) or "?"
            ok = all(v.passed for v in verdicts[attempt.id].values())
            done, fixed = by_kind.get(kind, (0, 0))
            by_kind[kind] = (done + 1, fixed + int(ok))
    return by_kind, samples, repairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=ARMS)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=4, help="first-try samples per prompt")
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per round")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the judge's model")
    parser.add_argument("--keep", default=None)
    args = parser.parse_args()

    db = Path(args.keep or tempfile.mkdtemp(prefix="loop-refine-")) / "loop.db"
    common = ["--rounds", str(args.rounds), "--set", f"select.prompts_per_round={args.prompts}",
              "--set", f"evaluate.problems={args.eval}", "--set", f"train.max_steps={args.steps}"]
    results = {}
    for arm in args.arms.split(","):
        wall = run_loop(db, arm, "arithmetic", args.config, *common,
                        *arm_settings(arm, args.n, args.prompts, args.model))
        results[arm] = (show(db, arm), wall, *repair_rates(db, arm))
        print(f"[{arm}] done in {wall:.0f} s", flush=True)

    print(f"\nmachine: {machine()}")
    print(f"command: python bench/refine.py --arms {args.arms} --rounds {args.rounds} "
          f"--prompts {args.prompts} --n {args.n} --eval {args.eval} --steps {args.steps}")
    rounds = " | ".join(f"round {i}" for i in range(args.rounds + 1))
    print(f"\n| arm | {rounds} | gain vs round 0 | train samples | repairs (repaired) | wall s |")
    print("|---|" + "---|" * (args.rounds + 5))
    for arm, (data, wall, kinds, samples, repairs) in results.items():
        scores = pass_at_1(data)
        fixed = sum(f for _, f in kinds.values())
        rate = f"{repairs} ({100 * fixed / repairs:.0f}%)" if repairs else "–"
        print(f"| {arm} | " + " | ".join(f"{s:.3f}" for s in scores)
              + f" | {gain(scores)} | {samples} | {rate} | {wall:.0f} |")
    all_kinds = sorted({kind for r in results.values() for kind in r[2]})
    refine_arms = [a for a in results if results[a][4]]
    if refine_arms:
        print("\nrepair rate per mistake kind (repaired / repairs)\n\n| kind | "
              + " | ".join(refine_arms) + " |\n|---|" + "---|" * len(refine_arms))
        for kind in all_kinds:
            cells = []
            for arm in refine_arms:
                done, fixed = results[arm][2].get(kind, (0, 0))
                cells.append(f"{fixed}/{done}" if done else "–")
            print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"\nstore: {db}")
    print(json.dumps({a: pass_at_1(r[0]) for a, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
