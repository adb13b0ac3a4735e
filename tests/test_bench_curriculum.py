"""bench/curriculum.py: one invocation runs the plain and curriculum arms with the same settings
and prints both arms' held-out scores and what each arm's select stage did (the benchmark itself
runs the default model for half an hour and is run by hand: BENCHMARKS.md). Here with the
scripted backend and the noop update, so only the bench's own bookkeeping is under test."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two `loop run`s as subprocesses
def test_both_arms_run_alike_and_only_one_selects_by_curriculum(tmp_path):
    config = tmp_path / "scripted.yaml"
    config.write_text("backend: {name: scripted, options: {completions: ['The answer is 3.']}}\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "curriculum.py"), "--config", str(config),
         "--rounds", "2", "--prompts", "4", "--eval", "3", "--steps", "0", "--train-size", "6",
         "--method", "noop", "--keep", str(tmp_path / "store")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    # held-out table: a score for rounds 0 to 2 in both arms, then their ratio
    held = [line.split(" | ") for line in lines if line.startswith(("| plain | 0.", "| curr"))
            and " pts " in line]
    assert [cells[0] for cells in held] == ["| plain", "| curriculum"]
    assert all(len(cells[1:4]) == 3 and all(c.startswith("0.") for c in cells[1:4])
               for cells in held)
    assert any(line.startswith("| curriculum / plain |") for line in lines)
    conn = sqlite3.connect(tmp_path / "store" / "loop.db")
    configs = dict(conn.execute("select name, json_extract(config_json, "
                                "'$.select.curriculum.enabled') from runs").fetchall())
    assert configs == {"plain": 0, "curriculum": 1}
    same = conn.execute("select count(distinct json_remove(config_json, '$.select', '$.name')) "
                        "from runs").fetchone()[0]
    assert same == 1  # the arms differ in their selection only
    # the select-stage table: 4 prompts a round, and the curriculum's counts only in its arm
    select_rows = [line for line in lines if line.startswith("| plain | 4 (")
                   or line.startswith("| curriculum | 4 (")]
    assert len(select_rows) == 2
    assert "–/–" in select_rows[0] and "–/–" not in select_rows[1]
