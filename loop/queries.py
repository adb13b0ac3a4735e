"""Read-side queries behind `loop logs` and `loop mistakes`: plain SQL over the store, returning
JSON-ready dicts (the CLI's `--json` prints exactly these).

`attempt_logs` lists attempts with their task prompt, verdicts and rewards, newest round first;
`mistake_rows` lists a run's mistake log. Text search (`query`) is a case-insensitive substring
match over the answer, the prompt, the verifiers' feedback and mistake kinds, and the critiques'
kinds (mistakes: feedback, kind, prompt,
plus full-text search over the critiques of the task's attempts).
"""

from __future__ import annotations

import json
from typing import Any

from loop.schema import Turn
from loop.search_index import refresh as refresh_search_index
from loop.store import Store


# `loop logs -q` and `loop mistakes -q`: up to this many rows that may contain the text are
# looked up one by one; beyond it the run is read in display order (see _text_candidates). Of a
# long text, this many of its trigrams are counted to find the rarest.
TEXT_CANDIDATES = 2000
TRIGRAMS_COUNTED = 48


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
                 with_chains: bool = False, mistake: str | None = None) -> list[dict[str, Any]]:
    """A run's attempts, newest round first, then task and sample order.

    `passed` filters on the attempt's overall verdict (every verifier passed). `mistake`: only
    attempts a verifier gave that mistake kind or a critic classified as it. With
    `with_chains`, the attempts that repair a listed attempt (its refinement chain, any depth)
    are added to the result even if they fall outside the filters, so a tree can be drawn.
    """
    candidates = _text_candidates(store, query) if query else None
    # With a task or a candidate list, `+` keeps SQLite from walking the run's index in display
    # order: the few rows are found by task id or rowid and sorted, however large the run is.
    narrow = task_id is not None or candidates is not None
    where, params = ["+a.run_id = ?" if narrow else "a.run_id = ?"], [run_id]
    if round_idx is not None:
        where.append("a.round_idx = ?")
        params.append(round_idx)
    if task_id is not None:
        # the few matching ids come from `tasks`, then the attempts by task (an index), instead
        # of testing every attempt of the run
        where.append("a.task_id in (select id from tasks where id = ? or id like ? escape '\\')")
        params += [task_id, _like(task_id)[1:]]
    if candidates is not None:
        where.append("a.rowid in (select value from json_each(?))")
        params.append(json.dumps(candidates))
    if query:
        where.append("(a.completion like ? escape '\\' or t.prompt_json like ? escape '\\' or "
                     "exists (select 1 from verdicts q where q.attempt_id = a.id and "
                     "(q.feedback like ? escape '\\' or q.mistake like ? escape '\\')) or "
                     "exists (select 1 from critiques c where c.attempt_id = a.id and "
                     "c.kind like ? escape '\\'))")
        params += [_like(query)] * 5
    if mistake:
        where.append("(exists (select 1 from verdicts m where m.attempt_id = a.id and "
                     "m.mistake = ?) or exists (select 1 from critiques k where "
                     "k.attempt_id = a.id and k.kind = ?))")
        params += [mistake, mistake]
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


def _text_candidates(store: Store, query: str) -> list[int] | None:
    """Rowids of the attempts (of any run) that may contain `query` in their answer, prompt or
    verifier feedback: a superset, found through the trigram indexes (m006) and the tasks, for
    the exact filter to check. None when the text is shorter than a trigram, or when more than
    TEXT_CANDIDATES attempts may match: a text that common turns up soon when the run is read
    newest first, while a rare one would make that read go through the whole run."""
    if len(query) < 3 or _names_a_mistake_kind(store, query):
        return None  # a kind is shared by many answers: reading in display order finds them soon
    refresh_search_index(store.db)  # index what was written since the last round ended
    answers = _trigram_rowids(store, "attempts_fts", query)
    feedback = _trigram_rowids(store, "verdicts_fts", query)
    if answers is None or feedback is None:
        return None
    found = set(answers)
    if feedback:
        found.update(r[0] for r in store.db.execute(
            "select a.rowid from verdicts v join attempts a on a.id = v.attempt_id "
            "where v.rowid in (select value from json_each(?))", [json.dumps(sorted(feedback))]))
    tasks = [r[0] for r in store.db.execute(
        "select id from tasks where prompt_json like ? escape '\\' limit ?",
        [_like(query), TEXT_CANDIDATES + 1])]
    if len(tasks) > TEXT_CANDIDATES:  # a text of most prompts
        return None
    if tasks:
        found.update(r[0] for r in store.db.execute(
            "select rowid from attempts where task_id in (select value from json_each(?)) "
            "limit ?", [json.dumps(tasks), TEXT_CANDIDATES + 1]))
    return sorted(found) if len(found) <= TEXT_CANDIDATES else None


def _names_a_mistake_kind(store: Store, query: str) -> bool:
    """Whether `query` is part of a mistake kind in the mistake log or of a critique's kind (a
    few rows per kind: the log keeps one per task and kind)."""
    return any(store.db.execute(
        f"select 1 from {table} where kind like ? escape '\\' limit 1", [_like(query)]
    ).fetchone() for table in ("mistakes", "critiques"))


