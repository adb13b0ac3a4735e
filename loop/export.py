"""Export a run's stored rounds as datasets: the raw attempts, or what an update method builds.

`what` is `attempts` (every answer of the round, train and held-out, with its verdicts, rewards
and critique) or the name of a registered updater that has a `build_dataset(context)` method
(loop.Updater). An updater's rows are built exactly as its train stage would build them: the
same `UpdateContext` (the round's samples from `load_samples`, the run's stored config, the
updater's options from that config when the run trained with it, else its default options), so
`loop export --what dpo` on an SFT run shows the pairs DPO would have trained on. Core never
imports an updater's plugin: it is reached through the registry by name.

Each exported row carries a `round` column. Formats: `jsonl` (one JSON object per line, written
with the json module so floats keep every digit; `datasets.load_dataset("json", ...)`),
`parquet` (`Dataset.to_parquet`; `load_dataset("parquet", ...)`) and `hf`
(`Dataset.save_to_disk`; `datasets.load_from_disk`). Text that is not valid UTF-8 (raw model
output is stored losslessly) is written with U+FFFD in place of the bad bytes, and non-finite
floats as null: neither JSON nor Arrow can hold them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loop.config import ConfigError, LoopConfig
from loop.interfaces import Updater
from loop.plugin_manager import PluginError, Registry
from loop.store import Store
from loop.updates import EmptyDataset, fold_verdicts, update_context

ATTEMPTS = "attempts"
FORMATS = ("jsonl", "parquet", "hf")
EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}


class ExportError(Exception):
    """A request that cannot be exported; `str()` is the one line the CLI prints."""


# ----- what can be exported ---------------------------------------------------------------------


def has_dataset(component: Any) -> bool:
    """Whether an updater overrides `build_dataset` (the base class's only raises)."""
    method = getattr(type(component), "build_dataset", None)
    return method is not None and method is not Updater.build_dataset


def exportable(registry: Registry) -> list[str]:
    """`attempts` and every registered updater that can build a dataset."""
    return [ATTEMPTS] + [name for name in registry.names("updaters")
                         if has_dataset(registry.get("updaters", name))]


def stored_config(run: dict) -> LoopConfig:
    from pydantic import ValidationError

    from loop.config import format_validation_error

    try:
        return LoopConfig.model_validate_json(run["config_json"])
    except ValidationError as exc:
        raise ExportError(format_validation_error(exc, "stored config error")) from None


def trained_rounds(store: Store, run_id: str) -> list[int]:
    """The rounds whose train stage finished (round 0 only evaluates, so it is never one)."""
    return [row["idx"] for row in store.rounds(run_id)
            if row["idx"] > 0 and "train" in json.loads(row["stages_json"] or "{}")]


def choose_rounds(store: Store, run: dict, round_idx: int | None) -> list[int]:
    """Every trained round, or just `round_idx` if it was trained (ExportError if not)."""
    trained = trained_rounds(store, run["id"])
    if round_idx is None:
        if not trained:
            raise ExportError(f"run {run['name']} has no trained round yet; nothing to export")
        return trained
    if round_idx not in trained:
        listed = ", ".join(map(str, trained)) or "none"
        raise ExportError(f"round {round_idx} of run {run['name']} was not trained "
                          f"(trained rounds: {listed})")
    return [round_idx]


# ----- rows ------------------------------------------------------------------------------------


def build_rows(store: Store, run: dict, registry: Registry, what: str,
               rounds: list[int]) -> list[dict]:
    """The rows of `what` for each round in `rounds`, in round order, each with its `round`."""
    config = stored_config(run)
    updater = None if what == ATTEMPTS else resolve_updater(registry, what, config)
    rows = []
    for idx in rounds:
        built = (attempt_rows(store, run["id"], idx, config) if updater is None
                 else updater_rows(store, run, config, updater, what, idx))
        rows += [{**row, "round": idx} for row in built]
    return rows


def reward_names(config: LoopConfig) -> list[str]:
    """The run's reward functions, in config order (the train stage's `reward_names`)."""
    return [ref.name for ref in config.task.rewards]


def attempt_rows(store: Store, run_id: str, idx: int, config: LoopConfig) -> list[dict]:
    """Every attempt of round `idx` (train, then held-out), one flat row each.

    Columns: `purpose`, `attempt_id`, `task_id`, `task_source`, `sample_index`, `parent_id`
    (the answer a repair repairs), `depth` (0: first try), `prompt` (the task's messages),
    `reference`, `messages` (the whole conversation, repair turns included), `completion`,
    `finish_reason`, `prompt_tokens`, `completion_tokens`, `token_ids`, `logprobs` (sampling
    log-probs, None if the backend gave none); the verdict folded over the verifiers as the
    updaters see it: `passed` (every verifier passed), `score` (the lowest), `error_kind`,
    `mistake` (the first non-empty of each), `feedback` (the verifiers' feedback, one line each);
    `verdicts` (each verifier's own: verifier, passed, score, error_kind, mistake, feedback);
    one `reward_<name>` per reward function (None: not applicable, a checker failure, or a
    held-out answer, which gets no reward); `critique` (the critics' texts, joined as the model
    read them before repairing this answer; None when it was not critiqued) and
    `critique_kind` (the first critic's kind).
    """
    attempts = [*store.attempts(run_id, idx, "train"), *store.attempts(run_id, idx, "eval")]
    ids = [a.id for a in attempts]
    tasks = store.get_tasks({a.task_id for a in attempts})
    verdicts = store.verdicts(ids)
    rewards = store.rewards(ids)
    critiques = store.critiques(ids)
    names = reward_names(config)
    names += sorted({n for values in rewards.values() for n in values} - set(names))
    rows = []
    for attempt in attempts:
        task = tasks[attempt.task_id]
        judged = verdicts[attempt.id]
        said = critiques[attempt.id]
        rows.append({
            "purpose": attempt.purpose, "attempt_id": attempt.id, "task_id": attempt.task_id,
            "task_source": task.source, "sample_index": attempt.sample_index,
            "parent_id": attempt.parent_id, "depth": attempt.depth,
            "prompt": task.prompt, "reference": task.reference, "messages": attempt.messages,
            "completion": attempt.completion, "finish_reason": attempt.finish_reason,
            "prompt_tokens": attempt.prompt_tokens,
            "completion_tokens": attempt.completion_tokens, "token_ids": attempt.token_ids,
            "logprobs": attempt.logprobs,
            **fold_verdicts(judged),
            "verdicts": [{"verifier": name, "passed": v.passed, "score": v.score,
                          "error_kind": v.error_kind, "mistake": v.mistake,
                          "feedback": v.feedback} for name, v in judged.items()],
            **{f"reward_{name}": rewards[attempt.id].get(name) for name in names},
            "critique": "\n".join(c.text for c in said) if said else None,
            "critique_kind": said[0].kind if said else None,
        })
    return rows


def resolve_updater(registry: Registry, name: str, config: LoopConfig) -> Any:
    """The registered updater `name` with its options: the run's `train.options` when the run
    trained with it, its defaults otherwise (a copy, as the train stage's components are)."""
    from loop.resolve import validate_options

    try:
        component = registry.get("updaters", name)
    except PluginError:
        known = ", ".join(exportable(registry))
        raise ExportError(f"unknown --what {name!r} (choose from: {known})") from None
    if not has_dataset(component):
        raise ExportError(f"updater {name!r} has no dataset to export")
    raw = config.train.options if config.train.method == name else {}
    try:
        options = validate_options(component, raw, "train")
    except ConfigError as exc:
        raise ExportError(f"{exc} (from the run's stored config)") from None
    component = copy.copy(component)
    component.options = options
    return component


def updater_rows(store: Store, run: dict, config: LoopConfig, updater: Any, name: str,
                 idx: int) -> list[dict]:
    """`updater.build_dataset(context)` for round `idx`; any failure is one ExportError line."""

    # build_dataset must not write; it still gets a real, empty folder, as in training.
    with tempfile.TemporaryDirectory(prefix="loop-export-") as scratch:
        # The context the train stage built, except the prepared model: a dataset needs none.
        context = update_context(store, config, run["id"], idx, options=updater.options,
                                 output_dir=Path(scratch), reward_names=reward_names(config))
        try:
            rows = updater.build_dataset(context)
        except (EmptyDataset, NotImplementedError) as exc:
            raise ExportError(f"round {idx}: {exc}") from None
        except Exception as exc:
            raise ExportError(f"round {idx}: updater {name!r} failed to build its dataset: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ExportError(f"updater {name!r}: build_dataset returned {type(rows).__name__}, "
                          "not a list of dicts")
    return rows


# ----- writing ---------------------------------------------------------------------------------


def default_out(run_name: str, what: str, fmt: str, round_idx: int | None) -> Path:
    """`export/<run name>-<what>[-r<N>].<ext>` (a folder, without extension, for hf)."""
    stem = f"{run_name}-{what}".replace(os.sep, "_") + (f"-r{round_idx}" if round_idx is not None
                                                         else "")
    return Path("export") / f"{stem}{EXTENSIONS[fmt]}"


def check_out(out: Path, fmt: str, force: bool) -> None:
    """Refuse to overwrite `out` unless `force`; refuse even then to replace something that is
    not what this format writes (a folder for a file, or a folder that is not a saved dataset)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ExportError(f"{out} already exists (pass --force to overwrite it)")
    if fmt != "hf" and out.is_dir():
        raise ExportError(f"{out} is a folder; {fmt} export writes a file")
    if fmt == "hf" and (not out.is_dir() or (any(out.iterdir()) and not _saved_dataset(out))):
        raise ExportError(f"{out} is not a saved dataset folder; not replacing it")


def _saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def write(rows: list[dict], out: Path, fmt: str, force: bool = False) -> None:
    """Write `rows` to `out` in `fmt`, via a temporary sibling renamed into place, so an
    interrupted export leaves no half-written file behind."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown --format {fmt!r} (choose from: {', '.join(FORMATS)})")
    check_out(out, fmt, force)
    lines = [_json_line(row) for row in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(line + "\n" for line, _ in lines)
        else:
            _write_arrow([json.loads(line) if changed else row
                          for row, (line, changed) in zip(rows, lines)], tmp, fmt)
        if out.is_dir() and not out.is_symlink():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        _remove(tmp)


def _json_line(row: dict) -> tuple[str, bool]:
    """(the row as one JSON line, whether it had to be cleaned first). Not Dataset.to_json:
    pandas writes floats with 10 significant digits; json keeps every one. Cleaning (see
    `_clean`) walks the row only when json's C encoder finds NaN/inf or a lone surrogate."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
        return text, False
    except ValueError:  # a non-finite float, or (UnicodeEncodeError) text that is not UTF-8
        return json.dumps(_clean(row), ensure_ascii=False, allow_nan=False), True
    except TypeError as exc:
        raise ExportError(f"a row cannot be written as JSON: {exc}") from None


def _write_arrow(rows: list[dict], path: Path, fmt: str) -> None:
    try:
        import datasets
    except ImportError:
        raise ExportError(f"--format {fmt} needs the `datasets` package (pip install datasets; "
                          "loop-trl brings it)") from None
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        try:
            table = datasets.Dataset.from_list(rows)
        except Exception as exc:  # pyarrow's ArrowInvalid/ArrowTypeError: rows of mixed shapes
            raise ExportError(f"the rows do not fit one table: {type(exc).__name__}: "
                              f"{exc}") from None
        if fmt == "parquet":
            table.to_parquet(str(path))
        else:
            table.save_to_disk(str(path))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _clean(value: Any) -> Any:
    """JSON- and Arrow-safe copy: non-finite floats become None, text that is not valid UTF-8
    gets U+FFFD for its bad bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
