"""What running plugins out of process costs: the per-call overhead of the worker pool
(`plugins.isolation: process`, loop/plugin_workers.py) against in-process calls, and the share of a
default run it adds.

    python bench/plugin_workers.py [--repeat 30] [--write]

Measured through the guarded calls the engine makes (`loop.guarded.safe_verify_batch`,
`call_reward`), with and without an active pool, on chunks of 32 answers (the engine's
VERIFY_CHUNK) to the `arithmetic` task's problems, half of them right:

- a trivial verifier (one Verdict per answer: the pool's own cost per chunk),
- the real `math` verifier (plugins/loop-math: math-verify parsing each answer),
- the `binary` reward on a round's 512 answers (one call per round),
- starting and closing a pool of one worker, and replacing a worker that died.

torch and transformers are imported first, as in a real run, so each fork copies the page tables
of a process that has them. The default run's verify work is counted from its config (3 rounds of
128 prompts x 4 samples, 200 held-out answers in each of its 4 evaluations) and set against the
default run's wall time and verify-stage time measured by `python bench/perf.py --sections p2`
(bench/results/perf.json). Medians of `--repeat` runs, in process and in the pool alternately; `--write` stores the figures in
bench/results/plugin_workers.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine  # noqa: E402

RESULTS = REPO / "bench" / "results" / "plugin_workers.json"
CHUNK = 32


def _paired_ms(fn, pool, repeat: int) -> tuple[float, float]:
    """Median ms of `fn()` in process and in `pool`, the two timed alternately (so a change in
    the machine's load falls on both), after a warm-up call of each."""
    from loop import plugin_workers

    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeat + 1):
        for pooled in (False, True):
            plugin_workers._ACTIVE = pool if pooled else None
            started = time.perf_counter()
            fn()
            if i:  # the first round warms imports, caches and the worker's pages
                times[pooled].append((time.perf_counter() - started) * 1e3)
    plugin_workers._ACTIVE = pool
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--write", action="store_true", help=f"store the figures in {RESULTS}")
    args = parser.parse_args()

    import torch  # noqa: F401  (a run's process has them)
    import transformers  # noqa: F401

    import loop
    from loop.config import LoopConfig, build_config
    from loop.guarded import call_reward, safe_verify_batch
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.plugin_workers import pool_for
    from loop.resolve import Chosen, Components, resolve_components
    from loop.rounds import VERIFY_CHUNK
    from loop.schema import Attempt, Verdict

    assert VERIFY_CHUNK == CHUNK
    config = build_config("arithmetic", environ={})
    components = resolve_components(config, build_registry(get_plugin_manager()))
    tasks = components.task_source.component.load(components.task_source.options, config.seed)
    math_verifier = components.verifiers[0]
    binary = components.rewards[0]
    assert (math_verifier.name, binary.name) == ("math", "binary")

    class Trivial(loop.Verifier):
        name = "trivial"

        def verify(self, task, attempt):
            return Verdict(passed=True)

    trivial = Chosen("trivial", Trivial(), None, "bench")

    def answer(i: int, task) -> Attempt:
        value = int(task.reference) + (i % 2)  # half right
        text = f"To add the numbers, I add the ones and then the tens. The answer is {value}."
        return Attempt(id=f"a{i}", run_id="bench", round_index=1, task_id=task.id,
                       purpose="train", sample_index=0, messages=[], completion=text)

    train = tasks.train[:512]
    attempts = [answer(i, task) for i, task in enumerate(train)]
    by_id = {t.id: t for t in train}
    chunk = [(by_id[a.task_id], a) for a in attempts[:CHUNK]]
    verdicts = {a.id: {"math": Verdict(passed=i % 2 == 0)} for i, a in enumerate(attempts)}
    timeout = config.verify.timeout_s
    components = Components(None, None, [math_verifier, trivial], [binary], None)

    in_process: dict[str, float] = {}
    in_pool: dict[str, float] = {}
    inline: dict[str, float] = {}
    with pool_for(components, LoopConfig()) as pool:
        for key, fn, repeat in (
                ("trivial_chunk_ms", lambda: safe_verify_batch(trivial, chunk, timeout),
                 args.repeat),
                ("math_chunk_ms", lambda: safe_verify_batch(math_verifier, chunk, timeout),
                 args.repeat),
                ("binary_round_ms", lambda: call_reward(binary, attempts, by_id, verdicts,
                                                        timeout, print),
                 max(5, args.repeat // 3))):
            in_process[key], in_pool[key] = _paired_ms(fn, pool, repeat)
        # the floor: no time limit, so no thread, in this process's main thread
        for key, chosen in (("trivial_chunk_ms", trivial), ("math_chunk_ms", math_verifier)):
            inline[key] = _paired_ms(lambda: safe_verify_batch(chosen, chunk, None), None,
                                     args.repeat)[0]
        replace_ms = []
        for _ in range(5):
            started = time.perf_counter()
            pool._checkin(pool._replace(pool._checkout()))
            replace_ms.append((time.perf_counter() - started) * 1e3)
    start_ms = []
    for _ in range(5):
        started = time.perf_counter()
        with pool_for(components, LoopConfig()):
            pass
        start_ms.append((time.perf_counter() - started) * 1e3)

    # the default run's plugin calls (configs/default.yaml: loop's defaults)
    default = LoopConfig()
    per_round = default.select.prompts_per_round * default.generate.n
    held_out = len(tasks.eval) if default.evaluate.problems is None else default.evaluate.problems
    rounds = default.rounds
    chunks = rounds * math.ceil(per_round / CHUNK) + (rounds + 1) * math.ceil(held_out / CHUNK)
    added_s = (chunks * (in_pool["math_chunk_ms"] - in_process["math_chunk_ms"])
               + rounds * (in_pool["binary_round_ms"] - in_process["binary_round_ms"])
               + statistics.median(start_ms)) / 1e3
    p2 = json.loads((REPO / "bench" / "results" / "perf.json").read_text()).get("p2", {})
    run_wall = p2.get("command_wall_s")
    verify_stage = p2.get("stages", {}).get("verify", {}).get("seconds")
    verify_items = rounds * per_round
    figures = {
        "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M+00:00"),
        "machine": machine(), "load_average": round(os.getloadavg()[0], 2),
        "command": "python bench/plugin_workers.py" + (
            f" --repeat {args.repeat}" if args.repeat != 30 else ""),
        "in_process": in_process, "process": in_pool, "inline": inline,
        "pool_start_close_ms": statistics.median(start_ms),
        "worker_replace_ms": statistics.median(replace_ms),
        "default_run": {"verify_chunks": chunks, "reward_calls": rounds, "added_s": added_s,
                        "run_wall_s": run_wall,
                        "added_share_of_run": added_s / run_wall if run_wall else None,
                        "verify_stage_s": verify_stage,
                        # the verify stage is its math chunks: the same-run ratio of the two
                        "added_share_of_verify_stage": (
                            in_pool["math_chunk_ms"] / in_process["math_chunk_ms"] - 1),
                        "verify_items": verify_items},
    }
    print(render(figures))
    if args.write:
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


def render(f: dict) -> str:
    """The figures as BENCHMARKS.md's section shows them."""
    a, b, run = f["in_process"], f["process"], f["default_run"]
    inline = f.get("inline", {})
    rows = ["| call | in process ms | worker pool ms | added ms | in process, no time limit ms |",
            "|---|---|---|---|---|"]
    for key, what in (("trivial_chunk_ms", "trivial verifier, chunk of 32"),
                      ("math_chunk_ms", "`math` verifier, chunk of 32"),
                      ("binary_round_ms", "`binary` reward, a round's 512 answers")):
        floor = f"{inline[key]:.2f}" if key in inline else "–"
        rows.append(f"| {what} | {a[key]:.2f} | {b[key]:.2f} | {b[key] - a[key]:+.2f} | "
                    f"{floor} |")
    share = run["added_share_of_run"]
    lines = [
        f"Machine: {f['machine']}; load average {f['load_average']} at the start. Measured "
        f"{f['measured']} with `{f['command']}`.", "", *rows, "",
        f"Starting and closing a pool of one worker: {f['pool_start_close_ms']:.1f} ms; "
        f"replacing a worker that died: {f['worker_replace_ms']:.1f} ms.", "",
        f"A default run makes {run['verify_chunks']} `math` chunk calls and {run['reward_calls']} "
        f"reward calls: the pool adds **{run['added_s']:.2f} s**"
        + (f", {100 * share:.3f} % of the default run's {run['run_wall_s']:.0f} s "
           f"(P2)" if share is not None else "")
        + "; the verify stage (its `math` chunks) takes "
        f"{100 * abs(run['added_share_of_verify_stage']):.1f} % "
        + ("more" if run["added_share_of_verify_stage"] > 0 else "less")
        + " time than in process."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
