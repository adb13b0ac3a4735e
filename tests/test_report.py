"""`loop report` and `loop compare`: plots, the self-contained HTML page (also rendered in headless
Chromium), the numbers against `loop show --json`, runs with little or no data, and bad input.

The report and compare tests share two runs on the doubles (the parity scripted backend and the
noop updater, tests/scripted_runs.py: one with refinement, so the repair panel has data), whose
figures the parity rule gives exactly; the others build small stores through `loop.store.Store`."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.schema import Attempt, Task, Verdict
from loop.store import Store, open_db
from scripted_runs import expected_counts, scripted_run
from tiny_model import tiny_task_yaml

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("pass_rate", "rewards", "mistakes", "repairs", "throughput")
HEADINGS = {
    "pass_rate": "Held-out pass@1 and train solve rate",
    "rewards": "Reward distribution",
    "mistakes": "Mistakes opened and resolved",
    "repairs": "Repairs",
    "throughput": "Tokens per second by stage",
}
SETTINGS = [
    "--set", "select.prompts_per_round=12", "--set", "generate.n=4",
    "--set", "generate.max_new_tokens=6", "--set", "evaluate.problems=20",
    "--set", "evaluate.max_new_tokens=6",
]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----- the shared real runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory):
    """A store with two finished runs on the doubles (tests/scripted_runs.py: the parity backend,
    the noop update method): `refined` (2 rounds, verifier_feedback critic, refine.depth=1) and
    `plain` (1 round, another seed, no refinement)."""
    root = tmp_path_factory.mktemp("report-runs")
    task = root / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=200, eval_size=60))
    db = root / "loop.db"
    for name, extra in (("refined", ["--rounds", "2", "--set", "task.critics=[verifier_feedback]",
                                     "--set", "refine.depth=1", "--set", "refine.budget=8"]),
                        ("plain", ["--rounds", "1", "--set", "seed=1"])):
        scripted_run(root, [task, "--name", name, "--db", db, *SETTINGS, *extra])
    return db


def show(db: Path, run: str) -> dict:
    result = invoke("show", run, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


class PageParser(HTMLParser):
    """Collects per <section id>: its <h2> text, its tables (rows of cell texts) and paragraphs;
    plus every <img src> and every tag name."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.headings: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._section: str | None = None
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attrs["id"]
            self.sections[self._section] = {"tables": [], "paragraphs": [], "heading": None}
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table" and self._section:
            self.sections[self._section]["tables"].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "h2", "p"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        text = "".join(self._text or []).strip()
        if tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "tr" and self._row is not None:
            if self._section:
                self.sections[self._section]["tables"][-1].append(self._row)
            self._row = None
        elif tag == "h2":
            self.headings.append(text)
            if self._section:
                self.sections[self._section]["heading"] = text
        elif tag == "p" and self._section:
            self.sections[self._section]["paragraphs"].append(text)
        elif tag == "section":
            self._section = None
        if tag in ("td", "th", "h2", "p"):
            self._text = None


def parse(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def rows_by_round(table: list[list[str]]) -> dict[int, dict[str, str]]:
    header, *rows = table
    return {int(row[0]): dict(zip(header, row)) for row in rows}


def assert_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# ----- report on real runs ----------------------------------------------------------------------


@pytest.mark.slow  # renders plots (matplotlib) / shares the runs: a few seconds
def test_report_writes_valid_pngs_and_a_self_contained_page(runs_db, tmp_path):
    result = invoke("report", "refined", "--db", runs_db)  # default --out: reports/<run name>/
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "refined"  # tests run in tmp_path (conftest)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.png" for stem in PLOTS] + ["report.html"])
    for stem in PLOTS:
        width, height = assert_png(out / f"{stem}.png")
        assert width >= 600 and height >= 250
    page = parse(out / "report.html")
    # one image per section, each the PNG file's exact bytes as a data URI; nothing external
    assert len(page.images) == len(PLOTS)
    for stem, src in zip(PLOTS, page.images):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]) == (out / f"{stem}.png").read_bytes()
    assert not page.tags & {"script", "link", "iframe", "object"}
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text


