"""loop-tensorboard: per-round scalars of every run as TensorBoard event files, written as any
third-party plugin would be.

Hooks:
- `round_finished(run_id, round_index, summary)`: writes `scalars(summary)` (loop_tensorboard.
  scalars: held-out pass@1, train solve rate and passed share, repairs, update loss, grad norm
  and steps, stage seconds, tokens/s, error counts, ...) at step `round_index` into
  `<run_dir>/tensorboard/` (loop_tensorboard.where: or `$LOOP_TENSORBOARD_DIR/<run_id>`);
- `prepare_db(db)`: remembers the store, where the run's folder is recorded.

    loop run arithmetic
    tensorboard --logdir store/runs

torch (for torch.utils.tensorboard.SummaryWriter) is imported when the first round finishes, never
at `loop --help`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import loop

from loop_tensorboard.scalars import scalars
from loop_tensorboard.where import log_dir, remember

__all__ = ["log_dir", "scalars", "write_round"]


def write_round(folder: Path, round_index: int, values: dict[str, float]) -> None:
    """Append one round's scalars, at step `round_index`, as a new event file in `folder`.

    One writer per round, closed at once: every finished round is on disk before the next
    starts, and a resumed run (another process) just adds files beside the earlier ones."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=round_index)
    finally:
        writer.close()


@loop.hookimpl
def prepare_db(db: Any) -> None:
    remember(db)


@loop.hookimpl
def round_finished(run_id: str, round_index: int, summary: dict[str, Any]) -> None:
    write_round(log_dir(run_id), round_index, scalars(summary))
