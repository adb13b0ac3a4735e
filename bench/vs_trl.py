"""P3, time to target: `loop run` against a plain TRL GRPOTrainer script on the same model, task,
reward, LoRA settings, machine and wall-clock budget.

    python bench/vs_trl.py [--budget 600] [--every 60] [--config configs/vs-trl.yaml]
                           [--work bench/results/vs_trl] [--arms plain,loop]

- Task: `loop run arithmetic`'s own problems (seed 0): the plain script trains on its train split
  (written to `WORK/train.jsonl`), both are evaluated on its 200 held-out problems.
- Plain arm: `bench/plain_trl_grpo.py` (TRL's GRPOTrainer as its docs show it: 2 prompts x 4
  completions per step, fresh rollouts every step, lr 2e-4 constant, temperature 1.0, beta 0,
  fp32, LoRA r=16/alpha 32 on all linear layers), adapter saved every `--every` training seconds.
- loop arm: `loop run arithmetic --config CONFIG` as a user runs it, clocked from the moment the
  command starts (process start-up, model loading, store writes: all counted); only its held-out
  evaluations are taken off its clock, as the plain arm's evaluations are.
- Evaluation: the same for both, loop's evaluate stage (greedy, one answer per held-out problem,
  the `math` verifier, `evaluate.max_new_tokens` of CONFIG = the plain arm's 128 completion
  tokens). The plain arm's checkpoints are evaluated afterwards through the same backend and
  verifier; the loop arm's evaluations are its own rounds'.
- Result: target = the plain script's accuracy at the end of its budget; for each arm the first
  clock time at which it reaches the target; ratio = loop's time / plain's time (goal <= 0.25).
  Written to `bench/results/vs_trl.json` and the curve to `bench/results/vs_trl.png`, which
  `bench/perf.py --write` puts in BENCHMARKS.md. An arm whose results exist in WORK is not run
  again (delete the folder, or name the arms to redo with `--arms`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOP, REPO, machine  # noqa: E402

TASK = "arithmetic"
RESULT = REPO / "bench" / "results" / "vs_trl.json"  # and vs_trl.png beside it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds per arm")
    parser.add_argument("--every", type=float, default=60.0,
                        help="the plain arm's checkpoint interval (its time resolution)")
    parser.add_argument("--config", default=str(REPO / "configs" / "vs-trl.yaml"))
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "vs_trl")
    parser.add_argument("--arms", default="", help="arms to redo even if their results exist")
    parser.add_argument("--only", choices=("plain", "loop"),
                        help="run this arm only, no comparison")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    redo = set(filter(None, args.arms.split(",")))

    config, tasks = load_task(args.config)
    plain = args.work / "plain.json"
    if args.only != "loop" and ("plain" in redo or not plain.exists()):
        plain.write_text(json.dumps(run_plain(args, config, tasks, redo), indent=1))
    loop_arm = args.work / "loop.json"
    if args.only != "plain" and ("loop" in redo or not loop_arm.exists()):
        loop_arm.write_text(json.dumps(run_loop_arm(args), indent=1))
    if args.only:
        return 0
    result = compare(json.loads(plain.read_text()), json.loads(loop_arm.read_text()), args)
    RESULT.write_text(json.dumps(result, indent=1))
    plot(result, RESULT.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("plain", "loop")}, indent=1))
    return 0


def load_task(config_path: str):
    """The loop config and the task set loop itself would load for this benchmark."""
    from loop.runs import plan_run

    plan = plan_run(TASK, Path(config_path))
    return plan.config, plan.tasks


# ----- the plain TRL arm ------------------------------------------------------------------------

def run_plain(args, config, tasks, redo: set[str]) -> dict:
    from loop import resolve_model

    data = args.work / "train.jsonl"
    with data.open("w") as out:
        for task in tasks.train:
            out.write(json.dumps({"prompt": task.prompt, "reference": task.reference}) + "\n")
    out_dir = args.work / "plain"
    model = resolve_model(config.model)
    started = time.perf_counter()
    if "plain" in redo or not (out_dir / "timeline.json").exists():  # else: trained, not evaluated
        subprocess.run([sys.executable, str(REPO / "bench" / "plain_trl_grpo.py"), "--model", model,
                        "--data", str(data), "--out", str(out_dir), "--budget", str(args.budget),
                        "--every", str(args.every), "--seed", str(config.seed)], check=True)
    wall = time.perf_counter() - started
    timeline = json.loads((out_dir / "timeline.json").read_text())
    points = []
    for checkpoint in timeline["checkpoints"]:
        evaluation = evaluate_adapter(config, tasks, model, checkpoint["adapter"])
        points.append({"clock_s": checkpoint["train_s"], "step": checkpoint["step"], **evaluation})
        print(f"plain: {checkpoint['train_s']:.0f} s, step {checkpoint['step']}: "
              f"pass@1 {evaluation['pass_at_1']:.3f}", flush=True)
    return {"points": points, "wall_s": round(wall, 1), "steps": timeline["steps"],
            "rollout_rewards": timeline["rollout_rewards"]}


def evaluate_adapter(config, tasks, model: str, adapter: str) -> dict:
    """Held-out pass@1 of base + adapter through loop's own evaluate path: the configured backend,
    greedy sampling with `evaluate.max_new_tokens`, every configured verifier must pass."""
    from loop.resolve import resolve_components
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.schema import Attempt, ModelRef, Sampling
    from loop.guarded import safe_verify_batch

    components = resolve_components(config, build_registry(get_plugin_manager()))
    eval_tasks = tasks.eval[: config.evaluate.problems or None]
    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=config.evaluate.max_new_tokens,
                        seed=0)
    backend = components.backend
    session = backend.component.open(ModelRef(base=model, adapter=adapter), backend.options)
    try:
        generations = session.generate([t.prompt for t in eval_tasks], sampling,
                                       batch_size=config.evaluate.batch_size)
    finally:
        session.close()
    items = [(task, Attempt(id=f"eval-{i}", run_id="vs-trl", round_index=0, task_id=task.id,
                            purpose="eval", sample_index=0, completion=generation.text,
                            messages=[*task.prompt,
                                      {"role": "assistant", "content": generation.text}]))
             for i, (task, (generation, *_)) in enumerate(zip(eval_tasks, generations))]
    verdicts = {chosen.name: safe_verify_batch(chosen, items, config.verify.timeout_s)
                for chosen in components.verifiers}  # as the engine's verify does
    passed = sum(all(v[i].passed for v in verdicts.values()) for i in range(len(items)))
    truncated = sum(g[0].finish_reason == "length" for g in generations)
    tokens = sum(g[0].completion_tokens for g in generations)
    n = len(eval_tasks)
    return {"pass_at_1": passed / n, "n": n, "truncated_share": truncated / n,
            "mean_completion_tokens": tokens / n}


# ----- the loop arm -----------------------------------------------------------------------------

def run_loop_arm(args) -> dict:
    db = args.work / "loop.db"
    db.unlink(missing_ok=True)
    launched = datetime.now().astimezone()
    started = time.perf_counter()
    subprocess.run([*LOOP, "run", TASK, "--config", args.config, "--db", str(db), "--name",
                    "vs-trl"], check=True)
    wall = time.perf_counter() - started
    return {**loop_timeline(db, launched), "wall_s": round(wall, 1)}


def loop_timeline(db: Path, launched: datetime) -> dict:
    """Per round: the clock when it finished (from the command's start, minus every held-out
    evaluation up to then) and its held-out pass@1."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "select r.idx, r.finished, r.stages_json, e.pass_at_1, e.n, e.truncated_share, "
        "e.mean_completion_tokens from rounds r join runs on runs.id = r.run_id "
        "join evaluations e on e.run_id = r.run_id and e.round_idx = r.idx "
        "where runs.name = 'vs-trl' order by r.idx").fetchall()
    points, evaluating = [], 0.0
    for row in rows:
        stages = json.loads(row["stages_json"])
        evaluating += stages.get("evaluate", {}).get("seconds", 0.0)
        finished = datetime.fromisoformat(row["finished"])
        if finished.tzinfo is None:
            finished = finished.astimezone()
        clock = (finished - launched).total_seconds() - evaluating
        points.append({"clock_s": round(max(clock, 0.0), 1), "round": row["idx"],
                       "pass_at_1": row["pass_at_1"], "n": row["n"],
                       "truncated_share": row["truncated_share"],
                       "mean_completion_tokens": row["mean_completion_tokens"],
                       "stages_s": {k: round(v.get("seconds", 0.0), 1)
                                    for k, v in stages.items() if isinstance(v, dict)}})
    conn.close()
    points[0]["clock_s"] = 0.0  # round 0 only evaluates the untouched model
    return {"points": points}


