"""Where a round's time went: the model and the verifiers (the work) against loop's own overhead.

A stage's stats (`rounds.stages_json`) hold its wall `seconds` and, where the component reports
them, `model_seconds` (generation or the optimizer loop), `verify_seconds` (verifier calls inside
a sampling stage) and `load_seconds` (loading a model). The work of each stage is:

- generate: model_seconds;  refine and evaluate: model_seconds + verify_seconds;
- verify: all of it (the verifiers are the stage);  train: model_seconds (inside the trainer's
  optimizer loop);
- select, reward, mistakes: none (store reads and writes, plugin bookkeeping).

Everything else is overhead: model loading, tokenizing, data building, store writes, plugin and
observer calls, the time between stages (commits, summaries) and, at run level, start-up. A stage
whose component reports no model time is counted as all work (its overhead is unknown, not
zero: `reported` is False). The round's wall time is the engine's own clock for the round
(`done` stats), or the sum of its stages for a round that was resumed part-way.
"""

from __future__ import annotations

from typing import Any

from loop.guarded import finite
from loop.stage_order import TRAIN_STAGES as STAGE_ORDER  # the engine's order of a round's stages

WORK_KEYS = {"generate": ("model_seconds",), "refine": ("model_seconds", "verify_seconds"),
             "evaluate": ("model_seconds", "verify_seconds"), "train": ("model_seconds",)}
ALL_WORK = ("verify",)  # stages that are entirely the verifiers' work
NO_WORK = ("select", "reward", "mistakes")


def stage_time(name: str, stats: dict) -> dict:
    """{seconds, work_seconds, load_seconds, overhead_seconds, reported} of one stage."""
    seconds = float(stats.get("seconds") or 0.0)
    reported = True
    if name in ALL_WORK:
        work = seconds
    elif name in NO_WORK:
        work = 0.0
    elif name in WORK_KEYS and "model_seconds" in stats:
        work = sum(float(stats.get(key) or 0.0) for key in WORK_KEYS[name])
    else:  # a component that does not say how long its model ran
        work, reported = seconds, False
    work = min(work, seconds)
    return {"seconds": round(seconds, 3), "work_seconds": round(work, 3),
            "load_seconds": round(float(stats.get("load_seconds") or 0.0), 3),
            "overhead_seconds": round(seconds - work, 3), "reported": reported}


def round_time(stages: dict) -> dict:
    """A round's breakdown: per stage (in engine order), the time between stages, and totals."""
    per_stage = {name: stage_time(name, stages[name]) for name in STAGE_ORDER
                 if isinstance(stages.get(name), dict) and "seconds" in stages[name]}
    in_stages = sum(s["seconds"] for s in per_stage.values())
    done = stages.get("done") if isinstance(stages.get("done"), dict) else {}
    wall = done.get("seconds")
    if not isinstance(wall, (int, float)) or done.get("resumed") or wall < in_stages:
        wall = in_stages  # resumed part-way (or unfinished): the engine's clock covers a part
    work = sum(s["work_seconds"] for s in per_stage.values())
    overhead = wall - work
    return {"wall_seconds": round(wall, 3), "work_seconds": round(work, 3),
            "between_stages_seconds": round(wall - in_stages, 3),
            "overhead_seconds": round(overhead, 3),
            "overhead_share": overhead / wall if wall > 0 else None,
            "stages": per_stage}


def run_time(rounds: list[dict], wall_seconds: float | None) -> dict:
    """Totals over a run's rounds (`round_time` results); `wall_seconds` is the run's own wall
    time (created to finished) when known: what it has beyond the rounds is start-up and the
    time between rounds, counted as overhead."""
    in_rounds = sum(r["wall_seconds"] for r in rounds)
    work = sum(r["work_seconds"] for r in rounds)
    wall = wall_seconds if wall_seconds is not None and wall_seconds >= in_rounds else in_rounds
    return {"wall_seconds": round(wall, 3), "rounds_seconds": round(in_rounds, 3),
            "outside_rounds_seconds": round(wall - in_rounds, 3),
            "work_seconds": round(work, 3), "overhead_seconds": round(wall - work, 3),
            "overhead_share": (wall - work) / wall if wall > 0 else None}


def session_timing(session: Any) -> dict[str, float]:
    """A generation session's own `load_seconds`/`model_seconds`, where it reports them."""
    return reported_timing({k: getattr(session, k, None) for k in ("load_seconds", "model_seconds")})


def reported_timing(reported: dict) -> dict[str, float]:
    """The time split a component reports (a session's attributes, an updater's metrics):
    `load_seconds` (loading the model) and `model_seconds` (in the model; an updater's
    `train_seconds`, the time inside its optimizer loop). Missing or bad values are left out."""
    timing = {}
    for key, source in (("load_seconds", "load_seconds"), ("model_seconds", "model_seconds"),
                        ("model_seconds", "train_seconds")):
        value = finite(reported.get(source))
        if value is not None and value >= 0 and key not in timing:
            timing[key] = value
    return timing
