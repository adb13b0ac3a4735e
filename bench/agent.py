"""The calculator demo: does the default model learn to use a tool, and what does the tool buy?

    python bench/agent.py [--rounds 3] [--work bench/results/agent] [--redo]

Runs, as a user would, into one store:
- `loop run calculator` (tasks/calculator.yaml: 3-digit by 2-digit products, a `calculator`
  tool, one worked tool-call exchange in the prompt; sft on the round's verified episodes) with
  the default run settings;
- the same model on the same held-out problems without tools (`--rounds 0`, the arithmetic
  source's plain "Answer with only the number." prompt, no environment): what the tool adds.

Prints, per round: held-out pass@1 (greedy), the share of held-out episodes with a well-formed
tool call that worked, mean model turns per episode, the round's seconds; then the no-tool
pass@1 and the run's wall time. Written to `bench/results/agent.json`. A run already finished in
WORK is read back, not redone (`--redo` redoes both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOP, REPO, finished_run, gain, machine  # noqa: E402

RESULT = REPO / "bench" / "results" / "agent.json"
TASK = REPO / "tasks" / "calculator.yaml"


def no_tool_task(work: Path) -> Path:
    """tasks/calculator.yaml's problems without the environment, the worked exchange or the
    tool instructions: the arithmetic source's own prompt."""
    section = yaml.safe_load(TASK.read_text())
    options = {k: v for k, v in section["options"].items()
               if k not in ("few_shot", "system_prompt")}
    plain = {"source": section["source"], "options": options,
             "verifiers": section["verifiers"], "rewards": section["rewards"]}
    path = work / "calculator-no-tools.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
    return path


def run(db: Path, name: str, task: Path, *args: str) -> tuple[dict, float]:
    """(show --json, wall seconds) of run `name` in `db`, run first unless it finished there."""
    done = finished_run(db, name)
    if done is None:
        subprocess.run([*LOOP, "run", str(task), "--db", str(db), "--name", name, *args],
                       check=True)
        done = finished_run(db, name)
    assert done is not None, f"run {name} did not finish"
    return done


def table(data: dict, wall: float, no_tools: float) -> tuple[list[dict], str]:
    rows = []
    for r in data["rounds"]:
        stats = r.get("episodes", {}).get("evaluate", {})
        rows.append({"round": r["index"], "pass_at_1": r["eval"]["pass_at_1"],
                     "tool_call_share": stats.get("tool_call_share"),
                     "mean_turns": stats.get("mean_turns"),
                     "tool_errors": stats.get("tool_errors"),
                     "seconds": round(sum(r["timings"].values()), 1)})
    lines = ["| round | held-out pass@1 | tool call share | mean turns | without tools | s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['round']} | {row['pass_at_1']:.3f} | "
                     f"{100 * (row['tool_call_share'] or 0):.0f}% | {row['mean_turns'] or 0:.2f} "
                     f"| {no_tools:.3f} | {row['seconds']:.0f} |")
    scores = [r["pass_at_1"] for r in rows]
    lines.append(f"\nheld-out pass@1 {scores[0]:.3f} -> {scores[-1]:.3f} ({gain(scores)}) in "
                 f"{wall / 60:.1f} min; the same model without tools: {no_tools:.3f}")
    return rows, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "agent")
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.work / "agent.db"
    if args.redo:
        db.unlink(missing_ok=True)
    data, wall = run(db, "calculator", TASK, "--rounds", str(args.rounds))
    base, _ = run(db, "calculator-no-tools", no_tool_task(args.work), "--rounds", "0")
    no_tools = base["rounds"][0]["eval"]["pass_at_1"]
    rows, text = table(data, wall, no_tools)
    RESULT.write_text(json.dumps({
        "machine": machine(), "command": f"python bench/agent.py --rounds {args.rounds}",
        "rounds": rows, "no_tools_pass_at_1": no_tools, "wall_seconds": round(wall, 1),
        "eval_problems": data["rounds"][0]["eval"]["n"],
    }, indent=1))
    print(text)


if __name__ == "__main__":
    main()
