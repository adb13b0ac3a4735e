"""Where a run's event files go.

`round_finished` gets the run id, not the run's folder. The folder is in the store (`runs.run_dir`),
and the one way loop hands a plugin the store is `prepare_db(db)`, called on every open of a
store: so we remember each store opened in this process (weakly: a closed and dropped store is
forgotten) and look the run up there when a round finishes.

`log_dir(run_id)`, first that applies:
1. `$LOOP_TENSORBOARD_DIR/<run_id>` when that variable is set (one folder for many runs, e.g. to
   compare them in one TensorBoard);
2. `<run_dir>/tensorboard` for a run found in a store this process opened (the default: next to
   the run's adapters, `store/runs/<run_id>/tensorboard`);
3. `./tensorboard/<run_id>` (an engine driven without a store opened through loop).
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from pathlib import Path
from typing import Any

ENV = "LOOP_TENSORBOARD_DIR"

_STORES: "weakref.WeakSet[Any]" = weakref.WeakSet()


def remember(db: Any) -> None:
    """Keep `db` (a sqlite_utils.Database) for run lookups, as long as something else keeps it."""
    _STORES.add(db)


def run_dir(run_id: str) -> Path | None:
    """The run's folder as recorded in a store this process opened, or None."""
    for db in list(_STORES):
        try:
            row = db.execute("select run_dir from runs where id = ?", [run_id]).fetchone()
        except sqlite3.Error:  # closed, another thread's connection, or not a loop store
            continue
        if row and row[0]:
            return Path(row[0])
    return None


def log_dir(run_id: str) -> Path:
    override = os.environ.get(ENV)
    if override:
        return Path(override) / run_id
    folder = run_dir(run_id)
    if folder is not None:
        return folder / "tensorboard"
    return Path("tensorboard") / run_id
