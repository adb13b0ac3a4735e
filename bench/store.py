"""Store at scale: insert rate through the store's own insert path, and the time of every
documented query (`loop show`, `loop logs`, `loop mistakes` with their filters, the Datasette
canned queries) on a synthetic store of 1,000,000 attempts.

    python bench/store.py [--attempts 1000000] [--rounds 10] [--repeat 5] [--db PATH]
                          [--inline-checkpoints]

The store is written the way the engine writes it: one run of `--rounds` training rounds (plus
round 0's baseline evaluation) and a second run a tenth its size, each stage's rows in one
transaction through `Store.insert_attempts` / `insert_verdicts` / `insert_critiques` /
`insert_rewards` / `update_mistakes` / `record_evaluation`, and `round_summary` when a round is
done; as in a run, a thread checkpoints the write-ahead log after each commit (loop/wal.py), or,
with `--inline-checkpoints` (the baseline), the committing thread does as SQLite does by
default. Shapes: 3-digit additions, 8 samples per prompt, pass rate rising over the rounds,
answers of 10 to 250 characters with their token ids (and log-probabilities for train answers), one
`math` verdict per answer (0.2 % infra errors, whose rewards are NULL), a `binary` reward per
train answer, repairs of some failures (depth 1 and 2) with a `taxonomy` and a
`verifier_feedback` critique each, the mistake log, and a held-out evaluation per round.

Goals: inserts >= 20,000 attempts/s; every query < 100 ms. Insert rates are given by the wall
clock and by this process's CPU time (other jobs on the machine stretch the first; the load
average is printed). Each query is timed on a fresh connection (first call) and then `--repeat`
times (median reported), and returns what the CLI prints: `loop logs` its default 10 rows,
`loop mistakes` every matching row (as it does today) and, separately, the first 20 (the row
limit `mistake_rows(limit=)` offers), canned queries their default 100 rows and `?limit=1000`
(Datasette shows at most 1,000). With `--db PATH` the store is kept there and reused by a later
call with the same PATH (queries only).
"""

from __future__ import annotations

import argparse
import json
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

SAMPLES = 8  # answers per prompt
REPAIR_CHANCE = 0.12  # a failed first answer is repaired
SECOND_REPAIR_CHANCE = 0.4  # a failed repair is repaired again
REPAIR_PASS = 0.3
INFRA_SHARE = 0.002
TRUNCATED_SHARE = 0.03
SYSTEM = "Answer the question. End with 'The answer is N.'"
KINDS = ("arithmetic_slip", "off_by_one", "wrong_operation", "copied_operand", "magnitude_error",
         "no_final_answer")
INSERT_GOAL = 20_000.0  # attempts per second
QUERY_GOAL_MS = 100.0


# ----- the synthetic store ----------------------------------------------------------------------

