"""Sandboxed vs plain-subprocess verification of benign programs (goal P4: ratio <= 1.5).

    python bench/sandbox.py [--programs 500] [--workers 4] [--work-ms 100] [--startup 50]

Both arms run the same `python_tests` verifier on the same programs (the reference solutions of
the shipped easy problems, each with its three tests, plus `--work-ms` of CPU work so a program
costs about what a real candidate does), with the same workers; they differ only in isolation:
- `plain`: a subprocess with rlimits and an empty environment (`unsafe_no_sandbox: true`);
- `sandbox`: namespaces (net, pid, mount, ipc, uts), private tmpfs, rlimits, separate uid.
Printed: wall time of each arm and their ratio, and start-up latency (an empty program, run one
at a time) p50/p95 for each arm, all measured in this run. Needs root for the sandbox arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

WORK = ("\nimport time as _t\n_end = _t.process_time() + {seconds}\n"
        "while _t.process_time() < _end:\n    pass\n")


def verifier(workers: int, unsafe: bool):
    from loop_code.verifier import PythonTestsVerifier

    chosen = PythonTestsVerifier()
    chosen.options = chosen.Options(workers=workers, unsafe_no_sandbox=unsafe)
    if not unsafe:
        chosen.prepare()
    return chosen


def programs(count: int, work_ms: float):
    from loop.schema import Attempt
    from loop_code.tasks import CodeEasyTasks

    tasks = CodeEasyTasks().load(None, 0)
    pool = tasks.train + tasks.eval
    items = []
    for index in range(count):
        task = pool[index % len(pool)]
        code = task.reference + WORK.format(seconds=work_ms / 1000)
        items.append((task, Attempt(id=f"b{index}", run_id="bench", round_index=0,
                                    task_id=task.id, purpose="train", sample_index=index,
                                    messages=[], completion=f"```python\n{code}\n```")))
    return items


def startup(chosen, runs: int) -> tuple[float, float]:
    """p50, p95 in ms of an empty program through the bare sandbox (no harness, no tests)."""
    box = chosen._sandbox()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = box.run("pass")
        times.append((time.perf_counter() - started) * 1e3)
        assert result.returncode == 0, result
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work-ms", type=float, default=100.0,
                        help="CPU milliseconds each program burns besides its tests")
    parser.add_argument("--startup", type=int, default=50, help="empty programs for start-up")
    parser.add_argument("--json", default=None, help="also write the figures here (bench/perf.py)")
    args = parser.parse_args()

    items = programs(args.programs, args.work_ms)
    results = {}
    for arm, unsafe in (("plain", True), ("sandbox", False)):
        chosen = verifier(args.workers, unsafe)
        startup(chosen, 5)  # warm the page cache and the interpreter
        p50, p95 = startup(chosen, args.startup)
        started = time.perf_counter()
        verdicts = chosen.verify_batch(items)
        wall = time.perf_counter() - started
        passed = sum(v.passed for v in verdicts)
        if passed != len(items):
            bad = next(v for v in verdicts if not v.passed)
            print(f"[{arm}] {len(items) - passed} benign programs failed, e.g. {bad.feedback}")
            return 1
        results[arm] = (wall, p50, p95)
        print(f"[{arm}] {len(items)} programs in {wall:.1f} s; start-up p50 {p50:.0f} ms, "
              f"p95 {p95:.0f} ms", flush=True)

    plain, boxed = results["plain"], results["sandbox"]
    print(f"\nmachine: {machine()}")
    print(f"command: python bench/sandbox.py --programs {args.programs} --workers {args.workers} "
          f"--work-ms {args.work_ms:g} --startup {args.startup}")
    print("\n| arm | wall s | programs/s | start-up p50 ms | start-up p95 ms |")
    print("|---|---|---|---|---|")
    for arm, (wall, p50, p95) in results.items():
        print(f"| {arm} | {wall:.1f} | {len(items) / wall:.1f} | {p50:.0f} | {p95:.0f} |")
    ratio = boxed[0] / plain[0]
    if args.json:
        Path(args.json).write_text(json.dumps({
            "ratio": ratio, "programs": len(items), "workers": args.workers,
            "arms": {arm: {"wall_s": wall, "startup_p50_ms": p50, "startup_p95_ms": p95}
                     for arm, (wall, p50, p95) in results.items()}}, indent=1))
    print(f"\nsandbox / plain wall time: {ratio:.2f}x (goal <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'missed'}); start-up p95 {boxed[2]:.0f} ms "
          f"(goal <= 150 ms: {'met' if boxed[2] <= 150 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
