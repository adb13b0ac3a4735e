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
                  updates: dict | None = None, checks: dict | None = None) -> dict:
    """One round as `loop show --json` prints it."""
    row = store.get_round(run_id, idx)
    if row is not None and (counts is None or errors is None or checks is None):
        train, found, judged = round_counts(store, [row])
        counts = train if counts is None else counts
        errors = found if errors is None else errors
        checks = judged if checks is None else checks
    counts, errors, checks = counts or {}, errors or {}, checks or {}
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
    judged = checks.get(idx, {"verifiers": {}, "rewards": {}})
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
                 "mean_completion_tokens": ev["mean_completion_tokens"] if ev else None,
                 **sampled_eval(ev)},
        "verifiers": _verifier_rates(judged["verifiers"]),
        "rewards": {name: {"mean": None if r["mean"] is None else round(r["mean"], 6),
                           "n": r["n"], "null": r["null"]}
                    for name, r in judged["rewards"].items()},
        "timings": timings,
        "time": round_time(stages),
        "tokens_per_s": tokens_per_s,
        # what the stage's episodes did (runs with an environment): per sampling stage, the
        # share with a tool call that worked, mean model turns, tool errors, end reasons
        "episodes": {s: stages[s]["episodes"] for s in ("generate", "evaluate")
                     if isinstance(stages.get(s, {}).get("episodes"), dict)},
        "errors": plugin_errors(errors.get(idx, {}), stages),
        "update": None if update is None else {
            "method": update["method"], "dataset_size": update["dataset_size"],
            "metrics": json.loads(update["metrics_json"] or "{}")},
    }


def sampled_eval(ev: dict | None) -> dict:
    """A round's sampled held-out evaluation (`evaluate.samples`): `samples` per problem (0:
    none drawn), their `sample_temperature`, and `pass_at_k`, {"k": pass@k} (None: none)."""
    drawn = ev.get("pass_at_k_json") if ev else None
    if not drawn:
        return {"samples": 0, "sample_temperature": None, "pass_at_k": None}
    return {"samples": ev["samples"], "sample_temperature": ev["sample_temperature"],
            "pass_at_k": json.loads(drawn)}


def _verifier_rates(verifiers: dict) -> dict:
    """Per verifier: how many train and held-out answers it judged and the share it passed."""
    out = {}
    for name, by_purpose in verifiers.items():
        one = {}
        for purpose in ("train", "eval"):
            got = by_purpose.get(purpose, {"n": 0, "passed": 0})
            one[f"{purpose}_n"] = got["n"]
            one[f"{purpose}_pass_rate"] = got["passed"] / got["n"] if got["n"] else None
        out[name] = one
    return out


def plugin_errors(counted: dict, stages: dict) -> dict:
    """A round's plugin errors: `verifier`, the verdicts that are plugin failures (infra or
    timeout); `reward`, the values reward functions failed to give (the call raised, timed out,
    returned a list of the wrong length, or a value that is not a finite number: the reward
    stage's `failures`), with `reward_by_function`; `null_rewards`, every NULL reward, most of
    them the "not applicable" the contract asks for on an infra verdict, which is no error."""
    failures = stages.get("reward", {}).get("failures") or {}
    return {"verifier": counted.get("verifier", 0), "reward": sum(failures.values()),
            "reward_by_function": dict(failures),
            "null_rewards": counted.get("null_rewards", 0)}


NO_ERRORS = {"verifier": 0, "null_rewards": 0}


def round_counts(store: Store, rows: list[dict]) -> tuple[dict[int, dict], dict[int, dict],
                                                          dict[int, dict]]:
    """(train counts, plugin error rows, per-verifier and per-reward figures) per round, for
    `rows` of one run's rounds: a finished round's from its cache when it was counted since it
    finished; the others counted (`Store.round_train_counts`, `Store.error_counts`,
    `loop.queries.verifier_and_reward_stats`) and cached if finished."""
    from loop.queries import verifier_and_reward_stats

    train: dict[int, dict] = {}
    errors: dict[int, dict] = {}
    checks: dict[int, dict] = {}
    uncounted = []
    for row in rows:
        cached = _cached(row)
        if cached is None:
            uncounted.append(row)
        else:
            idx = row["idx"]
            train[idx], errors[idx], checks[idx] = (cached["train"], cached["errors"],
                                                    cached["checks"])
    if uncounted:
        run_id = uncounted[0]["run_id"]
        run_errors = store.error_counts(run_id)
        judged = verifier_and_reward_stats(store, run_id, [row["idx"] for row in uncounted])
        for row in uncounted:
            idx = row["idx"]
            train[idx] = store.round_train_counts(row["run_id"], idx)
            found = run_errors.get(idx, {})
            errors[idx] = {"verifier": found.get("verifier", 0),
                           "null_rewards": found.get("reward", 0)}
            checks[idx] = judged[idx]
            if _finished(row):
                store.cache_round_summary(row["run_id"], idx, row["finished"],
                                          {"train": train[idx], "errors": errors[idx],
                                           "checks": checks[idx]})
    return train, errors, checks


def _finished(row: dict) -> bool:
    return row["stage"] == "done" and row["finished"] is not None


def _cached(row: dict) -> dict | None:
    """The round's cached counts, if it is finished and they were counted since (by this
    version: a cache without the per-verifier `checks` is counted again)."""
    if not _finished(row) or not row.get("summary_json"):
        return None
    cached = json.loads(row["summary_json"])
    valid = (cached.get("finished") == row["finished"]
             and {"train", "errors", "checks"} <= set(cached)
             and "null_rewards" in cached["errors"])
    return cached if valid else None


def run_summary(store: Store, run: dict) -> dict:
    rows = store.rounds(run["id"])
    counts, errors, checks = round_counts(store, rows)
    evaluations = store.evaluations(run["id"])
    updates = {u["round_idx"]: u for u in store.updates(run["id"])}
    rounds = [round_summary(store, run["id"], r["idx"], counts, evaluations, errors, updates,
                            checks) for r in rows]
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