def _trigram_rowids(store: Store, fts: str, text: str) -> set[int] | None:
    """Rowids of `fts`'s rows that hold every one of the rarest trigrams of `text` (so every row
    containing `text`, and maybe a few more), or None when more than TEXT_CANDIDATES do.

    An FTS5 query costs the sum of its terms' row lists, and in answers and feedback some
    trigrams ("exp", "ans") are in most rows: so each trigram is first counted up to the cap
    (cheap: a common one stops at the cap) and only the three rarest are asked for together.
    Trigrams are matched without case, as the tokenizer folds both sides."""
    cap = TEXT_CANDIDATES + 1
    counts: dict[str, int] = {}
    for gram in sorted({text[i:i + 3] for i in range(len(text) - 2)})[:TRIGRAMS_COUNTED]:
        counts[gram] = len(store.db.execute(
            f"select rowid from {fts} where {fts} match ? limit ?", [_fts_string(gram), cap]
        ).fetchall())
        if counts[gram] == 0:
            return set()  # no row holds this piece of the text
    rarest = sorted(counts, key=counts.__getitem__)[:3]
    rows = {r[0] for r in store.db.execute(
        f"select rowid from {fts} where {fts} match ? limit ?",
        [" AND ".join(_fts_string(g) for g in rarest), cap])}
    return rows if len(rows) < cap else None


def _fts_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


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
    turns = store.turns(r["id"] for r in rows if r.get("environment") is not None)
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
                                "mistake": v.mistake, "feedback": v.feedback,
                                "details": v.details}
                         for name, v in by_verifier.items()},
            "rewards": rewards.get(r["id"], {}),
            "critiques": [c.model_dump() for c in critiques.get(r["id"], [])],
            "environment": r.get("environment"), "end_reason": r.get("end_reason"),
            "turns": ([turn_json(t) for t in turns.get(r["id"], [])]
                      if r.get("environment") is not None else
                      [{"role": "assistant", "content": r["completion"], "tool_calls": []}]),
        })
    return out


def turn_json(turn: Turn) -> dict[str, Any]:
    """A stored turn as `loop logs --json` gives it: `assistant` messages with their
    `tool_calls` ([{"name", "arguments"}], empty when none), `tool` messages with `name`,
    `content` and `error` (None when the call worked), `user` messages (a text environment's
    observations); a per-turn `reward` where the environment gave one."""
    if turn.role == "assistant":
        out = {"role": "assistant", "content": turn.text,
               "tool_calls": [c.model_dump() for c in turn.tool_calls]}
    elif turn.role == "tool":
        out = {"role": "tool", "name": turn.name, "content": turn.text, "error": turn.error}
    else:
        out = {"role": turn.role, "content": turn.text}
    if turn.reward is not None:
        out["reward"] = turn.reward
    return out


def _mistake_filter(store: Store, run_id: str, *, open_only: bool, recurring: bool,
                    kind: str | None, query: str | None,
                    limit: int | None) -> tuple[list[str], list[Any]]:
    """The where clauses and parameters of `mistake_rows`' filters."""
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
        # attempts in this run matches it (full-text search over critique texts, which are
        # indexed in bulk: critiques written since the last round ended are indexed first)
        refresh_search_index(store.db)
        candidates = _mistake_candidates(store, run_id, query)
        if candidates is not None:  # a rare text: the few mistakes that may hold it, by rowid
            where[0] = "+m.run_id = ?"
            where.append("m.rowid in (select value from json_each(?))")
            params.append(json.dumps(candidates))
        if candidates is None and limit:
            # a common text and a few rows wanted: read the log in order, asking each mistake
            # (`+`: test membership in the matches; as an index constraint SQLite would probe
            # every match for every attempt)
            critiqued = ("exists (select 1 from attempts a join critiques c on c.attempt_id = "
                         "a.id where a.task_id = m.task_id and +a.run_id = m.run_id and +c.rowid "
                         "in (select rowid from critiques_fts where critiques_fts match ?))")
            critique_params = [store.db.quote_fts(query)]
        else:  # every row wanted: the tasks with a matching critique, looked up once
            critiqued = ("m.task_id in (select a.task_id from critiques_fts f join critiques c "
                         "on c.rowid = f.rowid join attempts a on a.id = c.attempt_id where "
                         "critiques_fts match ? and a.run_id = ?)")
            critique_params = [store.db.quote_fts(query), run_id]
        where.append("(m.last_feedback like ? escape '\\' or m.kind like ? escape '\\' or "
                     "m.task_id in (select id from tasks where prompt_json like ? escape '\\') "
                     f"or {critiqued})")
        params += [_like(query)] * 3 + critique_params
    return where, params


