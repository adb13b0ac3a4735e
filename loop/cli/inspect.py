"""`loop runs` and `loop show RUN`: read the store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import DB_OPTION, console, fail, open_store, print_json


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)


def runs(
    db: Optional[Path] = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the runs in the store."""
    store = open_store(db)
    rows = [{"id": r["id"], "name": r["name"], "status": r["status"], "task": r["task"],
             "created": r["created"]} for r in store.list_runs()]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} runs")
    for column in ("id", "name", "status", "task", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("id", "name", "status", "task", "created")))
    console.print(table)


def show(
    run: str = typer.Argument(..., help="run id (or a unique prefix of it) or name"),
    db: Optional[Path] = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Per-round results of one run: train solve rate, held-out pass@1, each verifier's pass rate and each reward's mean, plugin errors, timings, tokens/s."""
    from loop.store import StoreError
    from loop.summary import run_summary

    store = open_store(db)
    try:
        data = run_summary(store, store.get_run(run))
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print_json(data)
        return
    from loop.cli.display import checks_table, rounds_table, time_table

    console.print(rounds_table(data))
    if data["rounds"]:
        console.print(checks_table(data))
        console.print(time_table(data))
    if data["run"]["error"]:
        console.print(f"[red]error:[/red] {data['run']['error']}", highlight=False)