@pytest.mark.slow  # renders plots (matplotlib) / shares the runs: a few seconds
def test_report_page_shows_each_section_and_the_numbers_of_loop_show(runs_db, tmp_path):
    out = tmp_path / "r"
    result = invoke("report", "refined", "--db", runs_db, "--out", out)
    assert result.exit_code == 0, result.output
    page = parse(out / "report.html")
    data = show(runs_db, "refined")
    assert set(HEADINGS.values()) <= set(page.headings)
    assert {stem: page.sections[stem]["heading"] for stem in PLOTS} == HEADINGS
    rounds = data["rounds"]
    assert [r["index"] for r in rounds] == [0, 1, 2]

    # the parity backend: the same 20 held-out problems are right for even first operands in
    # rounds 0 and 2 and for odd ones in round 1; the counts the rule gives for what was asked
    expected = expected_counts(runs_db, "refined")
    pass_at_1 = [r["eval"]["pass_at_1"] for r in rounds]
    assert pass_at_1[1] == pytest.approx(1 - pass_at_1[0]) and pass_at_1[2] == pass_at_1[0]
    passes = rows_by_round(page.sections["pass_rate"]["tables"][0])
    assert set(passes) == {0, 1, 2}
    for r in rounds:
        row = passes[r["index"]]
        e = expected[r["index"]]
        assert (r["eval"]["n"], r["eval"]["pass_at_1"]) == (20, e["eval_passed"] / 20)
        assert (r["train"]["prompts"], r["train"]["attempts"], r["train"]["passed"],
                r["train"]["solved_prompts"]) == (e["prompts"], e["attempts"], e["passed"],
                                                  e["solved"])
        assert row["pass@1"] == f"{r['eval']['pass_at_1']:.3f}"
        assert row["held-out n"] == str(r["eval"]["n"])
        if r["train"]["prompts"]:
            assert row["solved"] == str(r["train"]["solved_prompts"])
            assert row["train prompts"] == str(r["train"]["prompts"])
            assert row["attempts"] == str(r["train"]["attempts"])
            assert row["passed"] == str(r["train"]["passed"])
            rate = r["train"]["solved_prompts"] / r["train"]["prompts"]
            assert row["solve rate"] == f"{100 * rate:.1f}%"
        else:  # round 0 only evaluates
            assert row["solved"] == "–"
    gain = rounds[-1]["eval"]["pass_at_1"] - rounds[0]["eval"]["pass_at_1"]
    assert any(p.endswith(f"{gain:+.3f}") for p in page.sections["pass_rate"]["paragraphs"])

    repairs = rows_by_round(page.sections["repairs"]["tables"][0])
    assert set(repairs) == {1, 2}  # round 0 has no training, so no repairs
    for r in rounds[1:]:
        # every failed first turn up to refine.budget=8 is repaired, and every repair passes
        assert r["train"]["repairs"] == expected[r["index"]]["repairs"] == 8
        assert r["train"]["repaired"] == 8
        assert repairs[r["index"]]["repairs"] == str(r["train"]["repairs"])
        assert repairs[r["index"]]["passed"] == str(r["train"]["repaired"])

    speeds = rows_by_round(page.sections["throughput"]["tables"][0])
    for r in rounds:
        assert r["tokens_per_s"]
        for stage, value in r["tokens_per_s"].items():
            assert speeds[r["index"]][f"{stage} tok/s"] == f"{value:.1f}"

    # rewards: one row per trained round with as many values as the round had attempts
    rewards = rows_by_round(page.sections["rewards"]["tables"][0])
    for r in rounds[1:]:
        assert rewards[r["index"]]["reward function"] == "binary"
        assert rewards[r["index"]]["n"] == str(r["train"]["attempts"])
        mean = r["train"]["passed"] / r["train"]["attempts"]  # binary reward = passed
        assert rewards[r["index"]]["mean"] == f"{mean:.3f}"

    # mistakes: the opened counts add up to the mistake log's rows
    import sqlite3

    conn = sqlite3.connect(runs_db)
    logged = dict(conn.execute("select first_round, count(*) from mistakes m join runs r on "
                               "r.id = m.run_id where r.name = 'refined' group by 1").fetchall())
    table = page.sections["mistakes"]["tables"][0]
    opened: dict[int, int] = {}
    for row in table[1:]:
        opened[int(row[0])] = opened.get(int(row[0]), 0) + int(row[2])
    assert opened == logged and sum(logged.values()) > 0


