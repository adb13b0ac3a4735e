"""The search indexes over answers, verifier feedback and critiques, brought up to date in bulk.

Writing an answer or a critique does not index it (migrations m008 and m012: a trigger per row
cost more than the rest of the write). `refresh(db)` indexes every row added since the last
refresh in one statement per index, or rebuilds an index when a row it had indexed was deleted or
changed since (rare: a resumed run redoing an evaluation). The engine refreshes after each round,
and every search (`loop logs -q`, `loop mistakes -q`, `loop datasette`) refreshes first, so a
search sees every committed row; a plain-SQL user of `attempts_fts`/`verdicts_fts`/`critiques_fts`
between rounds of a live run sees the rows up to the last finished round.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database

from loop.migrations import LAZY_CRITIQUE_SEARCH, LAZY_SEARCH

# every index `refresh` keeps: (table, its indexed columns); its index is the table's `_fts`
SEARCH_INDEXES = LAZY_SEARCH + LAZY_CRITIQUE_SEARCH


def refresh(db: Database) -> int:
    """Bring every lazy index up to date; returns the rows indexed (all of a table's on a
    rebuild). A store that cannot be written (read-only file, another writer holding the lock
    past the busy timeout) is left as it is: searches then miss the newest rows, never fail."""
    conn = db.conn
    try:
        if conn.in_transaction:  # inside a caller's transaction: part of it
            return sum(_refresh_one(db, table, columns) for table, columns in SEARCH_INDEXES)
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: no row indexed twice
        try:
            indexed = sum(_refresh_one(db, table, columns) for table, columns in SEARCH_INDEXES)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return indexed
    except sqlite3.OperationalError:
        return 0


def _refresh_one(db: Database, table: str, columns: tuple[str, ...]) -> int:
    fts = f"{table}_fts"
    state = db.execute("select indexed_rowid, stale from search_index where fts = ?",
                       [fts]).fetchone()
    top = db.execute(f"select coalesce(max(rowid), 0) from {table}").fetchone()[0]
    done, stale = state if state else (0, 1)
    if not stale and top == done:
        return 0
    names = ", ".join(columns)
    if stale:
        db.execute(f"insert into {fts}({fts}) values ('rebuild')")
        count = db.execute(f"select count(*) from {table}").fetchone()[0]
    else:
        count = db.execute(f"insert into {fts}(rowid, {names}) select rowid, {names} from "
                           f"{table} where rowid > ? and rowid <= ?", [done, top]).rowcount
    db.execute("insert or replace into search_index (fts, indexed_rowid, stale) values (?, ?, 0)",
               [fts, top])
    return count
