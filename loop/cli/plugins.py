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
    task: Optional[str] = typer.Argument(None, help="list this task's items instead: "
                                         "tasks/NAME.yaml, a task YAML file, or a task source"),
    query: Optional[str] = typer.Option(None, "-q", "--query", help="only items whose prompt, "
                                        "reference, id or name holds this text (case and "
                                        "spaces ignored)"),
    split: Optional[str] = typer.Option(None, "--split", help="only this split: train or eval"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    count: int = typer.Option(20, "-n", "--count", help="how many items (0: all)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run config YAML"),
    sets: list[str] = typer.Option([], "--set", help="override any config key: KEY=VALUE "
                                   "(e.g. task.options.train_size=10)"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """List task sources (from plugins) and task files (tasks/*.yaml); with TASK, that task's items (id, split, prompt, reference), e.g. to pick one for `loop verify`."""
    if task is not None:
        _task_items(task, query, split, as_json, count, config, sets, plugins_dir)
        return
    if query is not None or split is not None:
        fail("-q and --split filter a task's items: give the TASK", code=2)
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


def _task_items(task: str, query: str | None, split: str | None, as_json: bool, count: int,
                config: Path | None, sets: list[str], plugins_dir: Path | None) -> None:
    """`loop tasks TASK`: the items the task source loads with the run config's options and seed
    (train first, then eval), filtered; the ids are what `loop verify` takes."""
    from loop.cli.run import resolve_task
    from loop.cli.verify import _squeeze, user_text

    if split not in (None, "train", "eval"):
        fail(f"--split {split!r}: expected train or eval", code=2)
    plan = resolve_task(task, config, {}, sets, plugins_dir)
    items = [t for t in plan.tasks.train + plan.tasks.eval if split in (None, t.split)]
    if query:
        wanted = _squeeze(query)
        items = [t for t in items if any(wanted in _squeeze(str(text)) for text in (
            user_text(t), t.reference or "", t.id, t.metadata.get("name") or ""))]
    total = len(items)
    shown = items[:count] if count else items
    rows = [{"id": t.id, "name": t.metadata.get("name"), "split": t.split,
             "prompt": user_text(t), "reference": t.reference} for t in shown]
    if as_json:
        print_json(rows)
        return
    from rich.markup import escape
    from rich.table import Table

    what = f"{len(rows)} of {total}" if len(rows) < total else f"{total}"
    named = any(r["name"] for r in rows)
    table = Table(title=f"{plan.config.task.source}: {what} item{'' if total == 1 else 's'}"
                        + (f" matching {query!r}" if query else "")
                        + (f" ({split})" if split else ""),
                  caption="`loop verify TASK ID ANSWER_FILE` takes an id, a unique prefix of one"
                          + (", a name" if named else "") + " or text of the prompt")
    for column in ("id", *(["name"] if named else []), "split", "prompt", "reference"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for r in rows:
        table.add_row(r["id"], *([r["name"] or ""] if named else []), r["split"],
                      escape(r["prompt"][:200]), escape(str(r["reference"] or "")[:80]))
    console.print(table)
