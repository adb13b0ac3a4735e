"""What the comparison benchmarks share: run `loop` as a user would (a subprocess into one
store), read a run back with `loop show --json`, and describe the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOP = [sys.executable, "-m", "loop.cli.__main__"]


def run_loop(db: Path, name: str, task: str, config: str, *args: str) -> float:
    """`loop run` into `db` as run `name`; returns the wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([*LOOP, "run", task, "--config", config, "--db", str(db), "--name", name,
                    *args], check=True)
    return time.perf_counter() - started


def show(db: Path, name: str) -> dict:
    out = subprocess.run([*LOOP, "show", name, "--db", str(db), "--json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def finished_run(db: Path, name: str) -> tuple[dict, float] | None:
    """(show --json, wall seconds from its stored start and finish) for a finished run of that
    name in `db`, else None: lets a benchmark be continued without redoing finished runs."""
    import sqlite3
    from datetime import datetime

    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    row = conn.execute("select created, finished from runs where name = ? and status = 'finished'",
                       [name]).fetchone()
    conn.close()
    if row is None:
        return None
    wall = (datetime.fromisoformat(row[1]) - datetime.fromisoformat(row[0])).total_seconds()
    return show(db, name), wall


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()}, {cores} cores; python {platform.python_version()}"


def pass_at_1(data: dict) -> list[float]:
    return [r["eval"]["pass_at_1"] for r in data["rounds"]]


def gain(scores: list[float]) -> str:
    base, last = scores[0], scores[-1]
    ratio = f"{last / base:.2f}x" if base else "–"
    return f"{100 * (last - base):+.1f} pts ({ratio})"