def mistake_rows(store: Store, run_id: str, *, open_only: bool = False, recurring: bool = False,
                 kind: str | None = None, query: str | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """A run's mistake log: one row per (task, kind), most frequent first; the first `limit`
    rows (None or 0: all of them).

    `open_only`: not resolved yet (no later attempt on the task passed). `recurring`: seen in
    more than one round.
    """
    where, params = _mistake_filter(store, run_id, open_only=open_only, recurring=recurring,
                                    kind=kind, query=query, limit=limit)
    columns = ("task_id", "kind", "first_round", "last_round", "occurrences", "first_attempt_id",
               "resolved_round", "last_feedback")
    sql = (f"select {', '.join('m.' + c for c in columns)}, t.prompt_json, t.reference "
           f"from mistakes m join tasks t on t.id = m.task_id where {' and '.join(where)} "
           f"order by m.occurrences desc, m.first_round, m.task_id, m.kind")
    if limit:
        sql += f" limit {int(limit)}"
    out = []
    for row in store.db.execute(sql, params):
        found = dict(zip(columns, row))
        out.append({"task_id": found["task_id"], "prompt": _last_user_message(row[-2]),
                    "reference": row[-1], **{c: found[c] for c in columns[1:]}})
    return out


def mistake_count(store: Store, run_id: str, *, open_only: bool = False,
                  recurring: bool = False, kind: str | None = None,
                  query: str | None = None) -> dict[str, int]:
    """How many rows `mistake_rows` gives with these filters and no limit (`rows`), and how many
    of them are open: what a `-n` header counts against."""
    where, params = _mistake_filter(store, run_id, open_only=open_only, recurring=recurring,
                                    kind=kind, query=query, limit=None)
    rows, still_open = store.db.execute(
        "select count(*), coalesce(sum(m.resolved_round is null), 0) from mistakes m "
        f"where {' and '.join(where)}", params).fetchone()
    return {"rows": rows, "open": still_open}


def _mistake_candidates(store: Store, run_id: str, query: str) -> list[int] | None:
    """Rowids of the run's mistakes that may match `query` (`mistake_rows`' text filter): a
    superset, from the trigram index over feedback and kind (m006), the tasks whose prompt holds
    the text and the critiques that match it; None when the text is shorter than a trigram or
    more than TEXT_CANDIDATES rows may match."""
    if len(query) < 3:
        return None
    found = _trigram_rowids(store, "mistakes_fts", query)
    if found is None:
        return None
    critiqued = [r[0] for r in store.db.execute(
        "select c.attempt_id from critiques_fts f join critiques c on c.rowid = f.rowid "
        "where critiques_fts match ? limit ?", [store.db.quote_fts(query), TEXT_CANDIDATES + 1])]
    if len(critiqued) > TEXT_CANDIDATES:
        return None
    tasks = {r[0] for r in store.db.execute(
        "select id from tasks where prompt_json like ? escape '\\' limit ?",
        [_like(query), TEXT_CANDIDATES + 1])}
    if len(tasks) > TEXT_CANDIDATES:  # a text of most prompts
        return None
    if critiqued:
        tasks.update(r[0] for r in store.db.execute(
            "select task_id from attempts where id in (select value from json_each(?))",
            [json.dumps(critiqued)]))
    if tasks:
        found.update(r[0] for r in store.db.execute(
            "select rowid from mistakes where run_id = ? and task_id in "
            "(select value from json_each(?)) limit ?",
            [run_id, json.dumps(sorted(tasks)), TEXT_CANDIDATES + 1]))
    return sorted(found) if len(found) <= TEXT_CANDIDATES else None


def verifier_and_reward_stats(store: Store, run_id: str,
                              rounds: list[int]) -> dict[int, dict[str, dict]]:
    """Per round of `rounds`: `verifiers` (per verifier, of the round's train answers and of its
    greedy held-out answers (not the sampled ones of evaluate.samples): how many it judged and
    how many it passed) and `rewards` (per reward
    function: how many values it has, how many are NULL, and the mean of the others), for
    `loop show` to tell which check failed when several judge a task."""
    out: dict[int, dict[str, dict]] = {idx: {"verifiers": {}, "rewards": {}} for idx in rounds}
    if not rounds:
        return out
    wanted = json.dumps(sorted(rounds))
    for idx, purpose, verifier, n, passed in store.db.execute(
            "select a.round_idx, a.purpose, v.verifier, count(*), sum(v.passed) "
            "from attempts a join verdicts v on v.attempt_id = a.id "
            "where a.run_id = ? and a.round_idx in (select value from json_each(?)) "
            "and (a.purpose = 'train' or a.sample_index = 0) "
            "group by 1, 2, 3 order by 1, 3, 2", [run_id, wanted]):
        one = out[idx]["verifiers"].setdefault(verifier, {})
        one[purpose] = {"n": n, "passed": passed or 0}
    for idx, name, n, nulls, mean in store.db.execute(
            "select a.round_idx, w.reward_fn, count(*), sum(w.value is null), avg(w.value) "
            "from attempts a join rewards w on w.attempt_id = a.id "
            "where a.run_id = ? and a.round_idx in (select value from json_each(?)) "
            "group by 1, 2 order by 1, 2", [run_id, wanted]):
        out[idx]["rewards"][name] = {"n": n, "null": nulls or 0, "mean": mean}
    return out