CHROMIUM_BINARIES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_INSTALL_S = 900  # apt-get update + install, all of it


def _chromium_on_path() -> str | None:
    return next((shutil.which(b) for b in CHROMIUM_BINARIES if shutil.which(b)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium: the one on PATH, else Debian's `chromium` installed with apt-get
    (the test machines run as root and reach Debian's mirrors), one install per machine (a file
    lock keeps parallel workers from running apt at once), at most CHROMIUM_INSTALL_S seconds.
    An install that cannot run or fails fails the test, naming why: it never skips."""
    import fcntl
    import time

    found = _chromium_on_path()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.fail("no chromium binary on PATH, and no apt-get as root to install Debian's "
                    "chromium: install it (apt-get install -y chromium) to render the report")
    deadline = time.monotonic() + CHROMIUM_INSTALL_S
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open("/tmp/loop-tests-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            if _chromium_on_path():  # another worker installed it meanwhile
                break
            try:
                proc = subprocess.run(command, capture_output=True, text=True, env=env,
                                      timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"`{' '.join(command)}` did not finish within the "
                            f"{CHROMIUM_INSTALL_S} s given to installing chromium")
            if proc.returncode != 0:
                pytest.fail(f"`{' '.join(command)}` failed (exit {proc.returncode}) installing "
                            f"chromium to render the report: {(proc.stderr or proc.stdout)[-600:]}")
    found = _chromium_on_path()
    if found is None:
        pytest.fail("apt-get installed chromium but no chromium binary is on PATH")
    return found


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(runs_db, tmp_path, chromium):
    binary = chromium
    out = tmp_path / "r"
    assert invoke("report", "refined", "--db", runs_db, "--out", out).exit_code == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1280,2000", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.exists(), proc.stderr[-2000:]
    assert shot.stat().st_size > 30_000
    import numpy as np
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    inked = (pixels < 245).any(axis=2)
    assert inked.mean() > 0.03  # text, tables and plots, not a blank page
    # content runs down the page (the plots render at full size, not as broken-image icons)
    assert inked[1500:].mean() > 0.01
    # matplotlib's first colour (#1f77b4): drawn only by the embedded plots
    blue = (np.abs(pixels - np.array([31, 119, 180])) < 30).all(axis=2)
    assert blue.sum() > 2_000


# ----- compare ----------------------------------------------------------------------------------


@pytest.mark.slow  # renders plots (matplotlib) / shares the runs: a few seconds
def test_compare_prints_both_runs_side_by_side(runs_db, tmp_path):
    refined, plain = show(runs_db, "refined"), show(runs_db, "plain")
    for name, shown in (("refined", refined), ("plain", plain)):  # what the parity rule gives
        counts = expected_counts(runs_db, name)
        assert [r["eval"]["pass_at_1"] for r in shown["rounds"]] == [
            counts[idx]["eval_passed"] / 20 for idx in sorted(counts)]
    result = invoke("compare", "refined", "plain", "--db", runs_db)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "refined" in result.output and "plain" in result.output
    for idx in (0, 1):  # rows are rounds: both runs' pass@1 on one line
        row = next(line for line in lines if line.split() and line.split()[0] == str(idx))
        assert row.split()[1:] == [f"{refined['rounds'][idx]['eval']['pass_at_1']:.3f}",
                                   f"{plain['rounds'][idx]['eval']['pass_at_1']:.3f}"]
    row = next(line for line in lines if line.split()[:1] == ["2"])
    assert row.split()[1:] == [f"{refined['rounds'][2]['eval']['pass_at_1']:.3f}", "–"]
    gains = next(line for line in lines if line.strip().startswith("gain vs 0")).split()[3:]
    assert gains == [f"{gain:+.3f}" for gain in (
        refined["rounds"][2]["eval"]["pass_at_1"] - refined["rounds"][0]["eval"]["pass_at_1"],
        plain["rounds"][1]["eval"]["pass_at_1"] - plain["rounds"][0]["eval"]["pass_at_1"])]

    plot = tmp_path / "cmp.png"
    result = invoke("compare", "refined", "plain", "--db", runs_db, "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["name"] for r in data["runs"]] == ["refined", "plain"]
    for run, shown in zip(data["runs"], (refined, plain)):
        assert run["id"] == shown["run"]["id"]
        assert run["pass_at_1"] == [{"round": r["index"], "pass_at_1": r["eval"]["pass_at_1"]}
                                    for r in shown["rounds"]]
    assert data["plot"] == str(plot)
    assert_png(plot)


# ----- small stores: runs with little or no data ------------------------------------------------


def make_run(store: Store, name: str, status: str = "running", error: str | None = None) -> str:
    run_id = f"run-{name}"
    store.create_run(run_id=run_id, name=name, task="arithmetic", model="m", config={}, seed=0,
                     rounds_planned=2, versions={}, git_sha=None, run_dir="/nonexistent")
    if status != "running":
        store.set_run_status(run_id, status, error=error)
    return run_id


def evaluate_round(store: Store, run_id: str, idx: int, passed: int, n: int = 10) -> None:
    store.ensure_round(run_id, idx, None)
    store.record_evaluation(run_id, idx, "eval", n, passed, 0, 3.0, 1.0)
    store.mark_stage(run_id, idx, "evaluate", {"seconds": 2.0, "tokens": 30, "count": n})


def train_round(store: Store, run_id: str, idx: int, task: Task, rewards: list[float | None],
                passed: list[bool]) -> None:
    """Round `idx` with one attempt per reward value on `task`, verified as `passed` says, then
    folded into the mistake log as the mistakes stage does."""
    store.ensure_round(run_id, idx, None)
    attempts = [Attempt(id=Attempt.make_id(run_id, idx, task.id, "train", i), run_id=run_id,
                        round_index=idx, task_id=task.id, purpose="train", sample_index=i,
                        messages=task.prompt, completion=str(i)) for i in range(len(rewards))]
    store.insert_attempts(attempts)
    store.insert_verdicts((a.id, "math", Verdict(passed=ok, score=float(ok),
                                                  mistake=None if ok else "wrong_answer"), 1.0)
                          for a, ok in zip(attempts, passed))
    store.insert_rewards((a.id, "graded", v) for a, v in zip(attempts, rewards))
    failed = [a for a, ok in zip(attempts, passed) if not ok]
    seen = {(task.id, "wrong_answer"): (failed[0].id, "no", len(failed))} if failed else {}
    store.update_mistakes(run_id, idx, seen, {task.id} if any(passed) else set())


def test_report_of_a_run_that_failed_before_any_round(tmp_path):
    db = tmp_path / "s.db"
    store = Store(open_db(db))
    make_run(store, "broken", status="failed", error="RuntimeError: <no GPU> & co")
    out = tmp_path / "out"
    result = invoke("report", "broken", "--db", db, "--out", out)
    assert result.exit_code == 0, result.output
    for stem in PLOTS:
        assert_png(out / f"{stem}.png")
    page = parse(out / "report.html")
    assert set(HEADINGS.values()) <= set(page.headings)
    for stem in PLOTS:  # every panel says why it is empty instead of showing a table
        assert not page.sections[stem]["tables"]
        assert any(p.startswith("no data") for p in page.sections[stem]["paragraphs"])
    assert "error: RuntimeError: &lt;no GPU&gt; &amp; co" in (out / "report.html").read_text()


def test_report_of_round_0_only_and_of_mistakes_resolved_later(tmp_path):
    db = tmp_path / "s.db"
    store = Store(open_db(db))
    only0 = make_run(store, "zero")
    evaluate_round(store, only0, 0, passed=3)
    result = invoke("report", "zero", "--db", db, "--out", tmp_path / "zero")
    assert result.exit_code == 0, result.output
    page = parse(tmp_path / "zero" / "report.html")
    assert rows_by_round(page.sections["pass_rate"]["tables"][0])[0]["pass@1"] == "0.300"
    for stem in ("rewards", "mistakes", "repairs"):
        assert not page.sections[stem]["tables"]
        assert page.sections[stem]["paragraphs"][0].startswith("no data")

    run_id = make_run(store, "graded", status="finished")
    task = Task(source="t", split="train", prompt=[{"role": "user", "content": "1+1="}],
                reference="2")
    store.upsert_tasks([task])
    evaluate_round(store, run_id, 0, passed=1)
    train_round(store, run_id, 1, task, [0.0, 0.25, None], [False, False, False])
    train_round(store, run_id, 2, task, [1.0, 0.5], [True, True])
    result = invoke("report", "graded", "--db", db, "--out", tmp_path / "graded")
    assert result.exit_code == 0, result.output
    page = parse(tmp_path / "graded" / "report.html")
    rewards = rows_by_round(page.sections["rewards"]["tables"][0])
    assert (rewards[1]["n"], rewards[1]["mean"], rewards[1]["max"], rewards[1]["not applicable"]) \
        == ("2", "0.125", "0.250", "1")
    assert (rewards[2]["n"], rewards[2]["mean"], rewards[2]["min"]) == ("2", "0.750", "0.500")
    mistakes = page.sections["mistakes"]["tables"]
    assert mistakes[0][1:] == [["1", "wrong_answer", "1", "0"], ["2", "wrong_answer", "0", "1"]]
    assert mistakes[1][1:] == [["wrong_answer", "0"]]  # resolved: nothing left open
    assert not page.sections["repairs"]["tables"]  # no attempt with depth > 0


def test_compare_runs_missing_rounds_and_evaluations(tmp_path):
    db = tmp_path / "s.db"
    store = Store(open_db(db))
    a, b = make_run(store, "a", status="finished"), make_run(store, "b", status="interrupted")
    for idx, passed in ((0, 2), (1, 5)):
        evaluate_round(store, a, idx, passed)
    store.ensure_round(b, 0, None)  # b stopped before its first evaluation
    result = invoke("compare", "a", "b", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert runs[0]["pass_at_1"] == [{"round": 0, "pass_at_1": 0.2}, {"round": 1, "pass_at_1": 0.5}]
    assert runs[0]["gain_vs_round_0"] == pytest.approx(0.3)
    assert runs[1]["pass_at_1"] == [{"round": 0, "pass_at_1": None}]
    assert runs[1]["gain_vs_round_0"] is None
    table = invoke("compare", "a", "b", "--db", db).output
    assert "+0.300" in table and "0.200" in table and "0.500" in table


# ----- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["report", "nope"], "no run 'nope'"),
    (["report", "a", "--out", "afile"], "--out afile is a file, not a folder"),
    (["compare", "a"], "give at least two runs"),
    (["compare", "a", "nope"], "no run 'nope'"),
    (["compare", "a", "run-a"], "are the same run"),
    (["compare", "a", "b", "--plot", "missing/x.png"], "folder missing does not exist"),
    (["compare", "a", "b", "--plot", "x.txt"], "unknown image format"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    db = tmp_path / "s.db"
    store = Store(open_db(db))
    make_run(store, "a")
    make_run(store, "b")
    (tmp_path / "afile").write_text("not a folder")
    result = invoke(*args, "--db", db)
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_report_without_a_store(tmp_path):
    result = invoke("report", "x", "--db", tmp_path / "none.db")
    assert result.exit_code == 1 and "no store at" in result.output


def test_cli_import_does_not_load_matplotlib():
    code = "import sys, loop.cli; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