@dataclass
class Shape:
    """How many prompts and held-out problems give about `attempts` attempts over `rounds`."""

    attempts: int
    rounds: int

    @property
    def eval_problems(self) -> int:
        return max(5, min(1000, self.attempts // 1000))

    @property
    def prompts(self) -> int:
        train = self.attempts - self.eval_problems * (self.rounds + 1)
        repairs = 1 + REPAIR_CHANCE * 0.6 * (1 + SECOND_REPAIR_CHANCE * (1 - REPAIR_PASS))
        return max(2, round(train / (self.rounds * SAMPLES * repairs)))


@dataclass
class Outcome:
    """One answer as the later stages see it (the Attempt objects are dropped once inserted)."""

    id: str
    task_id: str
    sample_index: int
    depth: int
    status: str  # "pass", "infra" or a taxonomy kind
    feedback: str
    completion: str


@dataclass
class Timer:
    """Wall seconds per key, and this process's CPU seconds per key (other jobs on the machine
    stretch the first, not the second)."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - wall
            self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - cpu


def make_tasks(rng: random.Random, count: int, split: str, seen: set[tuple[int, int]]):
    from loop.schema import Task

    tasks = []
    while len(tasks) < count:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        tasks.append(Task(source="arithmetic", split=split, reference=str(a + b),
                          prompt=[{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": f"What is {a}+{b}?"}],
                          metadata={"a": a, "b": b, "op": "+"}))
    return tasks


def wrong_number(kind: str, a: int, b: int, rng: random.Random) -> int:
    c = a + b
    if kind == "off_by_one":
        return c + rng.choice((-1, 1))
    if kind == "wrong_operation":
        return abs(a - b)
    if kind == "copied_operand":
        return rng.choice((a, b))
    if kind == "magnitude_error":
        return c * 10
    digits = list(str(c))  # arithmetic_slip: one digit changed
    i = rng.randrange(len(digits))
    digits[i] = str((int(digits[i]) + rng.randint(1, 8)) % 10)
    return int("".join(digits)) or c + 1


def answer(task, status: str, rng: random.Random, truncated: bool) -> tuple[str, str]:
    """(completion, verifier feedback) for an answer with this outcome."""
    a, b = task.metadata["a"], task.metadata["b"]
    if status == "no_final_answer" or truncated:
        text = (f"Let me add {a} and {b} step by step. First the ones: {a % 10} + {b % 10}. "
                f"Then the tens: {a // 10 % 10} + {b // 10 % 10}, carrying as needed, and ")
        return (text * 3 if truncated else text), "no final answer found"
    value = a + b if status in ("pass", "infra") else wrong_number(status, a, b, rng)
    style = rng.random()
    if style < 0.4:
        text = f"{a} + {b} = {value}"
    elif style < 0.7:
        text = f"The answer is {value}."
    else:
        text = (f"To add {a} and {b}, add the hundreds, tens and ones: "
                f"{a // 100 * 100} + {b // 100 * 100}, then {a % 100} + {b % 100}. "
                f"So {a} + {b} = {value}. The answer is {value}.")
    return text, ("" if status == "pass" else f"expected {a + b}, got {value}")


def verdict_for(outcome: Outcome):
    from loop.schema import Verdict

    if outcome.status == "pass":
        return Verdict(passed=True, score=1.0, details={"extracted": outcome.completion[-4:]})
    if outcome.status == "infra":
        return Verdict(passed=False, error_kind="infra",
                       feedback="math verifier failed: TimeoutError")
    if outcome.status in ("no_final_answer", "truncated"):
        return Verdict(passed=False, error_kind="model", mistake="format",
                       feedback=outcome.feedback)
    return Verdict(passed=False, error_kind="model", mistake="wrong_answer",
                   feedback=outcome.feedback,
                   details={"extracted": outcome.feedback.rsplit(" ", 1)[-1],
                            "diagnosis": outcome.status})


class Builder:
    """Writes runs into a store stage by stage, as the engine does."""

    def __init__(self, store, rng: random.Random, timer: Timer):
        self.store = store
        self.rng = rng
        self.timer = timer
        self.counts = {"attempts": 0, "verdicts": 0, "rewards": 0, "critiques": 0}

    def insert_attempts(self, attempts: list) -> None:
        with self.timer("insert_attempts"):
            self.store.insert_attempts(attempts)
        self.counts["attempts"] += len(attempts)

    def commit(self, stage: str, write: Callable[[], None]) -> None:
        # the mistake log is folded in row by row (Store.update_mistakes): timed on its own
        with self.timer("mistake log" if stage == "mistakes" else "write stages"):
            with self.store.transaction():
                write()

    def attempt(self, run_id, idx, task, purpose, k, status, parent=None, depth=0,
                conversation=None):
        from loop.schema import Attempt

        truncated = status == "truncated"
        text, feedback = answer(task, status, self.rng, truncated)
        tokens = [self.rng.randrange(49152) for _ in range(max(2, len(text) // 3))]
        messages = [*(conversation or task.prompt), {"role": "assistant", "content": text}]
        attempt = Attempt(
            id=Attempt.make_id(run_id, idx, task.id, purpose, k, parent), run_id=run_id,
            round_index=idx, task_id=task.id, purpose=purpose, sample_index=k, parent_id=parent,
            depth=depth, messages=messages, completion=text, token_ids=tokens,
            prompt_tokens=24, completion_tokens=len(tokens),
            finish_reason="length" if truncated else "stop",
            logprobs=([-self.rng.expovariate(3.0) for _ in tokens] if purpose == "train"
                      else None),
            model_ref=f"smollm2-135m-instruct+runs/{run_id}/round-{idx}/adapter", seed=idx)
        return attempt, Outcome(attempt.id, task.id, k, depth, status, feedback, text)

    def status(self, p_pass: float, kind: str) -> str:
        roll = self.rng.random()
        if roll < INFRA_SHARE:
            return "infra"
        if roll < INFRA_SHARE + p_pass:
            return "pass"
        if self.rng.random() < TRUNCATED_SHARE:
            return "truncated"
        return kind if self.rng.random() < 0.7 else self.rng.choice(KINDS)

    def run(self, name: str, shape: Shape, train_pool: list, eval_tasks: list) -> str:
        run_id = f"bench-{name}-{self.rng.randrange(16 ** 6):06x}"
        self.store.create_run(run_id=run_id, name=name, task="arithmetic",
                              model="smollm2-135m-instruct", config={"bench": True}, seed=0,
                              rounds_planned=shape.rounds, versions={"loop": "bench"},
                              git_sha=None, run_dir=f"store/runs/{run_id}")
        easiness = {t.id: self.rng.random() for t in train_pool + eval_tasks}
        favourite = {t.id: self.rng.choice(KINDS) for t in train_pool}
        for idx in range(shape.rounds + 1):
            self.round(run_id, idx, shape, train_pool, eval_tasks, easiness, favourite)
        self.store.set_run_status(run_id, "finished")
        return run_id

    def round(self, run_id, idx, shape, train_pool, eval_tasks, easiness, favourite) -> None:
        from loop.summary import round_summary

        store = self.store
        store.ensure_round(run_id, idx, None if idx <= 1 else f"runs/{run_id}/round-{idx - 1}")
        skill = 0.08 + 0.5 * idx / max(1, shape.rounds)
        if idx > 0:
            self.train_round(run_id, idx, shape, train_pool, easiness, favourite, skill)
        self.evaluate(run_id, idx, eval_tasks, easiness, skill)
        from loop.search_index import refresh

        with self.timer("search index"):  # the engine brings it up to date after each round
            refresh(store.db)
        self.commit("done", lambda: store.mark_stage(run_id, idx, "done", {}))
        round_summary(store, run_id, idx)  # the engine's end-of-round summary (caches counts)

    def train_round(self, run_id, idx, shape, train_pool, easiness, favourite, skill) -> None:
        from loop.schema import Critique

        store, rng = self.store, self.rng
        chosen = rng.sample(train_pool, min(shape.prompts, len(train_pool)))
        tasks = {t.id: t for t in chosen}
        self.commit("select", lambda: store.mark_stage(
            run_id, idx, "select", {"seconds": 0.1, "count": len(chosen)}))
        outcomes: list[Outcome] = []

        # The answers exist before the stage commits (the engine samples, then writes): making
        # the synthetic ones is not part of the timed write.
        batches = []
        for start in range(0, len(chosen), 1000):
            batch = []
            for task in chosen[start:start + 1000]:
                p = min(0.97, skill * (0.3 + 1.4 * easiness[task.id]))
                for k in range(SAMPLES):
                    attempt, outcome = self.attempt(run_id, idx, task, "train", k,
                                                    self.status(p, favourite[task.id]))
                    batch.append(attempt)
                    outcomes.append(outcome)
            batches.append(batch)

        def generate() -> None:
            for batch in batches:
                self.insert_attempts(batch)
            tokens = len(outcomes) * 20
            store.mark_stage(run_id, idx, "generate", {"seconds": tokens / 150,
                                                       "count": len(outcomes), "tokens": tokens})

        self.commit("generate", generate)
        verdicts = self.verdict_rows(outcomes)
        self.commit("verify", lambda: self.verify(run_id, idx, "verify", verdicts))

        repairs: list[Outcome] = []
        repair_attempts = []
        critiques: list[tuple[str, Critique]] = []
        frontier = [o for o in outcomes if o.status not in ("pass", "infra")]
        for depth, chance in ((1, REPAIR_CHANCE), (2, SECOND_REPAIR_CHANCE)):
            parents, frontier = [o for o in frontier if rng.random() < chance], []
            for parent in parents:
                task = tasks[parent.task_id]
                taxonomy = Critique(kind=parent.status, critic="taxonomy",
                                    text=_explanation(parent.status))
                critiques.append((parent.id, taxonomy))
                critiques.append((parent.id, Critique(
                    kind="wrong_answer", critic="verifier_feedback",
                    text=f"The checker says: {parent.feedback}.")))
                conversation = [*task.prompt, {"role": "assistant", "content": parent.completion},
                                {"role": "user", "content": taxonomy.text}]
                status = "pass" if rng.random() < REPAIR_PASS else self.status(0.0, parent.status)
                attempt, outcome = self.attempt(run_id, idx, task, "train", parent.sample_index,
                                                status, parent.id, depth, conversation)
                repair_attempts.append(attempt)
                repairs.append(outcome)
                if status not in ("pass", "infra"):
                    frontier.append(outcome)

        repair_verdicts = self.verdict_rows(repairs)

        def refine() -> None:
            self.insert_attempts(repair_attempts)
            self.verify(run_id, idx, None, repair_verdicts)
            self._insert_critiques(critiques)
            store.mark_stage(run_id, idx, "refine", {
                "seconds": len(repairs) / 100, "count": len(repairs),
                "repaired": sum(o.status == "pass" for o in repairs), "critiques": len(critiques)})

        self.commit("refine", refine)
        every = outcomes + repairs

        rows = [(o.id, "binary", None if o.status == "infra" else float(o.status == "pass"))
                for o in every]

        def reward() -> None:
            store.insert_rewards(rows)
            self.counts["rewards"] += len(rows)
            store.mark_stage(run_id, idx, "reward", {"seconds": 0.5, "count": len(rows)})

        self.commit("reward", reward)

        seen: dict[tuple[str, str], tuple[str, str, int]] = {}
        for o in every:
            if o.status in ("pass", "infra"):
                continue
            key = (o.task_id, o.status)
            first = seen.get(key)
            seen[key] = (first[0], o.feedback, first[2] + 1) if first else (o.id, o.feedback, 1)
        solved = {o.task_id for o in every if o.status == "pass"}
        self.commit("mistakes", lambda: store.mark_stage(
            run_id, idx, "mistakes",
            {"seconds": 0.2, **store.update_mistakes(run_id, idx, seen, solved)}))
        adapter = f"runs/{run_id}/round-{idx}/adapter"
        self.commit("train", lambda: (
            store.record_update(run_id, idx, "sft", sum(o.status == "pass" for o in every),
                                {"steps": 100, "train_loss": 0.5}, adapter, "0" * 64, 60.0),
            store.mark_stage(run_id, idx, "train", {"seconds": 60.0, "count": 100},
                             model_out=adapter)))

    @staticmethod
    def verdict_rows(outcomes: list[Outcome]) -> list[tuple]:
        return [(o.id, "math", verdict_for(o), 0.3) for o in outcomes]

    def verify(self, run_id, idx, stage, rows: list[tuple]) -> None:
        self.store.insert_verdicts(rows)
        self.counts["verdicts"] += len(rows)
        if stage:
            self.store.mark_stage(run_id, idx, stage, {"seconds": len(rows) / 2000,
                                                       "count": len(rows)})

    def _insert_critiques(self, rows) -> None:
        self.store.insert_critiques(rows)
        self.counts["critiques"] += len(rows)

    def evaluate(self, run_id, idx, eval_tasks, easiness, skill) -> None:
        outcomes, batch = [], []
        for task in eval_tasks:
            p = min(0.97, skill * (0.3 + 1.4 * easiness[task.id]))
            status = "pass" if self.rng.random() < p else self.status(0.0, KINDS[0])
            attempt, outcome = self.attempt(run_id, idx, task, "eval", 0, status)
            batch.append(attempt)
            outcomes.append(outcome)

        verdicts = self.verdict_rows(outcomes)

        def write() -> None:
            self.insert_attempts(batch)
            self.verify(run_id, idx, None, verdicts)
            passed = sum(o.status == "pass" for o in outcomes)
            truncated = sum(o.status == "truncated" for o in outcomes)
            self.store.record_evaluation(run_id, idx, "eval", len(outcomes), passed, truncated,
                                         20.0, len(outcomes) / 50)
            self.store.mark_stage(run_id, idx, "evaluate", {
                "seconds": len(outcomes) / 50, "count": len(outcomes),
                "tokens": 20 * len(outcomes)})

        self.commit("evaluate", write)


def _explanation(kind: str) -> str:
    from loop.critics import EXPLANATIONS

    return EXPLANATIONS.get(kind, EXPLANATIONS["wrong_answer"])


def build(path: Path, attempts: int, rounds: int, seed: int,
          inline_checkpoints: bool = False) -> dict[str, Any]:
    """Write the synthetic store. `inline_checkpoints`: each commit checkpoints in the committing
    thread, as SQLite does by default (the baseline of loop.wal), instead of as a run does."""
    from loop.store import Store

    rng = random.Random(seed)
    store = Store.open(path)
    timer = Timer()
    big, small = Shape(attempts * 9 // 10, rounds), Shape(attempts // 10, rounds)
    seen: set[tuple[int, int]] = set()
    started = time.perf_counter()
    builder = Builder(store, rng, timer)
    runs = []
    # as `loop run` does: each commit leaves the checkpoint to a thread (loop.wal), whose CPU
    # time counts in the CPU figures (this process's); the last one is timed on its own
    checkpointing = contextlib.nullcontext(None) if inline_checkpoints else \
        store.checkpoints_in_background()
    with checkpointing as checkpoints:
        for name, shape in (("bench-small", small), ("bench-big", big)):
            train_pool = make_tasks(rng, 3 * shape.prompts, "train", seen)
            eval_tasks = make_tasks(rng, shape.eval_problems, "eval", seen)
            store.upsert_tasks(train_pool + eval_tasks)
            runs.append(builder.run(name, shape, train_pool, eval_tasks))
        with timer("last checkpoint"):
            if checkpoints is not None:
                checkpoints.close()
    wall = time.perf_counter() - started
    background = None if checkpoints is None else {
        "checkpoints": checkpoints.checkpoints, "seconds": checkpoints.seconds,
        "cpu": checkpoints.cpu_seconds}
    store.db.conn.close()
    return {"wall": wall, "timer": timer, "counts": builder.counts, "runs": runs,
            "background": background}


# ----- the queries ------------------------------------------------------------------------------

@dataclass
class Query:
    name: str
    run: Callable[[], int]  # returns the rows it produced


def queries(store, db_path: Path) -> list[Query]:
    """Every documented query, with arguments taken from the store itself."""
    import sqlite3

    from loop.datasette import canned_queries, query_parameters
    from loop.queries import attempt_logs, mistake_rows
    from loop.summary import run_summary

    run = store.get_run("bench-big")
    rid = run["id"]
    rounds = [r["idx"] for r in store.rounds(rid)]
    middle = rounds[len(rounds) // 2]
    task = store.db.execute("select task_id from attempts where run_id = ? and round_idx = ? "
                            "and purpose = 'train' limit 1", [rid, middle]).fetchone()[0]
    # a needle from the oldest training round: `-q` must read the whole run to find it
    needle = store.db.execute(
        "select v.feedback from attempts a join verdicts v on v.attempt_id = a.id "
        "where a.run_id = ? and a.round_idx = 1 and v.feedback like 'expected%' "
        "order by a.id limit 1", [rid]).fetchone()[0]
    prompt = store.db.execute(
        "select json_extract(t.prompt_json, '$[#-1].content') from mistakes m join tasks t "
        "on t.id = m.task_id where m.run_id = ? order by m.id limit 1", [rid]).fetchone()[0]

    def logs(**kwargs: Any) -> Callable[[], int]:
        return lambda: len(attempt_logs(store, rid, limit=10, **kwargs))  # the CLI's default -n

    def mistakes(**kwargs: Any) -> Callable[[], int]:
        return lambda: len(mistake_rows(store, rid, **kwargs))

    out = [
        Query("loop show RUN", lambda: len(run_summary(store, store.get_run("bench-big"))
                                           ["rounds"])),
        Query("loop logs RUN", logs()),
        Query(f"loop logs RUN --round {middle}", logs(round_idx=middle)),
        Query("loop logs RUN --failed", logs(passed=False)),
        Query("loop logs RUN --passed", logs(passed=True)),
        Query("loop logs RUN --task PREFIX", logs(task_id=task[:8])),
        Query("loop logs RUN -q 'answer is'", logs(query="answer is")),
        Query(f"loop logs RUN -q '{needle}' (round 1)", logs(query=needle)),
        Query("loop logs RUN -q zebra (nowhere)", logs(query="zebra")),
        Query("loop logs RUN --failed --tree", logs(passed=False, with_chains=True)),
        Query(f"loop logs RUN --round {middle} --failed --tree",
              logs(round_idx=middle, passed=False, with_chains=True)),
    ]
    # `loop mistakes` prints every row today; with a row limit (`mistake_rows(limit=)`, which
    # the CLI could expose as -n like `loop logs`) each variant is timed at 20 rows as well.
    variants = [("", {}), (" --open", {"open_only": True}), (" --recurring", {"recurring": True}),
                (" --open --recurring", {"open_only": True, "recurring": True}),
                (" --kind off_by_one", {"kind": "off_by_one"}),
                (" -q carries", {"query": "carries"}), (f" -q '{prompt}'", {"query": prompt}),
                (" -q zebra (nowhere)", {"query": "zebra"})]
    for label, kwargs in variants:
        out.append(Query(f"loop mistakes RUN{label} (every row)", mistakes(**kwargs)))
    for label, kwargs in variants:
        out.append(Query(f"loop mistakes RUN{label} -n 20", mistakes(limit=20, **kwargs)))
    # Datasette runs canned queries on its own read-only connection and keeps 1,000 rows.
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    for name, query in canned_queries().items():
        names = query_parameters(query["sql"])
        for label, params in (("", {}), (" ?run=bench-big", {"run": "bench-big"}),
                              (" ?limit=1000", {"limit": "1000"})):
            if any(p not in names for p in params):
                continue
            values = {p: params.get(p, "") for p in names}
            out.append(Query(f"datasette /{name}{label}",
                             lambda sql=query["sql"], values=values: len(
                                 conn.execute(sql, values).fetchmany(1001))))
    return out


def time_queries(db_path: Path, repeat: int) -> list[tuple[str, float, float, int]]:
    """(name, first call ms, median ms of `repeat` calls, rows) per query."""
    from loop.store import Store

    store = Store.open(db_path)
    results = []
    for query in queries(store, db_path):
        started = time.perf_counter()
        rows = query.run()
        first = (time.perf_counter() - started) * 1e3
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            query.run()
            times.append((time.perf_counter() - started) * 1e3)
        results.append((query.name, first, statistics.median(times) if times else first, rows))
    return results


# ----- the report -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", type=Path, default=None,
                        help="keep the store here; an existing one is reused (queries only)")
    parser.add_argument("--inline-checkpoints", action="store_true",
                        help="checkpoint in the committing thread (SQLite's default), not on a "
                             "thread of their own as a run does: the baseline of loop/wal.py")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures here (bench/perf.py reads them)")
    args = parser.parse_args(argv)
    if args.attempts < 100 or args.rounds < 1:
        parser.error("--attempts must be >= 100 and --rounds >= 1")

    args.load_before = _load()
    folder = None
    if args.db is None:
        folder = tempfile.TemporaryDirectory(prefix="loop-store-bench-")
        db_path = Path(folder.name) / "loop.db"
    else:
        db_path = args.db
    built = None
    if db_path.exists():
        print(f"reusing {db_path} (insert rate not measured)", flush=True)
    else:
        print(f"building {args.attempts:,} attempts over {args.rounds} rounds in {db_path} ...",
              flush=True)
        built = build(db_path, args.attempts, args.rounds, args.seed, args.inline_checkpoints)
    results = time_queries(db_path, args.repeat)
    report(db_path, args, built, results)
    if args.json is not None:
        args.json.write_text(json.dumps(figures(built, results), indent=1))
    if folder is not None:
        folder.cleanup()
    return 0


def figures(built: dict | None, results) -> dict:
    """The figures as data: insert rates (attempts/s, wall and CPU) and each query's median."""
    out: dict[str, Any] = {"insert_goal": INSERT_GOAL, "query_goal_ms": QUERY_GOAL_MS,
                           "queries": [{"name": name, "first_ms": first, "median_ms": median,
                                        "rows": count} for name, first, median, count in results]}
    if built is not None:
        timer, attempts = built["timer"], built["counts"]["attempts"]
        out["attempts"] = attempts
        out["insert"] = {key: {"wall": attempts / timer.seconds[key],
                               "cpu": attempts / timer.cpu[key]}
                         for key in ("insert_attempts", "write stages", "search index")}
        if built["background"] is not None:
            out["background_checkpoints"] = built["background"]
    return out


def _load() -> str:
    """The 1-minute load average: how busy the machine was besides this benchmark."""
    return f"{os.getloadavg()[0]:.1f}"


def report(db_path: Path, args, built: dict | None, results) -> None:
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    sizes = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
             for t in ("runs", "rounds", "tasks", "attempts", "verdicts", "rewards", "critiques",
                       "mistakes")}
    conn.close()
    megabytes = sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*")) / 1e6
    print(f"\nmachine: {machine()}; load average {args.load_before} before, "
          f"{_load()} after")
    print(f"command: python bench/store.py --attempts {args.attempts} --rounds {args.rounds} "
          f"--repeat {args.repeat}" + (" --inline-checkpoints" if args.inline_checkpoints else ""))
    print("store: " + ", ".join(f"{n:,} {t}" for t, n in sizes.items())
          + f"; {megabytes:,.0f} MB")
    rows = []
    if built is not None:
        timer, counts = built["timer"], built["counts"]
        print(f"built in {built['wall']:.0f} s (mistake log and summaries included)")
        print(f"mistake log (Store.update_mistakes, row by row): "
              f"{timer.seconds['mistake log']:.1f} s for {sizes['mistakes']:,} mistakes")
        background = built["background"]
        if background is None:
            print("checkpoints: in the committing thread, as SQLite does by default "
                  "(--inline-checkpoints)")
        else:
            print(f"checkpoints on their own thread (loop.wal), beside the writes: "
                  f"{background['checkpoints']:,} taking {background['seconds']:.1f} s "
                  f"({background['cpu']:.1f} s CPU); the last, when the store closed, "
                  f"{timer.seconds['last checkpoint']:.1f} s")
        for key, label in (("insert_attempts", "Store.insert_attempts"),
                           ("write stages", "a round's rows, committed (attempts, verdicts, "
                                            "critiques, rewards)"),
                           ("search index", "search index brought up to date after each round "
                                            "(loop.search_index)")):
            for clock, seconds in (("", timer.seconds[key]), (" (CPU time)", timer.cpu[key])):
                rate = counts["attempts"] / seconds
                rows.append((label + clock, f"{rate:,.0f} attempts/s", f">= {INSERT_GOAL:,.0f}/s",
                             rate / INSERT_GOAL, rate >= INSERT_GOAL, "–"))
    for name, first, median, count in results:
        rows.append((name, f"{median:,.1f} ms (first {first:,.1f})", f"< {QUERY_GOAL_MS:.0f} ms",
                     median / QUERY_GOAL_MS, median < QUERY_GOAL_MS, f"{count:,}"))
    print("\n| measure | figure | goal | figure / goal | met | rows |")
    print("|---|---|---|---|---|---|")
    for name, figure, goal, ratio, met, count in rows:
        print(f"| {name} | {figure} | {goal} | {ratio:.2f}x | {'yes' if met else 'NO'} | "
              f"{count} |")
    missed = [r[0] for r in rows if not r[4]]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} goals met"
          + (f"; missed: {', '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    sys.exit(main())
