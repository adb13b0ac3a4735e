"""Read-side summaries of a run, shared by `loop show`, the progress table and observers.

Counting a round's train attempts and plugin errors reads all of them, so a finished round's
counts are cached in `rounds.summary_json` the first time they are asked for (the engine asks
right after the round is done); `loop show` then reads a few rows however large the run is.
"""

from __future__ import annotations

import json

from loop.store import Store
from loop.timing import STAGE_ORDER as TIMED_STAGES
from loop.timing import round_time, run_time


def round_summary(store: Store, run_id: str, idx: int, counts: dict | None = None,
                  evaluations: dict | None = None, errors: dict | None = None,
                  updates: dict | None = None) -> dict:
    """One round as `loop show --json` prints it."""
    row = store.get_round(run_id, idx)
    if row is not None and (counts is None or errors is None):
        train, found = round_counts(store, [row])
        counts = train if counts is None else counts
        errors = found if errors is None else errors
    counts, errors = counts or {}, errors or {}
    evaluations = store.evaluations(run_id) if evaluations is None else evaluations
    if updates is None:
        updates = {u["round_idx"]: u for u in store.updates(run_id)}
    update = updates.get(idx)
    stages = json.loads(row["stages_json"] or "{}") if row else {}
    train = counts.get(idx, {"prompts": 0, "attempts": 0, "passed": 0, "solved_prompts": 0,
                             "truncated": 0})
    ev = evaluations.get(idx)
    timings = {s: round(stages[s]["seconds"], 3) for s in TIMED_STAGES
               if s in stages and "seconds" in stages[s]}
    tokens_per_s = {
        s: round(stages[s]["tokens"] / stages[s]["seconds"], 1)
        for s in TIMED_STAGES
        if s in stages and stages[s].get("tokens") and stages[s].get("seconds")
    }
    return {
        "index": idx,
        "stage": row["stage"] if row else "",
        "train": {"prompts": train["prompts"], "attempts": train["attempts"],
                  "passed": train["passed"], "solved_prompts": train["solved_prompts"],
                  "repairs": stages.get("refine", {}).get("count", 0),
                  "repaired": stages.get("refine", {}).get("repaired", 0),
                  "replayed": len(stages.get("select", {}).get("replayed", [])),
                  "truncated_share": (train["truncated"] / train["attempts"]
                                      if train["attempts"] else None)},
        "eval": {"n": ev["n"] if ev else 0, "pass_at_1": ev["pass_at_1"] if ev else None,
                 "truncated_share": ev["truncated_share"] if ev else None,
                 "mean_completion_tokens": ev["mean_completion_tokens"] if ev else None},
        "timings": timings,
        "time": round_time(stages),
        "tokens_per_s": tokens_per_s,
        "errors": errors.get(idx, dict(NO_ERRORS)),
        "update": None if update is None else {
            "method": update["method"], "dataset_size": update["dataset_size"],
            "metrics": json.loads(update["metrics_json"] or "{}")},
    }


NO_ERRORS = {"verifier": 0, "reward": 0}


def round_counts(store: Store, rows: list[dict]) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train counts, plugin errors) per round, for `rows` of one run's rounds: a finished
    round's from its cache when it was counted since it finished; the others counted
    (`Store.round_train_counts`, `Store.error_counts`) and cached if finished."""
    train: dict[int, dict] = {}
    errors: dict[int, dict] = {}
    uncounted = []
    for row in rows:
        cached = _cached(row)
        if cached is None:
            uncounted.append(row)
        else:
            train[row["idx"]], errors[row["idx"]] = cached["train"], cached["errors"]
    if uncounted:
        run_errors = store.error_counts(uncounted[0]["run_id"])
        for row in uncounted:
            idx = row["idx"]
            train[idx] = store.round_train_counts(row["run_id"], idx)
            errors[idx] = run_errors.get(idx, dict(NO_ERRORS))
            if _finished(row):
                store.cache_round_summary(row["run_id"], idx, row["finished"],
                                          {"train": train[idx], "errors": errors[idx]})
    return train, errors


def _finished(row: dict) -> bool:
    return row["stage"] == "done" and row["finished"] is not None


def _cached(row: dict) -> dict | None:
    if not _finished(row) or not row.get("summary_json"):
        return None
    cached = json.loads(row["summary_json"])
    valid = cached.get("finished") == row["finished"] and {"train", "errors"} <= set(cached)
    return cached if valid else None


def run_summary(store: Store, run: dict) -> dict:
    rows = store.rounds(run["id"])
    counts, errors = round_counts(store, rows)
    evaluations = store.evaluations(run["id"])
    updates = {u["round_idx"]: u for u in store.updates(run["id"])}
    rounds = [round_summary(store, run["id"], r["idx"], counts, evaluations, errors, updates)
              for r in rows]
    return {
        "run": {"id": run["id"], "name": run["name"], "status": run["status"],
                "task": run["task"], "model": run["model"], "created": run["created"],
                "finished": run["finished"], "error": run["error"],
                "resumes": run.get("resumes") or 0},
        "rounds": rounds,
        "time": run_time([r["time"] for r in rounds], _run_wall(run)),
    }


def _run_wall(run: dict) -> float | None:
    """Seconds from the run's creation to its finish, for a run that finished in one go (a
    resumed run's span includes the time it lay dead)."""
    from datetime import datetime

    if run.get("status") != "finished" or not run.get("finished") or run.get("resumes"):
        return None
    try:
        span = datetime.fromisoformat(run["finished"]) - datetime.fromisoformat(run["created"])
    except (TypeError, ValueError):
        return None
    return span.total_seconds()
