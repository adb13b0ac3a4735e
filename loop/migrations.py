"""Numbered schema migrations of the core store, applied on every open (sqlite-utils Migrations).

Rules (from llm): never edit an applied migration, add a new one; guard column additions; keep
backfills inside the migration's transaction. store/README.md documents every table and column.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("loop")


@migrations()
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


@migrations()
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


@migrations()
def m003_add_completion_raw(db: Database) -> None:
    # Text that is not valid UTF-8 (lone surrogates, e.g. from a JSON "\udcff" escape) cannot be
    # stored as TEXT: `completion` then holds a readable copy with U+FFFD and `completion_raw`
    # the exact string as UTF-8 with surrogates passed through, so it still round-trips.
    if "completion_raw" not in db["attempts"].columns_dict:
        db["attempts"].add_column("completion_raw", bytes)


@migrations()
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
