"""Which numbers of a round summary become TensorBoard scalars, and under which tags.

`scalars(summary)` takes the dict `loop show --json` prints for one round (loop/summary.py) and
returns {tag: value}:
- every number in it, its path joined with "/": "eval/pass_at_1", "train/passed",
  "train/repairs", "timings/generate", "tokens_per_s/generate", "errors/verifier",
  "update/dataset_size"; the updater's metrics drop their "metrics/" level: "update/train_loss",
  "update/grad_norm_mean", "update/steps", ... (a metric named like one of update's own fields
  yields to it);
- two shares the summary leaves as counts: "train/solve_rate" (solved_prompts / prompts) and
  "train/passed_share" (passed / attempts), when their denominator is not 0;
- nothing for None, booleans, text, non-finite numbers, or "index" (it is the step).
New numbers in the summary become new tags without a change here.
"""

from __future__ import annotations

import math
from typing import Any

SKIPPED = ("index",)


def scalars(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    _flatten(summary, "", out)
    train = summary.get("train") or {}
    _share(out, "train/solve_rate", train.get("solved_prompts"), train.get("prompts"))
    _share(out, "train/passed_share", train.get("passed"), train.get("attempts"))
    return out


def _flatten(value: Any, path: str, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        # update's metrics last, so that update's own fields are there first and win a clash
        items = sorted(value.items(), key=lambda item: path == "update" and item[0] == "metrics")
        for key, child in items:
            if not path and key in SKIPPED:
                continue
            if path == "update" and key == "metrics":
                metrics: dict[str, float] = {}
                _flatten(child, "update", metrics)
                for tag, number in metrics.items():
                    out.setdefault(tag, number)
                continue
            _flatten(child, f"{path}/{key}" if path else str(key), out)
        return
    number = _number(value)
    if number is not None and path:
        out[path] = number


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _share(out: dict[str, float], tag: str, part: Any, whole: Any) -> None:
    part, whole = _number(part), _number(whole)
    if part is not None and whole:
        out[tag] = part / whole
