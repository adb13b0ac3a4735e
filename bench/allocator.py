"""Malloc kept (loop.allocator) against malloc as glibc ships it, on the default job's SFT update.

    python bench/allocator.py [--repeat 2] [--quick]

Runs `bench/perf.py --sections train` (loop's SFT update on answers of the default task, padded
and padding-free batches) in fresh processes, alternating: with `LOOP_KEEP_FREED_MEMORY=0`
(glibc's own settings) and without it (the settings `loop run` uses). Prints, per process, the
trained tokens/s of each batch mode and the page faults and system CPU seconds of the whole
process, then the ratio of the medians. Each process is a whole update (model loading included),
so the page faults count every step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("glibc", "kept")


def measure(mode: str, quick: bool) -> dict:
    """One process of the train section under `mode`: tokens/s per batch mode, faults, sys s."""
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "perf.json"
        env = {k: v for k, v in os.environ.items() if k != "LOOP_KEEP_FREED_MEMORY"}
        if mode == "glibc":
            env["LOOP_KEEP_FREED_MEMORY"] = "0"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, str(REPO / "bench" / "perf.py"), "--sections", "train",
                        "--results", str(results), *(["--quick"] if quick else [])],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        train = json.loads(results.read_text())["train"]
    return {"mode": mode, **{name: figures["tok_s"] for name, figures in train["modes"].items()},
            "page_faults": after.ru_minflt - before.ru_minflt,
            "sys_s": after.ru_stime - before.ru_stime}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="processes per mode (alternating)")
    parser.add_argument("--quick", action="store_true", help="8 optimizer steps instead of 24")
    args = parser.parse_args()
    rows = [measure(mode, args.quick) for _ in range(args.repeat) for mode in MODES]
    print("| malloc | padded tok/s | padding-free tok/s | page faults | system CPU s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['padded']:.0f} | {r['padding_free']:.0f} | "
              f"{r['page_faults']:,} | {r['sys_s']:.1f} |")
    median = {mode: {key: statistics.median(r[key] for r in rows if r["mode"] == mode)
                     for key in ("padded", "padding_free", "page_faults", "sys_s")}
              for mode in MODES}
    kept, plain = median["kept"], median["glibc"]
    print(f"\nkept / glibc, medians: padded {kept['padded'] / plain['padded']:.2f}x, "
          f"padding-free {kept['padding_free'] / plain['padding_free']:.2f}x; page faults "
          f"{plain['page_faults']:,.0f} -> {kept['page_faults']:,.0f}; system CPU "
          f"{plain['sys_s']:.1f} -> {kept['sys_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
