"""The select stage's curriculum against plain selection, on the default job, in one invocation.

    python bench/curriculum.py [--rounds 3] [--prompts 48] [--eval 100] [--steps 12]
                               [--train-size 100] [--share 0.5] [--method sft] [--keep DIR]

Two runs of `loop run arithmetic --config configs/default.yaml` (subprocesses, as a user would)
with the same seed, rounds, prompts per round, samples per prompt and optimizer steps per round
(`train.max_steps`: the same training compute whatever the size of the dataset each arm builds;
`--steps 0` leaves it to the config's epochs):
- `plain`: today's selection, fresh tasks in the source's order (reused in that order when none
  are left);
- `curriculum`: `select.curriculum` on with `--share`: tasks every first try solved when last
  seen are skipped, `--share` of each round's prompts are tasks solved sometimes (nearest half
  solved first), the rest fresh. With a group method (grpo, nft) the group rules apply too
  (never-solved tasks skipped); `extra_share` stays 0, so both arms sample the same number of
  answers.

Reduced scale by default, for a 2-core CPU: 3 rounds of 48 prompts, 100 held-out problems, 12
steps a round. The task's train split is cut to `--train-size` 100 problems
(`task.options.train_size`; the held-out split does not change with it), so both arms revisit
tasks by round 3 and skipping solved tasks can matter. Round 0 evaluates the same untouched model
in both arms. Prints held-out pass@1 per round for both arms and their ratio (curriculum / plain),
and per round what each arm's select stage did and how many answers were trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, finished_run, gain, machine, pass_at_1, run_loop  # noqa: E402


def select_stats(db: Path, name: str) -> list[dict]:
    """Per training round, the select stage's stored stats."""
    import sqlite3

    conn = sqlite3.connect(db)
    rows = conn.execute("select r.idx, r.stages_json from rounds r join runs u on u.id = r.run_id "
                        "where u.name = ? and r.idx > 0 order by r.idx", [name]).fetchall()
    conn.close()
    return [json.loads(stages).get("select", {}) for _, stages in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=48, help="training prompts per round")
    parser.add_argument("--eval", type=int, default=100, help="held-out problems")
    parser.add_argument("--steps", type=int, default=12,
                        help="optimizer steps per round (0: the config's epochs decide)")
    parser.add_argument("--train-size", type=int, default=100,
                        help="training problems of the task (0: the task file's)")
    parser.add_argument("--share", type=float, default=0.5,
                        help="select.curriculum.share of the curriculum arm")
    parser.add_argument("--method", default="sft")
    parser.add_argument("--keep", default=None, help="keep the store in this folder")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs already in the --keep store")
    args = parser.parse_args()

    db = Path(args.keep or tempfile.mkdtemp(prefix="loop-curriculum-")) / "loop.db"
    common = ["--method", args.method, "--rounds", str(args.rounds),
              "--set", f"select.prompts_per_round={args.prompts}",
              "--set", f"evaluate.problems={args.eval}"]
    if args.steps:
        common += ["--set", f"train.max_steps={args.steps}"]
    if args.train_size:
        common += ["--set", f"task.options.train_size={args.train_size}"]
    arms = {"plain": ["--set", "select.curriculum.enabled=false"],
            "curriculum": ["--set", "select.curriculum.enabled=true",
                           "--set", f"select.curriculum.share={args.share}"]}
    results = {}
    for name, settings in arms.items():
        done = finished_run(db, name) if args.reuse else None
        if done is None:
            run_loop(db, name, "arithmetic", args.config, *common, *settings)
            done = finished_run(db, name)
        results[name] = (*done, select_stats(db, name))
        print(f"[{name}] done in {done[1]:.0f} s", flush=True)

    print(f"\nmachine: {machine()}")
    config = Path(args.config).resolve()
    shown = f"--config {config.relative_to(REPO)} " if config.is_relative_to(REPO) else ""
    print(f"command: python bench/curriculum.py {shown}--rounds {args.rounds} "
          f"--prompts {args.prompts} "
          f"--eval {args.eval} --steps {args.steps} --train-size {args.train_size} "
          f"--share {args.share:g} --method {args.method}")
    head = " | ".join(f"round {i}" for i in range(args.rounds + 1))
    print(f"\nheld-out pass@1 (n={args.eval}, greedy)\n\n| arm | {head} | gain vs round 0 "
          "| wall s |\n|---|" + "---|" * (args.rounds + 3))
    scores = {}
    for name, (data, wall, _) in results.items():
        scores[name] = pass_at_1(data)
        cells = " | ".join(f"{s:.3f}" for s in scores[name])
        print(f"| {name} | {cells} | {gain(scores[name])} | {wall:.0f} |")
    ratios = " | ".join(f"{c / p:.2f}" if p else "–"
                        for p, c in zip(scores["plain"], scores["curriculum"]))
    print(f"| curriculum / plain | {ratios} | | |")

    print("\nper training round: prompts sampled (frontier tasks taken / tasks skipped / tasks "
          "revisited from earlier rounds), train prompts a first try solved, answers trained on"
          "\n\n| arm | " + " | ".join(f"round {i}" for i in range(1, args.rounds + 1))
          + " |\n|---|" + "---|" * args.rounds)
    for name, (data, _, selects) in results.items():
        cells, seen = [], set()
        for row, stats in zip(data["rounds"][1:], selects):
            ids = stats.get("task_ids", [])
            cur = stats.get("curriculum")
            taken = f"{len(cur['frontier'])}/{cur['skipped']}" if cur else "–/–"
            size = row["update"]["dataset_size"] if row["update"] else 0
            cells.append(f"{len(ids)} ({taken}/{len(set(ids) & seen)}), "
                         f"{row['train']['solved_prompts']}/{row['train']['prompts']} solved, "
                         f"{size} trained")
            seen.update(ids)
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nstore: {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
