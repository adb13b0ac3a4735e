"""bench/store.py at a small size: it builds the synthetic store through the store's own insert
path, and prints a figure, the goal and the ratio for the insert rate and for every documented
query (`loop show`, `loop logs` and `loop mistakes` with each filter, every canned query)."""

from __future__ import annotations

import json
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
    "loop logs RUN --failed --tree", "loop mistakes RUN (every row)",
    "loop mistakes RUN --open (every row)", "loop mistakes RUN --recurring (every row)",
    "loop mistakes RUN --kind", "loop mistakes RUN -q", "loop mistakes RUN -n 20",
    "loop mistakes RUN --open -n 20",
]
ROW = re.compile(r"^\| (?P<name>.+?) \| (?P<figure>[\d,.]+) (?P<unit>ms|attempts/s).*? \| "
                 r"(?P<goal>[<>]=? [\d,]+(?: ms|/s)) \| (?P<ratio>[\d.]+)x \| (?P<met>yes|NO) \| "
                 r"(?P<rows>[\d,]+|–) \|$")


def _bench(*args: str, db: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args, *(["--db", str(db)] if db else [])],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow  # two bench processes, each building or reading a store
def test_small_store_bench_prints_every_query_with_its_goal(tmp_path):
    db = tmp_path / "bench.db"
    figures = tmp_path / "figures.json"
    result = _bench("--attempts", "3000", "--rounds", "3", "--repeat", "1", "--json",
                    str(figures), db=db)
    assert result.returncode == 0, result.stderr[-3000:]
    # the figures bench/perf.py reads: each write path's rate, each query's median
    data = json.loads(figures.read_text())
    assert set(data["insert"]) == {"insert_attempts", "write stages", "search index"}
    assert all(rate["wall"] > 0 and rate["cpu"] > 0 for rate in data["insert"].values())
    assert len(data["queries"]) >= len(DOCUMENTED) and data["attempts"] > 2000
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
    assert len(timed) == len(rows) - 6  # the write rates (3 paths): wall clock and CPU time
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


@pytest.mark.slow  # a bench process
def test_bench_rejects_a_store_too_small_to_mean_anything():
    result = _bench("--attempts", "10")
    assert result.returncode == 2 and "--attempts must be >= 100" in result.stderr


