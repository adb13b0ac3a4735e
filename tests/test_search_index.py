"""loop.search_index: the trigram indexes over answers and feedback are brought up to date in bulk
(not by a trigger per written row), and a search never misses a committed answer nor finds one
that was deleted, even when SQLite reuses a deleted row's rowid."""

from __future__ import annotations

from loop.schema import Attempt, Task, Verdict
from loop.search_index import refresh


def _setup(store, tmp_path):
    store.create_run(run_id="r", name="r", task="t", model="m", config={}, seed=0,
                     rounds_planned=1, versions={}, git_sha=None, run_dir=str(tmp_path))
    store.ensure_round("r", 1, None)
    task = Task(source="t", split="train", prompt=[{"role": "user", "content": "2+2?"}],
                reference="4")
    store.upsert_tasks([task])
    return task


def _attempt(task, i, text):
    return Attempt(id=f"a{i}", run_id="r", round_index=1, task_id=task.id, purpose="train",
                   sample_index=i, messages=[], completion=text)


def _found(store, fts, text):
    """Rowids the index holds for a 3-letter text (one trigram: detail=none has no phrases)."""
    assert len(text) == 3
    return {r[0] for r in store.db.execute(
        f"select rowid from {fts} where {fts} match ?", [f'"{text}"']).fetchall()}


def test_rows_are_indexed_by_the_refresh_not_by_the_write(store, tmp_path):
    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, 0, "the zebra says four"), _attempt(task, 1, "five")])
    store.insert_verdicts([("a0", "math", Verdict(passed=True, feedback="quokka ok"), 0.1)])
    assert _found(store, "attempts_fts", "zeb") == set()  # the write did not index it
    assert refresh(store.db) == 3  # two answers, one feedback
    assert len(_found(store, "attempts_fts", "zeb")) == 1
    assert len(_found(store, "verdicts_fts", "quo")) == 1
    assert refresh(store.db) == 0  # nothing new: nothing done
    store.insert_attempts([_attempt(task, 2, "a zebra again")])
    assert refresh(store.db) == 1  # only the new row
    assert len(_found(store, "attempts_fts", "zeb")) == 2


def test_a_deleted_indexed_row_makes_the_index_rebuild(store, tmp_path):
    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, 0, "first aardvark"), _attempt(task, 1, "last okapi")])
    refresh(store.db)
    okapi = _found(store, "attempts_fts", "oka")
    store.db.execute("delete from attempts where id = 'a1'")  # e.g. an evaluation redone
    store.db.conn.commit()
    assert store.db.execute("select stale from search_index where fts = 'attempts_fts'"
                            ).fetchone()[0] == 1
    # SQLite gives the next row the deleted row's rowid: the index must not keep the old text
    store.insert_attempts([_attempt(task, 3, "new pangolin")])
    assert store.db.execute("select rowid from attempts where id = 'a3'").fetchone()[0] in okapi
    refresh(store.db)
    assert _found(store, "attempts_fts", "oka") == set()
    assert len(_found(store, "attempts_fts", "pan")) == 1
    assert len(_found(store, "attempts_fts", "aar")) == 1
    assert store.db.execute("select stale from search_index").fetchall() == [(0,)] * 3


def test_loop_logs_search_sees_answers_written_since_the_last_round(store, tmp_path):
    from loop.queries import attempt_logs

    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, 0, "the wombat answer")])
    rows = attempt_logs(store, "r", query="wombat")
    assert [r["completion"] for r in rows] == ["the wombat answer"]


def test_loop_datasette_indexes_every_answer_before_serving(store, tmp_path, monkeypatch):
    """Datasette's search over answers must see rows written since the last round ended."""
    from typer.testing import CliRunner

    import loop.cli.browse
    from loop.cli import app

    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, 0, "the narwhal answer")])

    class Served:  # stands in for the datasette process: the test checks what was served
        def __init__(self, command):
            self.command = command

        def wait(self):
            return 0

    monkeypatch.setattr(loop.cli.browse.subprocess, "Popen", Served)
    db = store.db.execute("pragma database_list").fetchone()[2]
    result = CliRunner().invoke(app, ["datasette", "--db", db])
    assert result.exit_code == 0, result.output
    assert len(_found(store, "attempts_fts", "nar")) == 1


def test_critiques_are_indexed_by_the_refresh_and_loop_mistakes_search_finds_new_ones(store,
                                                                                      tmp_path):
    from loop.queries import mistake_rows
    from loop.schema import Critique

    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, 0, "five")])
    store.insert_critiques([("a0", Critique(kind="wrong_answer", critic="taxonomy",
                                            text="the capybara forgot a carry"))])
    match = "select rowid from critiques_fts where critiques_fts match 'capybara'"
    assert store.db.execute(match).fetchall() == []  # the write did not index it
    store.update_mistakes("r", 1, {(task.id, "wrong_answer"): ("a0", "expected 4", 1)}, set())
    # the search indexes what was written since the last round ended before it looks
    rows = mistake_rows(store, "r", query="capybara")
    assert [(r["task_id"], r["kind"]) for r in rows] == [(task.id, "wrong_answer")]
    assert len(store.db.execute(match).fetchall()) == 1
