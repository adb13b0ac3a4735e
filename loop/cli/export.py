"""`loop export RUN --what WHAT`: a run's stored rounds as a dataset file (logic in loop.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import DB_OPTION, PLUGINS_DIR_OPTION, console, fail, open_store, plugin_manager


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run: str = typer.Argument(..., help="run id (or a unique prefix of it) or name"),
    what: str = typer.Option(..., "--what", help="attempts, or an update method's dataset: sft, "
                             "dpo, kto, grpo, nft, redi (any registered updater with one)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | parquet | hf (a save_to_disk "
                            "folder)"),
    round_idx: Optional[int] = typer.Option(None, "--round", help="only this round (default: "
                                            "every trained round)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default: "
                                       "export/<run name>-<what>[-r<N>].<ext>)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing output"),
    db: Optional[Path] = DB_OPTION,
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """Write the dataset each update method would build from a run's stored rounds (or the raw
    attempts with verdicts, rewards and critiques), loadable with `datasets`. Every row has a
    `round` column."""
    from loop import export as exporting
    from loop.plugin_manager import PluginError, build_registry
    from loop.store import StoreError

    if fmt not in exporting.FORMATS:
        fail(f"unknown --format {fmt!r} (choose from: {', '.join(exporting.FORMATS)})")
    store = open_store(db)
    try:
        row = store.get_run(run)
    except StoreError as exc:
        fail(str(exc))
    try:
        registry = build_registry(plugin_manager(plugins_dir))
    except PluginError as exc:
        fail(str(exc), code=2)
    if what != exporting.ATTEMPTS and what not in registry.names("updaters"):
        fail(f"unknown --what {what!r} (choose from: {', '.join(exporting.exportable(registry))})")
    path = out or exporting.default_out(row["name"], what, fmt, round_idx)
    try:
        rounds = exporting.choose_rounds(store, row, round_idx)
        exporting.check_out(path, fmt, force)  # before the work, not after it
        rows = exporting.build_rows(store, row, registry, what, rounds)
        if not rows:
            fail(f"nothing to export: {what} has no rows in round(s) "
                 f"{', '.join(map(str, rounds))} of run {row['name']}")
        exporting.write(rows, path, fmt, force)
    except exporting.ExportError as exc:
        fail(str(exc))
    columns = len(rows[0])
    console.print(f"wrote {len(rows)} rows × {columns} columns of {what} (round"
                  f"{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))} of run "
                  f"{row['name']}) to {path}", highlight=False, soft_wrap=True)