# ----- the fast paths give what a plain reading gives (on the bench's synthetic store) ----------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A store built by bench/store.py (6,000 attempts over 3 rounds, two runs)."""
    import importlib.util

    from loop.store import Store

    spec = importlib.util.spec_from_file_location("bench_store", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_store"] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    path = tmp_path_factory.mktemp("synthetic") / "loop.db"
    bench.build(path, 6000, 3, seed=1)
    store = Store.open(path)
    yield store
    store.db.conn.close()


def _contains(text: str | None, query: str) -> bool:
    return text is not None and query.lower() in text.lower()  # LIKE: ASCII without case


def _reference_logs(store, run_id: str, query: str) -> list[str]:
    """`loop logs -q`'s contract, read plainly: the run's attempts in display order whose answer,
    prompt JSON, a verdict's feedback or mistake kind, or a critique's kind contains the text."""
    rows = store.db.execute(
        "select a.id, a.completion, t.prompt_json, (select json_group_array(v.feedback) from "
        "verdicts v where v.attempt_id = a.id), (select json_group_array(v.mistake) from "
        "verdicts v where v.attempt_id = a.id and v.mistake is not null), (select "
        "json_group_array(c.kind) from critiques c where c.attempt_id = a.id) from attempts a "
        "join tasks t on t.id = a.task_id where a.run_id = ? order by a.round_idx desc, "
        "a.purpose desc, a.task_id, a.depth, a.sample_index, a.id", [run_id]).fetchall()
    import json

    return [r[0] for r in rows if _contains(r[1], query) or _contains(r[2], query)
            or any(_contains(f, query) for f in json.loads(r[3]) + json.loads(r[4])
                   + json.loads(r[5]))]


def _reference_mistakes(store, run_id: str, query: str) -> list[tuple[str, str]]:
    critiqued = {r[0] for r in store.db.execute(
        "select a.task_id from critiques_fts f join critiques c on c.rowid = f.rowid join "
        "attempts a on a.id = c.attempt_id where critiques_fts match ? and a.run_id = ?",
        [store.db.quote_fts(query), run_id])}
    rows = store.db.execute(
        "select m.task_id, m.kind, m.last_feedback, t.prompt_json from mistakes m join tasks t "
        "on t.id = m.task_id where m.run_id = ? order by m.occurrences desc, m.first_round, "
        "m.task_id, m.kind", [run_id]).fetchall()
    return [(r[0], r[1]) for r in rows if _contains(r[2], query) or _contains(r[1], query)
            or _contains(r[3], query) or r[0] in critiqued]


def _queries(store, run_id: str) -> dict[str, str]:
    """Texts of every kind: rare (one answer's feedback, one prompt, one answer), common, short,
    absent, with LIKE wildcards, in another case."""
    feedback = store.db.execute(
        "select v.feedback from verdicts v join attempts a on a.id = v.attempt_id where "
        "a.run_id = ? and v.feedback like 'expected%' order by v.id limit 1",
        [run_id]).fetchone()[0]
    prompt = store.db.execute(
        "select json_extract(t.prompt_json, '$[#-1].content') from attempts a join tasks t on "
        "t.id = a.task_id where a.run_id = ? order by a.id limit 1", [run_id]).fetchone()[0]
    answer = store.db.execute(
        "select completion from attempts where run_id = ? and completion like 'To add%' "
        "order by id limit 1", [run_id]).fetchone()[0]
    return {"feedback": feedback, "prompt": prompt, "answer": answer[:40],
            "upper": feedback.upper(), "common": "answer is", "short": "7", "absent": "zebra",
            "wildcards": "1_0%", "kind": "slip", "critique": "carries"}


@pytest.mark.parametrize("cap", [None, 5])
def test_text_search_through_the_trigram_indexes_finds_what_a_plain_read_finds(synthetic, cap,
                                                                               monkeypatch):
    """With the shipped cap, and with a cap of 5 rows that sends most texts down the
    read-in-display-order path."""
    from loop import queries as logs

    if cap is not None:
        monkeypatch.setattr(logs, "TEXT_CANDIDATES", cap)
    run_id = synthetic.get_run("bench-big")["id"]
    texts = _queries(synthetic, run_id)
    if cap is None:
        for name in ("feedback", "prompt", "answer", "upper"):  # rare: looked up by rowid
            assert logs._text_candidates(synthetic, texts[name]) is not None, name
    assert logs._text_candidates(synthetic, texts["common"]) is None  # read newest first
    for name, text in texts.items():
        expected = _reference_logs(synthetic, run_id, text)
        got = [r["id"] for r in logs.attempt_logs(synthetic, run_id, query=text, limit=None)]
        assert got == expected, name
        assert [r["id"] for r in logs.attempt_logs(synthetic, run_id, query=text)] == expected[:10]
    assert _reference_logs(synthetic, run_id, texts["feedback"])  # the rare ones do match
    # combined with the other filters
    failed = logs.attempt_logs(synthetic, run_id, query=texts["prompt"], passed=False, limit=None,
                               round_idx=2)
    assert all(not r["passed"] and r["round"] == 2 for r in failed)
    assert {r["id"] for r in failed} <= set(_reference_logs(synthetic, run_id, texts["prompt"]))


@pytest.mark.parametrize("cap", [None, 5])
def test_mistake_search_finds_what_a_plain_read_finds(synthetic, cap, monkeypatch):
    from loop import queries as logs

    if cap is not None:
        monkeypatch.setattr(logs, "TEXT_CANDIDATES", cap)
    run_id = synthetic.get_run("bench-big")["id"]
    texts = _queries(synthetic, run_id)
    if cap is None:
        assert logs._mistake_candidates(synthetic, run_id, texts["prompt"]) is not None
    else:
        assert logs._mistake_candidates(synthetic, run_id, texts["critique"]) is None
    for name, text in texts.items():
        expected = _reference_mistakes(synthetic, run_id, text)
        every = logs.mistake_rows(synthetic, run_id, query=text)
        assert [(r["task_id"], r["kind"]) for r in every] == expected, name
        first = logs.mistake_rows(synthetic, run_id, query=text, limit=5)
        assert [(r["task_id"], r["kind"]) for r in first] == expected[:5], name
    assert _reference_mistakes(synthetic, run_id, texts["critique"])


def test_cached_round_counts_equal_a_full_count(synthetic):
    from loop.summary import run_summary

    for name in ("bench-big", "bench-small"):
        run = synthetic.get_run(name)
        counts, errors = synthetic.train_counts(run["id"]), synthetic.error_counts(run["id"])
        for r in run_summary(synthetic, run)["rounds"][1:]:
            full = counts[r["index"]]
            assert (r["train"]["prompts"], r["train"]["attempts"], r["train"]["passed"],
                    r["train"]["solved_prompts"]) == (full["prompts"], full["attempts"],
                                                     full["passed"], full["solved_prompts"])
            full_errors = errors.get(r["index"], {"verifier": 0, "reward": 0})
            assert (r["errors"]["verifier"], r["errors"]["null_rewards"]) == \
                (full_errors["verifier"], full_errors["reward"])
        assert sum(e["verifier"] for e in errors.values()) > 0  # the bench stores infra errors


def test_regressions_view_equals_a_recount(synthetic):
    passed = {}
    for task, run, idx, ok in synthetic.db.execute(
            "select a.task_id, a.run_id, a.round_idx, min(v.passed) from attempts a join verdicts "
            "v on v.attempt_id = a.id where a.purpose = 'eval' group by a.id"):
        passed[(run, task, idx)] = bool(ok)
    expected = sorted(key for key, ok in passed.items()
                      if ok and passed.get((key[0], key[1], key[2] + 1)) is False)
    got = sorted(synthetic.db.execute("select run_id, task_id, solved_round from regressions"))
    assert got == expected and got


def test_trigram_indexes_stay_in_step_with_their_tables(synthetic):
    """FTS5's own integrity check (index against table) after inserts, updates (the mistake
    log) and deletes (a round's evaluation forgotten on resume)."""
    run_id = synthetic.get_run("bench-small")["id"]
    before = synthetic.db.execute("select count(*) from attempts").fetchone()[0]
    synthetic.reset_round_from_train(run_id, 3)
    assert synthetic.db.execute("select count(*) from attempts").fetchone()[0] < before
    for fts in ("attempts_fts", "verdicts_fts", "mistakes_fts", "critiques_fts"):
        synthetic.db.execute(f"insert into {fts}({fts}) values ('integrity-check')")
    assert synthetic.db.execute("pragma integrity_check").fetchone()[0] == "ok"
