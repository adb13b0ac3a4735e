"""`loop plugins` and `loop tasks`: what is installed and what it registers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import PLUGINS_DIR_OPTION, console, fail, plugin_manager, print_json


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
    app.command("tasks")(tasks)


def _registry(plugins_dir: Path | None):
    from loop.plugin_manager import PluginError, build_registry

    try:
        pm = plugin_manager(plugins_dir)
        return pm, build_registry(pm)
    except PluginError as exc:
        fail(str(exc), code=2)


def plugins(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """List installed plugins with their version, hooks and the names they register."""
    from loop.plugin_manager import KINDS, describe_plugins

    pm, registry = _registry(plugins_dir)
    rows = describe_plugins(pm, registry)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="plugins")
    for column in ("plugin", "version", *KINDS):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["version"] or "",
                      *(", ".join(row[kind]) for kind in KINDS))
    console.print(table)


def tasks(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """List task sources (from plugins) and task files (tasks/*.yaml)."""
    from loop.config import ConfigError, default_task_dirs, read_yaml

    pm, registry = _registry(plugins_dir)
    rows = []
    for name in registry.names("tasks"):
        component = registry.get("tasks", name)
        rows.append({"name": name, "kind": "source", "plugin": registry.plugin_of("tasks", name),
                     "description": (component.__doc__ or "").strip().splitlines()[0]
                     if component.__doc__ else ""})
    seen = set()
    for folder in default_task_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                source = read_yaml(path, "task").get("source", path.stem)
            except ConfigError as exc:
                source = f"(unreadable: {exc})"
            rows.append({"name": path.stem, "kind": "file", "plugin": None,
                         "description": f"{path} (source {source})"})
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="tasks")
    for column in ("name", "kind", "plugin", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["kind"], row["plugin"] or "", row["description"])
    console.print(table)
