"""Replaying mistakes: recurring-mistake rate with and without replay, on the default task.

    python bench/replay.py [--share 0.5] [--rounds 3] [--prompts 128] [--eval 200] [--steps 16]

Two runs with the same seed, task, sampling and training steps: `replay_share` 0 (fresh prompts
only) and `--share` (that share of each round's prompts are tasks with open mistakes, the
rest fresh). Measured per round:
- held-out pass@1;
- held-out recurrence: of the held-out problems the model got wrong in round k-1, the share it
  gets wrong again in round k with the same taxonomy kind (greedy decoding: an answer changes
  only when the model does);
- train recurrence (replay run): of the replayed tasks, the share whose first tries fail again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gain, machine, pass_at_1, run_loop, show  # noqa: E402


def recurrence(db: Path, run_name: str, rounds: int) -> tuple[list[float | None], list[str]]:
    """Held-out recurrence per round (None for round 0) and, per round, the train recurrence
    of replayed tasks ("failed again/replayed")."""
    import json

    from loop.critics import classify
    from loop.store import Store, open_db

    store = Store(open_db(db))
    run_id = store.get_run(run_name)["id"]
    held_out, train = [None], ["–"]
    previous: dict[str, str] = {}
    for idx in range(rounds + 1):
        attempts = store.attempts(run_id, idx, "eval")
        verdicts = store.verdicts(a.id for a in attempts)
        wrong = {a.task_id: classify(a, verdicts[a.id]) or "?" for a in attempts
                 if not all(v.passed for v in verdicts[a.id].values())}
        if idx > 0:
            again = sum(wrong.get(t) == kind for t, kind in previous.items())
            held_out.append(again / len(previous) if previous else None)
            stages = json.loads(store.get_round(run_id, idx)["stages_json"])
            replayed = stages["select"].get("replayed", [])
            first = [a for a in store.attempts(run_id, idx, "train") if a.depth == 0]
            v = store.verdicts(a.id for a in first)
            solved = {a.task_id for a in first if all(x.passed for x in v[a.id].values())}
            train.append(f"{sum(t not in solved for t in replayed)}/{len(replayed)}"
                         if replayed else "–")
        previous = wrong
    return held_out, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--keep", default=None)
    args = parser.parse_args()

    db = Path(args.keep or tempfile.mkdtemp(prefix="loop-replay-")) / "loop.db"
    common = ["--rounds", str(args.rounds), "--set", f"select.prompts_per_round={args.prompts}",
              "--set", f"evaluate.problems={args.eval}", "--set", f"train.max_steps={args.steps}",
              "--set", "task.critics=[taxonomy]"]
    results = {}
    for name, share in (("no-replay", 0.0), (f"replay-{args.share:g}", args.share)):
        wall = run_loop(db, name, "arithmetic", args.config, *common,
                        "--set", f"select.replay_share={share}")
        results[name] = (show(db, name), wall, *recurrence(db, name, args.rounds))
        print(f"[{name}] done in {wall:.0f} s", flush=True)

    print(f"\nmachine: {machine()}")
    print(f"command: python bench/replay.py --share {args.share:g} --rounds {args.rounds} "
          f"--prompts {args.prompts} --eval {args.eval} --steps {args.steps}")
    head = " | ".join(f"round {i}" for i in range(args.rounds + 1))
    print(f"\n| run | measure | {head} |\n|---|---|" + "---|" * (args.rounds + 1))
    for name, (data, wall, held_out, train) in results.items():
        scores = pass_at_1(data)
        print(f"| {name} | held-out pass@1 ({gain(scores)}, {wall:.0f} s) | "
              + " | ".join(f"{s:.3f}" for s in scores) + " |")
        print(f"| {name} | held-out recurrence | "
              + " | ".join("–" if r is None else f"{100 * r:.0f}%" for r in held_out) + " |")
        print(f"| {name} | replayed tasks failed again | " + " | ".join(train) + " |")
    print(f"\nstore: {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
