"""bench/store.py at a small size: it builds the synthetic store through the store's own insert
path, and prints a figure, the goal and the ratio for the insert rate and for every documented
query (`loop show`, `loop logs` and `loop mistakes` with each filter, every canned query)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from loop.datasette import canned_queries

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "store.py"

DOCUMENTED = [
    "loop show RUN", "loop logs RUN", "loop logs RUN --round", "loop logs RUN --failed",
    "loop logs RUN --passed", "loop logs RUN --task PREFIX", "loop logs RUN -q",
    "loop logs RUN --failed --tree", "loop mistakes RUN", "loop mistakes RUN --open",
    "loop mistakes RUN --recurring", "loop mistakes RUN --kind", "loop mistakes RUN -q",
]
ROW = re.compile(r"^\| (?P<name>.+?) \| (?P<figure>[\d,.]+) (?P<unit>ms|attempts/s).*? \| "
                 r"(?P<goal>[<>]=? [\d,]+(?: ms|/s)) \| (?P<ratio>[\d.]+)x \| (?P<met>yes|NO) \| "
                 r"(?P<rows>[\d,]+|–) \|$")


def _bench(*args: str, db: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args, *(["--db", str(db)] if db else [])],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_small_store_bench_prints_every_query_with_its_goal(tmp_path):
    db = tmp_path / "bench.db"
    result = _bench("--attempts", "3000", "--rounds", "3", "--repeat", "1", db=db)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = match
    assert "machine: " in result.stdout and "cores" in result.stdout
    inserts = rows["Store.insert_attempts"]
    assert inserts["unit"] == "attempts/s" and inserts["goal"] == ">= 20,000/s"
    rate = float(inserts["figure"].replace(",", ""))
    assert float(inserts["ratio"]) == pytest.approx(rate / 20_000, abs=0.01)
    for name in DOCUMENTED:
        assert any(row.startswith(name) for row in rows), name
    for query in canned_queries():
        assert f"datasette /{query}" in rows and f"datasette /{query} ?run=bench-big" in rows
    timed = [m for m in rows.values() if m["unit"] == "ms"]
    assert len(timed) == len(rows) - 4  # the insert rates: wall clock and CPU time
    assert "Store.insert_attempts (CPU time)" in rows
    for match in timed:
        ms = float(match["figure"].replace(",", ""))
        assert match["goal"] == "< 100 ms"
        assert float(match["ratio"]) == pytest.approx(ms / 100, abs=0.01)
        assert (match["met"] == "yes") == (ms < 100)
    # rows come from the store: `loop show` has round 0 plus 3 rounds; logs show their 10
    assert rows["loop show RUN"]["rows"] == "4"
    assert rows["loop logs RUN --failed"]["rows"] == "10"
    assert int(rows["datasette /round_accuracy"]["rows"]) == 2 * 4  # two runs

    # The store is kept with --db and reused: queries only, no insert rate.
    again = _bench("--attempts", "3000", "--rounds", "3", "--repeat", "1", db=db)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout and "Store.insert_attempts" not in again.stdout
    assert "loop show RUN" in again.stdout


def test_bench_rejects_a_store_too_small_to_mean_anything():
    result = _bench("--attempts", "10")
    assert result.returncode == 2 and "--attempts must be >= 100" in result.stderr
