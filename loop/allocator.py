"""Keep memory that a run frees for its next step, instead of handing it back to the OS (glibc).

Training and decoding on a CPU allocate and free the same large buffers step after step: the
logits (rows x positions x a 49k-word vocabulary: hundreds of MB in a training step), their
gradients, activations. glibc's malloc serves every block above its mmap threshold (at most
32 MiB) with a fresh `mmap` and unmaps it on free, and trims its heap whenever more than
M_TRIM_THRESHOLD is free at its top; so each step faults the same memory back in, page by page,
zero-filled by the kernel. On SFT updates of the default task (`python bench/allocator.py`: two
updates, padded and padding-free, per process) that was 20.7 million page faults and 62 s of
system CPU time per process; with the settings below 1.0 million and 6 s, and 1.30x (padded)
and 1.06x (padding-free) the trained tokens per second (BENCHMARKS.md, "Malloc kept between
steps").

`keep_freed_memory` makes malloc serve every block from its heap (M_MMAP_MAX = 0: glibc still
falls back to mmap when the heap cannot grow) and keep up to TRIM_THRESHOLD of free memory at the
heap's top for reuse. The process holds on to its peak memory for the rest of the run, which is
what a run needs anyway: the next round's stages allocate the same sizes again. PyTorch's CPU
tuning guide recommends a caching malloc (jemalloc, tcmalloc) for the same reason; this is that
much of it without another library.

Only on Linux with glibc, and only when the user has not tuned malloc themselves
(`MALLOC_*_` variables or `GLIBC_TUNABLES` in the environment win) nor turned this off
(`LOOP_KEEP_FREED_MEMORY=0`); anywhere else it does nothing. `loop run` and `loop resume` call
it before the first round (`loop.runs.drive`), and so does each `accelerate launch` worker.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB of free heap kept for reuse
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                 "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
OPT_OUT = "LOOP_KEEP_FREED_MEMORY"  # "0": leave malloc as it is (bench/allocator.py's baseline)


@functools.cache
def keep_freed_memory() -> str:
    """Tune this process's malloc as the module docstring says, once. Returns what it did, in a
    few words: "kept" (tuned now or earlier), or why it left malloc alone."""
    if not sys.platform.startswith("linux"):
        return "left alone: not Linux"
    if os.environ.get(OPT_OUT) == "0":
        return f"left alone: {OPT_OUT}=0"
    user = [name for name in USER_SETTINGS if os.environ.get(name)]
    if user:
        return f"left alone: {user[0]} is set"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left alone: not glibc"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "left alone: mallopt refused"
    return "kept"