# ----- the comparison ---------------------------------------------------------------------------

def first_reach(points: list[dict], target: float) -> float | None:
    for point in points:
        if point["pass_at_1"] >= target - 1e-9:
            return point["clock_s"]
    return None


def compare(plain: dict, loop_arm: dict, args) -> dict:
    base = loop_arm["points"][0]["pass_at_1"]
    plain_points = [{"clock_s": 0.0, "pass_at_1": base}, *plain["points"]]
    target = plain_points[-1]["pass_at_1"]
    t_plain = first_reach(plain_points, target)
    t_loop = first_reach(loop_arm["points"], target)
    ratio = t_loop / t_plain if (t_loop is not None and t_plain) else None
    return {
        "machine": machine(), "budget_s": args.budget, "every_s": args.every,
        "config": str(Path(args.config).resolve().relative_to(REPO)
                      if Path(args.config).resolve().is_relative_to(REPO) else args.config),
        "target_pass_at_1": target, "plain_time_to_target_s": t_plain,
        "loop_time_to_target_s": t_loop, "ratio": ratio, "goal": 0.25,
        "loop_final_pass_at_1": loop_arm["points"][-1]["pass_at_1"],
        "loop_best_pass_at_1": max(p["pass_at_1"] for p in loop_arm["points"]),
        "plain": {**plain, "points": plain_points}, "loop": loop_arm,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for arm, label, style in (("plain", "plain TRL GRPOTrainer", "o--"),
                              ("loop", "loop run (" + Path(result["config"]).name + ")", "s-")):
        points = result[arm]["points"]
        ax.plot([p["clock_s"] for p in points], [p["pass_at_1"] for p in points], style,
                label=label)
    ax.axhline(result["target_pass_at_1"], color="grey", lw=0.8, ls=":",
               label=f"target {result['target_pass_at_1']:.3f}")
    ax.set_xlabel("training wall-clock seconds (held-out evaluation excluded)")
    ax.set_ylabel("held-out pass@1 (n=200, greedy)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ratio = result["ratio"]
    ax.set_title("time to target: loop / plain TRL = "
                 + (f"{ratio:.2f}" if ratio is not None else "not reached"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
