"""Efficacy benchmark: run the default config end to end and print what the README quotes.

    python bench/efficacy.py [--config configs/default.yaml] [--task arithmetic] [--keep DIR]

Runs `loop run` in a fresh store (a subprocess, exactly as a user would), then prints the
per-round table (train solve rate, held-out pass@1, share of answers cut off at the token limit,
tokens/s, stage times), the wall time, and the gain of the last round over round 0 as a ratio
against the baseline measured in the same run: round 0 is the untouched model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOP, REPO, machine, show  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--keep", default=None, help="keep the store in this folder")
    parser.add_argument("extra", nargs="*", help="extra `loop run` arguments (e.g. --set k=v)")
    args = parser.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="loop-efficacy-"))
    db = folder / "loop.db"
    started = time.perf_counter()
    subprocess.run([*LOOP, "run", args.task, "--config", args.config, "--db", str(db),
                    "--name", "efficacy", *args.extra], check=True)
    wall = time.perf_counter() - started
    data = show(db, "efficacy")

    print(f"\nmachine: {machine()}")
    print(f"command: python bench/efficacy.py --config {args.config} --task {args.task}")
    print("\n| round | train solved | train passed | train cut | held-out pass@1 | eval cut "
          "| eval mean tokens | gen tok/s | round s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in data["rounds"]:
        t, e = r["train"], r["eval"]
        solved = f"{t['solved_prompts']}/{t['prompts']}" if t["prompts"] else "–"
        passed = f"{t['passed']}/{t['attempts']}" if t["attempts"] else "–"
        cut = f"{100 * t['truncated_share']:.1f}%" if t["truncated_share"] is not None else "–"
        tps = r["tokens_per_s"].get("generate") or r["tokens_per_s"].get("evaluate") or 0
        print(f"| {r['index']} | {solved} | {passed} | {cut} | {e['pass_at_1']:.3f} (n={e['n']}) "
              f"| {100 * e['truncated_share']:.1f}% | {e['mean_completion_tokens']:.1f} "
              f"| {tps:.0f} | {sum(r['timings'].values()):.0f} |")
    first, last = data["rounds"][0]["eval"], data["rounds"][-1]["eval"]
    gain = last["pass_at_1"] - first["pass_at_1"]
    ratio = last["pass_at_1"] / first["pass_at_1"] if first["pass_at_1"] else float("inf")
    print(f"\nheld-out pass@1: round 0 {first['pass_at_1']:.3f} -> round {len(data['rounds']) - 1} "
          f"{last['pass_at_1']:.3f}: {100 * gain:+.1f} points, {ratio:.2f}x the round-0 baseline")
    print(f"wall time (whole `loop run`, incl. model loading): {wall:.0f} s = {wall / 60:.1f} min")
    print(f"store: {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
