"""loop.allocator: freed memory stays with the process for the next step (glibc on Linux)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# A 64 MiB block (above glibc's largest mmap threshold) allocated, touched, freed and allocated
# again, as a training step's logits are: prints the page faults of the second allocation.
PROBE = """
import ctypes, resource, sys
from loop.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "tuned" else "untouched")
size = 64 << 20
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    ours = ("GLIBC_TUNABLES", "LOOP_KEEP_FREED_MEMORY")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ours}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] if len(out) == 2 else " ".join(out[:-1]), int(out[-1])


def test_a_freed_block_is_reused_without_faulting_it_back_in():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    status, untouched = probe("untouched")
    assert untouched > pages // 2  # glibc as shipped: a fresh mmap, faulted in page by page
    status, faults = probe("tuned")
    assert status == "kept"
    assert faults < pages // 20  # the same memory again


def test_the_users_own_malloc_settings_and_the_opt_out_win():
    status, faults = probe("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert status == "left alone: MALLOC_TRIM_THRESHOLD_ is set"
    status, faults = probe("tuned", LOOP_KEEP_FREED_MEMORY="0")
    assert status == "left alone: LOOP_KEEP_FREED_MEMORY=0"
    assert faults > (64 << 20) // os.sysconf("SC_PAGE_SIZE") // 2


def test_a_run_tunes_malloc_before_its_first_round(monkeypatch):
    import loop.allocator
    import loop.runs

    calls = []
    monkeypatch.setattr(loop.allocator, "keep_freed_memory", lambda: calls.append(1) or "kept")

    class Stop(Exception):
        pass

    def engine_for(run, reporter=None):
        assert calls, "malloc is tuned before the engine is built"
        raise Stop

    monkeypatch.setattr(loop.runs, "engine_for", engine_for)

    class Lock:
        def release(self):
            pass

    run = type("Run", (), {"lock": Lock()})()
    with pytest.raises(Stop):
        loop.runs.drive(run)


def test_the_allocator_bench_runs_its_baseline_with_malloc_left_alone(monkeypatch):
    """bench/allocator.py: the `glibc` processes opt out, the `kept` ones run as a run does (the
    train section itself is not run here: it takes minutes)."""
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import allocator as bench

    seen = {}

    def run(command, env, **_):
        seen[env.get("LOOP_KEEP_FREED_MEMORY")] = command
        results = Path(command[command.index("--results") + 1])
        results.write_text(json.dumps({"train": {"modes": {
            "padded": {"tok_s": 1.0}, "padding_free": {"tok_s": 2.0}}}}))

    monkeypatch.setenv("LOOP_KEEP_FREED_MEMORY", "0")  # inherited: the kept mode must drop it
    monkeypatch.setattr(bench.subprocess, "run", run)
    assert bench.measure("glibc", quick=True)["padding_free"] == 2.0
    assert bench.measure("kept", quick=True)["padded"] == 1.0
    assert set(seen) == {"0", None}
    assert all("--quick" in command and "train" in command for command in seen.values())
