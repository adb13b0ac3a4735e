"""`loop datasette`: browse a store in Datasette, with the shipped table descriptions and canned
queries (loop/datasette/metadata.yaml)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from loop.cli.common import DB_OPTION, db_path, fail, open_store


def register(app: typer.Typer) -> None:
    app.command("datasette")(datasette)


def datasette(
    db: Optional[Path] = DB_OPTION,
    port: int = typer.Option(8001, "--port", "-p", min=0, max=65535,
                             help="port to serve on (0: any free port)"),
    extra: Optional[List[str]] = typer.Argument(
        None, metavar="[-- DATASETTE ARGS]",
        help="passed to `datasette serve` after `--`, e.g. -- --host 0.0.0.0 -o"),
) -> None:
    """Serve the store in Datasette: tables, views and canned queries with descriptions.

    Runs `datasette serve DB --metadata FILE --port N [ARGS]` on the live store, not immutable.
    """
    # Not --immutable: a run may be writing to the store; Datasette only reads it. The schema is
    # brought up to date first, so the views and indexes the canned queries use are there.
    from loop.datasette import metadata_for, serve_command

    if importlib.util.find_spec("datasette") is None:
        fail("datasette is not installed: pip install datasette")
    path = db_path(db)
    from loop.search_index import refresh

    store = open_store(path)  # exists? then migrate: the views must be there to serve
    refresh(store.db)  # and the search indexes hold every answer (loop.search_index)
    store.db.conn.close()
    with tempfile.TemporaryDirectory(prefix="loop-datasette-") as folder:
        metadata_file = Path(folder) / "metadata.json"
        metadata_file.write_text(json.dumps(metadata_for(path), indent=1), encoding="utf-8")
        process = subprocess.Popen(serve_command(path, metadata_file, port, list(extra or [])))
        # a SIGTERM to `loop` stops datasette too, rather than leaving it serving on its own
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached datasette too: let it stop on its own
            code = process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)
