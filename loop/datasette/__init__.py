"""Datasette for a loop store: the shipped metadata (what every table, view and column means, and
the canned queries) and the command line that serves a store with it.

`metadata.yaml` is keyed by the database name `loop` (a store file named loop.db);
`metadata_for(path)` renames that key to the name Datasette gives the file actually served.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

METADATA_FILE = Path(__file__).with_name("metadata.yaml")
DATABASE_KEY = "loop"


def metadata() -> dict[str, Any]:
    """The shipped metadata, as Datasette reads it."""
    return yaml.safe_load(METADATA_FILE.read_text(encoding="utf-8"))


def database_name(db: Path) -> str:
    """The name Datasette serves a database file under: the file name without its suffix."""
    return Path(db).stem


def metadata_for(db: Path) -> dict[str, Any]:
    """The shipped metadata with its database entry under `db`'s Datasette name."""
    data = copy.deepcopy(metadata())
    data["databases"] = {database_name(db): data["databases"][DATABASE_KEY]}
    return data


def canned_queries() -> dict[str, dict[str, Any]]:
    """name -> {"title", "description", "sql"} of every canned query."""
    return metadata()["databases"][DATABASE_KEY]["queries"]


def query_parameters(sql: str) -> list[str]:
    """The named parameters (`:name`) of a canned query, as Datasette finds them; Datasette
    gives a missing one the empty string, which every canned query reads as "no filter"."""
    return sorted(set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", sql)))


def serve_command(db: Path, metadata_file: Path, port: int, extra: list[str]) -> list[str]:
    """`datasette serve` on the live store (not --immutable: a run may be writing to it)."""
    return [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(metadata_file),
            "--port", str(port), *extra]
