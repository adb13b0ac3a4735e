"""Named fail points for crash tests: `LOOP_FAILPOINT=<point>[:<n>]` kills the process with SIGKILL
the n-th time (default: the first) execution passes `<point>`. Unset, every fail point is inert.

SIGKILL, not an exception: nothing gets a chance to clean up, exactly like a machine that dies or
an OOM kill, so the crash tests prove what a real crash leaves behind. `POINTS` lists every point;
the chaos test runs each one (`EPISODE_POINTS`, the episode chaos test).
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "round.start",
    "select.before_commit",
    "select.after_commit",
    "generate.in_batch",  # after some prompts of the batch are sampled (nothing committed yet)
    "generate.before_commit",
    "generate.after_commit",
    "verify.in_batch",  # after some attempts are verified
    "verify.before_commit",
    "verify.after_commit",
    "refine.in_batch",  # after some repairs are sampled (nothing committed yet)
    "refine.before_commit",
    "refine.after_commit",
    "reward.before_commit",
    "reward.after_commit",
    "mistakes.before_commit",
    "mistakes.after_commit",
    "train.after_update",  # trained, checkpoint still in its temporary folder
    "train.after_rename",  # checkpoint in place, `updates` row not yet committed
    "train.after_commit",
    "evaluate.in_batch",
    "evaluate-samples.in_batch",  # inside the sampled held-out pass (evaluate.samples > 0)
    "evaluate.before_commit",
    "evaluate.after_commit",
    "round.before_done",
    "round.after_done",
    "run.before_finish",
)

# Inside the episode loop, after each model turn and the environment's answer to it: passed only
# by runs with an environment (`task.environment`), so the episode chaos test runs these.
EPISODE_POINTS = (
    "generate.in_episode",
    "evaluate.in_episode",
)

_counts: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if LOOP_FAILPOINT names this point and this is the n-th pass."""
    wanted = os.environ.get("LOOP_FAILPOINT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
