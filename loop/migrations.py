"""Numbered schema migrations of the core store, applied on every open (sqlite-utils Migrations;
all pending ones in one transaction: `apply_migrations`).

Rules (from llm): never edit an applied migration, add a new one; guard column additions; keep
backfills inside the migration's transaction. store/README.md documents every table and column.
"""

from __future__ import annotations

from typing import Callable

from sqlite_utils import Database, Migrations

from loop.failpoints import failpoint

migrations = Migrations("loop")


def migration(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register `fn` as the next core migration (its name is the function's). The crash tests'
    fail point `migration.<name>` is passed after its body ran, before its bookkeeping row is
    written (see `apply_migrations`)."""

    def apply(db: Database) -> None:
        fn(db)
        failpoint(f"migration.{fn.__name__}")

    apply.__name__, apply.__doc__ = fn.__name__, fn.__doc__
    migrations(name=fn.__name__)(apply)
    return fn


def migration_names() -> list[str]:
    """Every core migration's name, in the order they apply."""
    return [m.name for m in migrations._migrations]


def unknown_migrations(db: Database) -> list[str]:
    """Core migrations the store records that this loop does not have: a newer loop wrote it."""
    if not db["_sqlite_migrations"].exists():
        return []
    known = set(migration_names())
    return [m.name for m in migrations.applied(db) if m.name not in known]


def apply_migrations(db: Database) -> list[str]:
    """Apply the pending core migrations; returns their names.

    All of them in one `BEGIN IMMEDIATE` transaction, each with its bookkeeping row (sqlite-utils
    runs each as a savepoint of it): a process killed while migrating leaves the store as it
    was, and the next open applies them all again. The write lock is taken before the pending
    ones are listed, so two processes opening a new store at once migrate it once: the second
    waits (the busy timeout), then finds nothing to do. A store with nothing pending is only
    read."""
    if not migrations.pending(db):
        return []
    if db.conn.in_transaction:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        db.conn.commit()
    except BaseException:
        db.conn.rollback()
        raise
    return pending


@migration
def m001_create_core_tables(db: Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "name": str,
            "task": str,
            "model": str,
            "status": str,  # running | finished | failed | interrupted
            "config_json": str,
            "seed": int,
            "rounds_planned": int,
            "versions_json": str,
            "git_sha": str,
            "run_dir": str,
            "error": str,
            "created": str,
            "finished": str,
        },
        pk="id",
    )
    db["runs"].create_index(["name"], unique=True)

    db["rounds"].create(
        {
            "id": str,
            "run_id": str,
            "idx": int,
            "stage": str,  # the last stage completed: "" (none yet) ... "evaluate", then "done"
            "stages_json": str,  # {stage: {"seconds", "tokens", "count"}} for each finished stage
            "model_in": str,  # adapter the round generated with (NULL: base model)
            "model_out": str,  # adapter the round trained (NULL: round 0 / no update)
            "summary_json": str,
            "started": str,
            "finished": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["rounds"].create_index(["run_id", "idx"], unique=True)

    db["tasks"].create(
        {
            "id": str,
            "source": str,
            "split": str,
            "prompt_json": str,
            "reference": str,
            "metadata_json": str,
        },
        pk="id",
    )

    db["attempts"].create(
        {
            "id": str,
            "run_id": str,
            "round_idx": int,
            "task_id": str,
            "purpose": str,  # train | eval
            "sample_index": int,
            "parent_id": str,
            "depth": int,
            "messages_json": str,
            "completion": str,
            "token_ids_json": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "finish_reason": str,
            "logprobs_json": str,
            "model_ref": str,
            "seed": int,
            "created": str,
        },
        pk="id",
        foreign_keys=[
            ("run_id", "runs", "id"),
            ("task_id", "tasks", "id"),
            ("parent_id", "attempts", "id"),
        ],
    )
    db["attempts"].create_index(["run_id", "round_idx", "purpose"])
    db["attempts"].create_index(["task_id"])
    db["attempts"].create_index(["parent_id"])

    db["verdicts"].create(
        {
            "id": str,
            "attempt_id": str,
            "verifier": str,
            "passed": int,
            "score": float,
            "error_kind": str,
            "mistake": str,
            "feedback": str,
            "details_json": str,
            "duration_ms": float,
        },
        pk="id",
        foreign_keys=[("attempt_id", "attempts", "id")],
    )
    db["verdicts"].create_index(["attempt_id", "verifier"], unique=True)

    db["rewards"].create(
        {"attempt_id": str, "reward_fn": str, "value": float},
        pk=("attempt_id", "reward_fn"),
        foreign_keys=[("attempt_id", "attempts", "id")],
    )

    db["mistakes"].create(
        {
            "id": str,
            "run_id": str,
            "task_id": str,
            "kind": str,
            "first_round": int,
            "last_round": int,
            "occurrences": int,
            "first_attempt_id": str,
            "last_feedback": str,
            "resolved_round": int,
        },
        pk="id",
        foreign_keys=[
            ("run_id", "runs", "id"),
            ("task_id", "tasks", "id"),
            ("first_attempt_id", "attempts", "id"),
        ],
    )
    db["mistakes"].create_index(["run_id", "task_id", "kind"], unique=True)
    db["mistakes"].create_index(["kind"])

    db["updates"].create(
        {
            "id": str,
            "run_id": str,
            "round_idx": int,
            "method": str,
            "dataset_size": int,
            "metrics_json": str,
            "adapter_path": str,
            "adapter_sha256": str,
            "seconds": float,
            "created": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["updates"].create_index(["run_id", "round_idx"], unique=True)

    db["evaluations"].create(
        {
            "id": str,
            "run_id": str,
            "round_idx": int,
            "split": str,
            "n": int,
            "passed": int,
            "pass_at_1": float,
            "truncated_share": float,
            "mean_completion_tokens": float,
            "seconds": float,
            "created": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["evaluations"].create_index(["run_id", "round_idx", "split"], unique=True)


@migration
def m002_create_views(db: Database) -> None:
    db.create_view(
        "accuracy_per_round",
        """
        select r.run_id, r.idx as round_idx,
          (select count(*) from attempts a where a.run_id = r.run_id and a.round_idx = r.idx
             and a.purpose = 'train') as train_attempts,
          (select avg(v.passed) from attempts a join verdicts v on v.attempt_id = a.id
             where a.run_id = r.run_id and a.round_idx = r.idx and a.purpose = 'train') as train_pass_rate,
          e.n as eval_n, e.pass_at_1 as eval_pass_at_1, e.truncated_share as eval_truncated_share
        from rounds r left join evaluations e
          on e.run_id = r.run_id and e.round_idx = r.idx and e.split = 'eval'
        order by r.run_id, r.idx
        """,
    )
    db.create_view(
        "open_mistakes",
        """
        select m.run_id, m.kind, m.task_id, t.prompt_json, t.reference, m.first_round, m.last_round,
          m.occurrences, m.last_feedback
        from mistakes m join tasks t on t.id = m.task_id
        where m.resolved_round is null
        """,
    )


@migration
def m003_add_completion_raw(db: Database) -> None:
    # Text that is not valid UTF-8 (lone surrogates, e.g. from a JSON "\udcff" escape) cannot be
    # stored as TEXT: `completion` then holds a readable copy with U+FFFD and `completion_raw`
    # the exact string as UTF-8 with surrogates passed through, so it still round-trips.
    if "completion_raw" not in db["attempts"].columns_dict:
        db["attempts"].add_column("completion_raw", bytes)


@migration
def m004_create_critiques(db: Database) -> None:
    # One row per critic's explanation of a failed attempt (the refine stage); full-text search
    # over the texts for `loop mistakes -q` and Datasette.
    db["critiques"].create(
        {"id": str, "attempt_id": str, "critic": str, "kind": str, "text": str, "created": str},
        pk="id",
        foreign_keys=[("attempt_id", "attempts", "id")],
        if_not_exists=True,
    )
    db["critiques"].create_index(["attempt_id"], if_not_exists=True)
    db["critiques"].create_index(["kind"], if_not_exists=True)
    if not db["critiques_fts"].exists():
        db["critiques"].enable_fts(["text", "kind"], create_triggers=True)


# The read side's indexes and views (m005). Every view is documented in store/README.md and, with
# its columns, in loop/datasette/metadata.yaml.
_ATTEMPT_PASSED = """(exists (select 1 from verdicts v where v.attempt_id = {a}.id)
   and not exists (select 1 from verdicts v where v.attempt_id = {a}.id and v.passed = 0))"""

# A finished round's counts are cached in rounds.summary_json by loop.summary (written once the
# round is done, keyed by its `finished` time, so a round that is redone is counted again).
_CACHED = ("r.stage = 'done' and r.summary_json is not null "
           "and json_extract(r.summary_json, '$.finished') = r.finished")
_TRAIN_OF_ROUND = "a.run_id = r.run_id and a.round_idx = r.idx and a.purpose = 'train'"


@migration
def m005_read_side_indexes_and_views(db: Database) -> None:
    # `loop logs` lists a run's attempts newest round first: this index hands them over in that
    # order (so `-n 10` reads 10 rows, not the run), and serves every lookup by (run, round,
    # purpose) the index it replaces did.
    db.execute("drop index if exists idx_attempts_run_id_round_idx_purpose")
    db.execute("create index if not exists idx_attempts_newest_first on attempts "
               "(run_id, round_idx desc, purpose desc, task_id, depth, sample_index)")
    # Held-out answers by task and round (regressions) and repairs (repaired_attempts): partial
    # indexes over the few rows they need, nearly free for the bulk of train inserts.
    db.execute("create index if not exists idx_attempts_eval_by_task on attempts "
               "(run_id, task_id, round_idx) where purpose = 'eval'")
    db.execute("create index if not exists idx_attempts_repairs on attempts "
               "(run_id, round_idx desc, task_id, depth, id) where parent_id is not null")
    # Pass/fail of an attempt from the index alone (every view and filter asks it).
    db.execute("create index if not exists idx_verdicts_attempt_passed on verdicts "
               "(attempt_id, passed)")
    # Plugin failures per round (`loop show`): read from the few failed rows, not the run.
    db.execute("create index if not exists idx_verdicts_plugin_errors on verdicts (attempt_id) "
               "where error_kind in ('infra', 'timeout')")
    db.execute("create index if not exists idx_rewards_null on rewards (attempt_id) "
               "where value is null")
    # `loop mistakes` and the open-mistakes query: a run's log, most frequent first.
    db.execute("create index if not exists idx_mistakes_by_frequency on mistakes "
               "(run_id, occurrences desc, first_round, task_id, kind)")
    db.execute("create index if not exists idx_mistakes_open on mistakes "
               "(resolved_round, occurrences desc, last_round desc, task_id, kind) "
               "where resolved_round is null")

    db.execute("drop view if exists attempt_results")
    db.create_view("attempt_results", f"""
        select a.id as attempt_id, a.run_id, a.round_idx, a.purpose, a.task_id, t.split,
          a.sample_index, a.parent_id, a.depth,
          json_extract(t.prompt_json, '$[#-1].content') as prompt, t.reference, a.completion,
          a.finish_reason, a.completion_tokens,
          (select count(*) from verdicts v where v.attempt_id = a.id) as verdicts,
          {_ATTEMPT_PASSED.format(a="a")} as passed,
          (select min(v.score) from verdicts v where v.attempt_id = a.id) as score,
          (select group_concat(v.error_kind, ', ') from verdicts v
             where v.attempt_id = a.id and v.error_kind is not null) as error_kind,
          (select group_concat(v.mistake, ', ') from verdicts v
             where v.attempt_id = a.id and v.mistake is not null) as mistake,
          (select group_concat(v.verifier || ': ' || v.feedback, char(10)) from verdicts v
             where v.attempt_id = a.id and v.feedback <> '') as feedback,
          (select sum(w.value) from rewards w where w.attempt_id = a.id) as reward,
          (select json_group_object(w.reward_fn, w.value) from rewards w
             where w.attempt_id = a.id) as rewards_json
        from attempts a join tasks t on t.id = a.task_id
        """)

    db.execute("drop view if exists accuracy_per_round")
    live = {
        "prompts": f"select count(distinct a.task_id) from attempts a where {_TRAIN_OF_ROUND}",
        "solved": (f"select count(distinct a.task_id) from attempts a where {_TRAIN_OF_ROUND} "
                   f"and {_ATTEMPT_PASSED.format(a='a')}"),
        "attempts": f"select count(*) from attempts a where {_TRAIN_OF_ROUND}",
        "passed": (f"select count(*) from attempts a where {_TRAIN_OF_ROUND} "
                   f"and {_ATTEMPT_PASSED.format(a='a')}"),
        "pass_rate": ("select avg(v.passed) from attempts a join verdicts v on v.attempt_id = a.id"
                      f" where {_TRAIN_OF_ROUND}"),
    }
    cached = {
        "prompts": "json_extract(r.summary_json, '$.train.prompts')",
        "solved": "json_extract(r.summary_json, '$.train.solved_prompts')",
        "attempts": "json_extract(r.summary_json, '$.train.attempts')",
        "passed": "json_extract(r.summary_json, '$.train.passed')",
        "pass_rate": ("json_extract(r.summary_json, '$.train.verdicts_passed') * 1.0 / "
                      "nullif(json_extract(r.summary_json, '$.train.verdicts'), 0)"),
    }
    pick = {k: f"case when {_CACHED} then {cached[k]} else ({live[k]}) end" for k in live}
    db.create_view("accuracy_per_round", f"""
        select run_id, run_name, round_idx, stage, train_prompts, train_solved_prompts,
          train_solved_prompts * 1.0 / nullif(train_prompts, 0) as train_solve_rate,
          train_attempts, train_passed, train_pass_rate,
          eval_n, eval_passed, eval_pass_at_1, eval_truncated_share
        from (
          select r.run_id, u.name as run_name, r.idx as round_idx, r.stage,
            {pick['prompts']} as train_prompts, {pick['solved']} as train_solved_prompts,
            {pick['attempts']} as train_attempts, {pick['passed']} as train_passed,
            {pick['pass_rate']} as train_pass_rate,
            e.n as eval_n, e.passed as eval_passed, e.pass_at_1 as eval_pass_at_1,
            e.truncated_share as eval_truncated_share
          from rounds r join runs u on u.id = r.run_id
          left join evaluations e on e.run_id = r.run_id and e.round_idx = r.idx
            and e.split = 'eval'
        )
        order by run_id, round_idx
        """)

    db.execute("drop view if exists repaired_attempts")
    db.create_view("repaired_attempts", f"""
        select a.run_id, a.round_idx, a.task_id,
          json_extract(t.prompt_json, '$[#-1].content') as prompt, t.reference,
          p.id as original_attempt_id, p.completion as original_completion,
          (select group_concat(v.feedback, char(10)) from verdicts v
             where v.attempt_id = p.id and v.feedback <> '') as original_feedback,
          (select group_concat(c.critic || ' (' || c.kind || '): ' || c.text, char(10))
             from critiques c where c.attempt_id = p.id) as critiques,
          a.id as repair_attempt_id, a.depth, a.completion as repair_completion
        from attempts a join attempts p on p.id = a.parent_id join tasks t on t.id = a.task_id
        where a.parent_id is not null and {_ATTEMPT_PASSED.format(a='a')}
        """)

    db.execute("drop view if exists regressions")
    db.create_view("regressions", f"""
        select k.run_id, k.task_id, k.round_idx as solved_round, n.round_idx as failed_round,
          json_extract(t.prompt_json, '$[#-1].content') as prompt, t.reference,
          k.id as solved_attempt_id, k.completion as solved_completion,
          n.id as failed_attempt_id, n.completion as failed_completion,
          (select group_concat(v.feedback, char(10)) from verdicts v
             where v.attempt_id = n.id and v.feedback <> '') as failed_feedback
        from attempts k
        join attempts n on n.run_id = k.run_id and n.task_id = k.task_id
          and n.round_idx = k.round_idx + 1 and n.purpose = 'eval' and n.depth = 0
        join tasks t on t.id = k.task_id
        where k.purpose = 'eval' and k.depth = 0 and {_ATTEMPT_PASSED.format(a='k')}
          and not {_ATTEMPT_PASSED.format(a='n')}
        """)


@migration
def m006_text_search_and_held_out_index(db: Database) -> None:
    # `loop logs -q` and `loop mistakes -q`: substring search over answers, verifier feedback
    # and the mistake log. Trigram full-text indexes find the few rows that contain a rare text
    # without reading the run (loop.queries decides when to use them). Index only (the text stays
    # in its table), no positions (detail=none), kept in step by triggers. `content='...'` in
    # single quotes on purpose: Datasette's search box would send them phrase queries, which
    # detail=none cannot answer, and it only looks for content="..." or content=[...].
    for table, columns in (("attempts", ["completion"]), ("verdicts", ["feedback"]),
                           ("mistakes", ["last_feedback", "kind"])):
        _trigram_index(db, table, columns)
    # `regressions`: held-out answers by task and round, with their depth and id in the index,
    # so the view joins and judges them without reading the (large) attempt rows; the view is
    # pinned to it (SQLite would otherwise pick the wider newest-first index and read rows).
    db.execute("drop index if exists idx_attempts_eval_by_task")
    db.execute("create index if not exists idx_attempts_held_out on attempts "
               "(run_id, task_id, round_idx, depth, id) where purpose = 'eval'")
    db.execute("drop view if exists regressions")
    db.create_view("regressions", f"""
        select k.run_id, k.task_id, k.round_idx as solved_round, n.round_idx as failed_round,
          json_extract(t.prompt_json, '$[#-1].content') as prompt, t.reference,
          k.id as solved_attempt_id, k.completion as solved_completion,
          n.id as failed_attempt_id, n.completion as failed_completion,
          (select group_concat(v.feedback, char(10)) from verdicts v
             where v.attempt_id = n.id and v.feedback <> '') as failed_feedback
        from attempts k indexed by idx_attempts_held_out
        join attempts n indexed by idx_attempts_held_out on n.run_id = k.run_id
          and n.task_id = k.task_id and n.round_idx = k.round_idx + 1 and n.purpose = 'eval'
          and n.depth = 0
        join tasks t on t.id = k.task_id
        where k.purpose = 'eval' and k.depth = 0 and {_ATTEMPT_PASSED.format(a='k')}
          and not {_ATTEMPT_PASSED.format(a='n')}
        """)


def _trigram_index(db: Database, table: str, columns: list[str]) -> None:
    fts = f"{table}_fts"
    if db[fts].exists():
        return
    names = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    db.execute(f"create virtual table {fts} using fts5({names}, content='{table}', "
               "content_rowid='rowid', tokenize='trigram', detail='none', columnsize=0)")
    db.execute(f"create trigger {fts}_ai after insert on {table} begin "
               f"insert into {fts}(rowid, {names}) values (new.rowid, {new}); end")
    db.execute(f"create trigger {fts}_ad after delete on {table} begin "
               f"insert into {fts}({fts}, rowid, {names}) values ('delete', old.rowid, {old}); end")
    db.execute(f"create trigger {fts}_au after update of {names} on {table} begin "
               f"insert into {fts}({fts}, rowid, {names}) values ('delete', old.rowid, {old}); "
               f"insert into {fts}(rowid, {names}) values (new.rowid, {new}); end")
    db.execute(f"insert into {fts}({fts}) values ('rebuild')")  # rows stored before m006


@migration
def m007_run_resumes(db: Database) -> None:
    # How often `loop resume` continued the run: a resumed run's created-to-finished span holds
    # the time it lay dead, so `loop show` does not count that span as the run's own time.
    db["runs"].add_column("resumes", int, not_null_default=0)


# Trigram indexes brought up to date in bulk (loop.search_index) instead of by a trigger per
# inserted row: indexing an answer's trigrams cost more than the rest of writing it
# (bench/store.py). The triggers of m006 go for answers and feedback (the mistake log, updated in
# place row by row, keeps its own). `search_index` records per index how far it has indexed its
# table (rowids above are not indexed yet) and whether a row it had indexed was deleted or changed
# since (then the next refresh rebuilds it).
LAZY_SEARCH = (("attempts", ("completion",)), ("verdicts", ("feedback",)))


@migration
def m008_search_index_off_the_write_path(db: Database) -> None:
    db.execute("create table if not exists search_index (fts text primary key, "
               "indexed_rowid integer not null default 0, stale integer not null default 0)")
    for table, columns in LAZY_SEARCH:
        _index_in_bulk(db, table, columns, triggers_of=f"{table}_fts")


def _index_in_bulk(db: Database, table: str, columns: tuple[str, ...], triggers_of: str) -> None:
    """Move `table`'s search index off the write path: drop the per-row triggers that kept it
    (named `{triggers_of}_ai/_ad/_au`), record every row so far as indexed, and mark the index
    stale when an indexed row is deleted or its indexed columns change (loop.search_index)."""
    fts = f"{table}_fts"
    for suffix in ("ai", "ad", "au"):
        db.execute(f"drop trigger if exists {triggers_of}_{suffix}")
    # Up to here the triggers kept the index whole: every row so far is indexed.
    db.execute("insert or replace into search_index (fts, indexed_rowid, stale) values "
               f"(?, (select coalesce(max(rowid), 0) from {table}), 0)", [fts])
    indexed = f"(select indexed_rowid from search_index where fts = '{fts}')"
    mark = f"update search_index set stale = 1 where fts = '{fts}';"
    db.execute(f"create trigger {fts}_stale_ad after delete on {table} "
               f"when old.rowid <= {indexed} begin {mark} end")
    db.execute(f"create trigger {fts}_stale_au after update of {', '.join(columns)} on "
               f"{table} when old.rowid <= {indexed} begin {mark} end")


@migration
def m009_binary_logprobs(db: Database) -> None:
    # Log-probabilities as little-endian float32 (what the model computed, bit for bit) instead
    # of JSON text: formatting ~60 floats was most of the time of writing an answer, and the
    # blob is a quarter of the size. Rows written before keep their logprobs_json.
    db["attempts"].add_column("logprobs_f32", bytes)


@migration
def m010_eval_pass_at_k(db: Database) -> None:
    # Sampled held-out evaluation (evaluate.samples): per evaluation row, the samples drawn per
    # problem, their temperature and {k: pass@k} (unbiased estimator, loop.pass_at_k). NULL when
    # the round drew none. The sampled answers are `eval` attempts with sample_index >= 1 (the
    # greedy answer is sample 0), so the greedy figures stay what they were.
    columns = db["evaluations"].columns_dict
    for name, kind in (("samples", int), ("sample_temperature", float), ("pass_at_k_json", str)):
        if name not in columns:
            db["evaluations"].add_column(name, kind)
    # `regressions` compares the greedy answers of consecutive rounds only: a sampled answer that
    # fails is no regression. Its partial index holds only greedy held-out answers, so the view
    # still judges them from the index (see m006) and sampled answers cost it nothing.
    db.execute("drop view if exists regressions")
    db.execute("drop index if exists idx_attempts_held_out")
    db.execute("create index if not exists idx_attempts_held_out_greedy on attempts "
               "(run_id, task_id, round_idx, depth, id) where purpose = 'eval' "
               "and sample_index = 0")
    db.create_view("regressions", f"""
        select k.run_id, k.task_id, k.round_idx as solved_round, n.round_idx as failed_round,
          json_extract(t.prompt_json, '$[#-1].content') as prompt, t.reference,
          k.id as solved_attempt_id, k.completion as solved_completion,
          n.id as failed_attempt_id, n.completion as failed_completion,
          (select group_concat(v.feedback, char(10)) from verdicts v
             where v.attempt_id = n.id and v.feedback <> '') as failed_feedback
        from attempts k indexed by idx_attempts_held_out_greedy
        join attempts n indexed by idx_attempts_held_out_greedy on n.run_id = k.run_id
          and n.task_id = k.task_id and n.round_idx = k.round_idx + 1 and n.purpose = 'eval'
          and n.sample_index = 0 and n.depth = 0
        join tasks t on t.id = k.task_id
        where k.purpose = 'eval' and k.sample_index = 0 and k.depth = 0
          and {_ATTEMPT_PASSED.format(a='k')} and not {_ATTEMPT_PASSED.format(a='n')}
        """)


@migration
def m011_episode_turns(db: Database) -> None:
    # Episodes (multi-turn answers in an environment): the episode on its attempt row, and every
    # message after the prompt in `turns`, in order, with the ids that were sampled or that carry
    # the environment's message (`trained` 1: the model's own tokens).
    for column, kind in (("prompt_ids_json", str), ("environment", str), ("tools_json", str),
                         ("env_reward", float), ("env_error", str), ("end_reason", str)):
        db["attempts"].add_column(column, kind)
    db.execute("""create table if not exists turns (
        id text primary key, attempt_id text not null, idx integer not null,
        role text not null, text text not null, token_ids_json text, logprobs_f32 blob,
        trained integer not null, tool_calls_json text, name text, arguments_json text,
        error text, seconds float, reward float, finish_reason text)""")
    db.execute("create index if not exists idx_turns_attempt on turns (attempt_id, idx)")
    db.create_view("episode_turns", """
        select a.run_id, a.round_idx, a.purpose, a.task_id, a.sample_index, a.environment,
          a.end_reason, a.env_reward, t.attempt_id, t.idx as turn, t.role, t.text,
          t.tool_calls_json, t.name as tool, t.arguments_json, t.error, t.reward, t.seconds,
          t.trained, json_array_length(t.token_ids_json) as tokens
        from turns t join attempts a on a.id = t.attempt_id""", replace=True)


# Critique texts indexed in bulk as well (loop.search_index), like answers and feedback (m008):
# the triggers sqlite-utils made in m004 tokenized each critique as it was written, which cost
# more than the rest of writing it (bench/store.py). The index and its column are unchanged.
LAZY_CRITIQUE_SEARCH = (("critiques", ("text", "kind")),)


@migration
def m012_critique_search_off_the_write_path(db: Database) -> None:
    for table, columns in LAZY_CRITIQUE_SEARCH:
        # m004's triggers: sqlite-utils names them after the table
        _index_in_bulk(db, table, columns, triggers_of=table)


@migration
def m013_drop_redundant_verdict_index(db: Database) -> None:
    # m001's unique index on verdicts (attempt_id, verifier) kept nothing the primary key does not
    # keep: a verdict's id is the hash of exactly (attempt id, verifier) (Store.insert_verdicts),
    # so a second verdict of the same pair has the same id and is refused by the key. Every lookup
    # by attempt uses idx_verdicts_attempt_passed (m005), which also answers pass/fail from the
    # index alone. Writing each verdict into it was a fifth of SQLite's time for a round's
    # verdicts (inserted and committed) in a store of a million attempts (bench/store.py).
    db.execute("drop index if exists idx_verdicts_attempt_id_verifier")
