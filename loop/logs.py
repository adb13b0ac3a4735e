"""Read-side queries behind `loop logs` and `loop mistakes`: plain SQL over the store, returning
JSON-ready dicts (the CLI's `--json` prints exactly these).

`attempt_logs` lists attempts with their task prompt, verdicts and rewards, newest round first;
`mistake_rows` lists a run's mistake log. Text search (`query`) is a case-insensitive substring
match over the answer, the prompt and the verifiers' feedback (mistakes: feedback, kind, prompt,
plus full-text search over the critiques of the task's attempts).
"""

from __future__ import annotations

import json
from typing import Any

from loop.store import Store


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _last_user_message(prompt_json: str) -> str:
    try:
        messages = json.loads(prompt_json or "[]")
    except ValueError:
        return ""
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def attempt_logs(store: Store, run_id: str, *, query: str | None = None,
                 round_idx: int | None = None, passed: bool | None = None,
                 task_id: str | None = None, limit: int | None = 10,
                 with_chains: bool = False) -> list[dict[str, Any]]:
    """A run's attempts, newest round first, then task and sample order.

    `passed` filters on the attempt's overall verdict (every verifier passed). With
    `with_chains`, the attempts that repair a listed attempt (its refinement chain, any depth)
    are added to the result even if they fall outside the filters, so a tree can be drawn.
    """
    # With a task, `+` keeps SQLite from walking the run's index in display order: the task's
    # attempts are found by task id and sorted, which stays fast however large the run is.
    where, params = ["+a.run_id = ?" if task_id is not None else "a.run_id = ?"], [run_id]
    if round_idx is not None:
        where.append("a.round_idx = ?")
        params.append(round_idx)
    if task_id is not None:
        # the few matching ids come from `tasks`, then the attempts by task (an index), instead
        # of testing every attempt of the run
        where.append("a.task_id in (select id from tasks where id = ? or id like ? escape '\\')")
        params += [task_id, _like(task_id)[1:]]
    if query:
        where.append("(a.completion like ? escape '\\' or t.prompt_json like ? escape '\\' or "
                     "exists (select 1 from verdicts q where q.attempt_id = a.id and "
                     "q.feedback like ? escape '\\'))")
        params += [_like(query)] * 3
    if passed is not None:
        # an attempt passed when it has verdicts and none of them failed
        where.append("exists (select 1 from verdicts v where v.attempt_id = a.id)")
        clause = "not exists (select 1 from verdicts v where v.attempt_id = a.id and v.passed = 0)"
        where.append(clause if passed else f"not ({clause})")
    sql = (f"select a.*, t.prompt_json, t.reference from attempts a join tasks t on t.id = a.task_id "
           f"where {' and '.join(where)} order by a.round_idx desc, a.purpose desc, a.task_id, "
           f"a.depth, a.sample_index, a.id")
    if limit:
        sql += f" limit {int(limit)}"
    rows = [dict(r) for r in store.db.query(sql, params)]
    if with_chains:
        rows = _add_chains(store, rows)
    return _decorate(store, rows)


def _add_chains(store: Store, rows: list[dict]) -> list[dict]:
    have = {r["id"] for r in rows}
    frontier = list(have)
    while frontier:
        marks = ",".join("?" * len(frontier))
        children = [dict(r) for r in store.db.query(
            f"select a.*, t.prompt_json, t.reference from attempts a join tasks t on "
            f"t.id = a.task_id where a.parent_id in ({marks}) order by a.depth, a.sample_index",
            frontier)]
        frontier = [c["id"] for c in children if c["id"] not in have]
        for child in children:
            if child["id"] not in have:
                have.add(child["id"])
                rows.append(child)
    return rows


def _decorate(store: Store, rows: list[dict]) -> list[dict[str, Any]]:
    ids = [r["id"] for r in rows]
    verdicts = store.verdicts(ids)
    rewards = store.rewards(ids)
    critiques = store.critiques(ids)
    out = []
    for r in rows:
        by_verifier = verdicts.get(r["id"], {})
        out.append({
            "id": r["id"], "round": r["round_idx"], "purpose": r["purpose"],
            "task_id": r["task_id"], "sample_index": r["sample_index"],
            "parent_id": r["parent_id"], "depth": r["depth"],
            "prompt": _last_user_message(r["prompt_json"]), "reference": r["reference"],
            "completion": r["completion"], "finish_reason": r["finish_reason"],
            "completion_tokens": r["completion_tokens"],
            "passed": bool(by_verifier) and all(v.passed for v in by_verifier.values()),
            "verdicts": {name: {"passed": v.passed, "score": v.score, "error_kind": v.error_kind,
                                "mistake": v.mistake, "feedback": v.feedback}
                         for name, v in by_verifier.items()},
            "rewards": rewards.get(r["id"], {}),
            "critiques": [c.model_dump() for c in critiques.get(r["id"], [])],
        })
    return out


def mistake_rows(store: Store, run_id: str, *, open_only: bool = False, recurring: bool = False,
                 kind: str | None = None, query: str | None = None) -> list[dict[str, Any]]:
    """A run's mistake log: one row per (task, kind), most frequent first.

    `open_only`: not resolved yet (no later attempt on the task passed). `recurring`: seen in
    more than one round.
    """
    where, params = ["m.run_id = ?"], [run_id]
    if open_only:
        where.append("m.resolved_round is null")
    if recurring:
        where.append("m.last_round > m.first_round")
    if kind:
        where.append("m.kind = ?")
        params.append(kind)
    if query:
        # the feedback, kind or prompt contain the text, or a critique of one of the task's
        # attempts in this run matches it (full-text search over critique texts)
        # (the matching critiques' tasks are looked up once, not once per mistake)
        where.append("(m.last_feedback like ? escape '\\' or m.kind like ? escape '\\' or "
                     "t.prompt_json like ? escape '\\' or m.task_id in (select a.task_id from "
                     "critiques_fts f join critiques c on c.rowid = f.rowid join attempts a on "
                     "a.id = c.attempt_id where critiques_fts match ? and a.run_id = ?))")
        params += [_like(query)] * 3 + [store.db.quote_fts(query), run_id]
    sql = (f"select m.*, t.prompt_json, t.reference from mistakes m join tasks t on t.id = m.task_id "
           f"where {' and '.join(where)} order by m.occurrences desc, m.first_round, m.task_id, m.kind")
    return [{
        "task_id": r["task_id"], "prompt": _last_user_message(r["prompt_json"]),
        "reference": r["reference"], "kind": r["kind"], "first_round": r["first_round"],
        "last_round": r["last_round"], "occurrences": r["occurrences"],
        "first_attempt_id": r["first_attempt_id"], "resolved_round": r["resolved_round"],
        "last_feedback": r["last_feedback"],
    } for r in store.db.query(sql, params)]
