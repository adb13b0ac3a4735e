"""Shared CLI plumbing: where the store is, the plugin manager, and one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

# Piped output (CI logs, benchmarks) gets a fixed width wide enough for the per-round table.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)

DB_OPTION = typer.Option(None, "--db", help="store database (default: $LOOP_DB or store/loop.db)")
PLUGINS_DIR_OPTION = typer.Option(None, "--plugins-dir",
                                  help="folder of loose plugin .py files (env LOOP_PLUGINS_DIR)")


def db_path(db: Path | None) -> Path:
    return Path(db or os.environ.get("LOOP_DB") or Path("store") / "loop.db")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit: the CLI's only way of reporting a user error."""
    err_console.print(f"[red]error:[/red] {message}" if not message.startswith("config error")
                      else f"[red]{message}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_PM = None


def plugin_manager(plugins_dir: Path | None = None):
    """The CLI's plugin manager, built once per process (tests build their own)."""
    global _PM
    from loop.plugin_manager import get_plugin_manager

    if plugins_dir is not None:
        return get_plugin_manager(plugins_dir=plugins_dir)
    if _PM is None:
        _PM = get_plugin_manager()
    return _PM


def open_store(db: Path | None, must_exist: bool = True, pm=None):
    """The store every command opens; one that cannot be used as it is (corrupt, truncated,
    written by a newer loop, read-only, out of space: loop.store.StoreUnusable) is one line on
    stderr and exit status 2, with nothing written."""
    from loop.store import Store, StoreUnusable

    path = db_path(db)
    if must_exist and not path.exists():
        fail(f"no store at {path} (run `loop run TASK` first, or pass --db)")
    try:
        return Store.open(path, pm)
    except StoreUnusable as exc:
        fail(str(exc), code=exc.code)


def print_json(data) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
