"""Task files for task sources: JSON Lines rows, de-duplication, and the seeded held-out split.

Every task source that reads a file of problems uses these three, so every file-based task in
loop splits the same way: rows with the same question are kept once (so no question is in both
splits), a seeded shuffle puts the first `eval_size` in the held-out split, and the training
split never depends on `train_size` for its held-out rows. Bad input raises ValueError with one
line naming the file (and line, where there is one).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read_jsonl(path: str | Path, shown: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file, in file order.

    `shown` names the file in messages (default: `path`). Raises ValueError with one line for a
    missing or unreadable file, a folder, invalid UTF-8 (a BOM on the first line is allowed) or
    JSON, a row that is not a JSON object, or a file with no rows."""
    shown = str(path) if shown is None else shown
    try:
        data = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{shown}: is a directory, expected a .jsonl file") from None
    except OSError as exc:
        raise ValueError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{shown} line {number}"
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not valid UTF-8") from None
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{where}: invalid JSON ({getattr(exc, 'msg', 'too deeply nested')})"
                             ) from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise ValueError(f"{shown}: empty file (no JSON rows)")
    return rows


def unique_by(rows: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """The first row of each `key(row)`, in order."""
    seen: set[Hashable] = set()
    out = []
    for row in rows:
        k = key(row)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


def split_tasks(rows: Sequence[T], *, eval_size: int, seed: int, train_size: int | None = None,
                held_out: Sequence[T] | None = None, key: Callable[[T], Hashable] | None = None,
                shown: str = "tasks", held_out_shown: str = "the held-out file",
                advice: str = "lower eval_size") -> tuple[list[T], list[T]]:
    """(train, eval) by a seeded shuffle (`random.Random(seed)`).

    Without `held_out`: the first `eval_size` of the shuffled rows are eval and the rest train
    (capped at `train_size`), so eval never depends on `train_size`; at least one row must be
    left for train. With `held_out` (the rows of a separate held-out file): eval is `eval_size`
    of them drawn the same way, and train is every row whose `key` is not in the held-out file,
    drawn for eval or not (the file as a whole is declared held-out), shuffled and capped.
    Rows should already be unique (`unique_by`)."""
    rng = random.Random(seed)
    if held_out is None:
        if len(rows) <= eval_size:
            raise ValueError(f"{shown}: {len(rows)} distinct problems, but eval_size={eval_size} "
                             f"would leave none for training; {advice}")
        order = list(rows)
        rng.shuffle(order)
        eval_rows, train = order[:eval_size], order[eval_size:]
    else:
        if key is None:
            raise TypeError("split_tasks: a held_out split needs key=")
        held_keys = {key(row) for row in held_out}
        train = [row for row in rows if key(row) not in held_keys]
        if not train:
            raise ValueError(f"{shown}: every problem is also in {held_out_shown}")
        eval_rows = list(held_out)
        rng.shuffle(eval_rows)
        eval_rows = eval_rows[:eval_size]
        rng.shuffle(train)
    if train_size is not None:
        train = train[:train_size]
    return train, eval_rows
