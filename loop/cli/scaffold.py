"""`loop plugin new KIND NAME`: start a plugin of your own from a ready, tested distribution."""

from __future__ import annotations

from pathlib import Path

import typer

from loop.cli.common import console, fail

plugin_app = typer.Typer(no_args_is_help=True, help="Write plugins of your own.")


def register(app: typer.Typer) -> None:
    app.add_typer(plugin_app, name="plugin")


@plugin_app.callback()
def _plugin() -> None:
    """Write plugins of your own."""  # a callback keeps `new` a sub-command (Typer collapses one)


@plugin_app.command("new")
def new(
    kind: str = typer.Argument(..., metavar="KIND",
                               help="verifier, critic, reward, updater or task"),
    name: str = typer.Argument(..., metavar="NAME",
                               help="the component's name in configs, e.g. my-check "
                                    "(lowercase letters, digits, '-' or '_')"),
    directory: Path = typer.Option(Path("."), "--dir", help="where to create loop-NAME/"),
) -> None:
    """Write `loop-NAME/`: a distribution with one working component of KIND, its hook, a README
    and tests. `pip install -e loop-NAME` makes it live (`loop plugins` lists it)."""
    from loop.scaffold import REGISTRY_KIND, Names, ScaffoldError, template_module, write_plugin

    try:
        Names.of(name)
        template_module(kind)
    except ScaffoldError as exc:
        fail(str(exc), code=2)
    taken_by = _registered_by(REGISTRY_KIND.get(kind), name)
    if taken_by:
        fail(f"a {kind} named {name!r} is already registered by plugin {taken_by!r}; two "
             "plugins cannot share a name: pick another", code=2)
    try:
        folder = write_plugin(kind, name, directory)
    except ScaffoldError as exc:
        fail(str(exc), code=2)
    except OSError as exc:
        fail(f"cannot write {Path(directory) / f'loop-{name}'}: {exc.strerror or exc}", code=2)
    console.print(f"created {folder}/ ({kind} [bold]{name}[/bold])", highlight=False)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        console.print(f"  {path.relative_to(folder.parent)}", highlight=False)
    console.print(f"next: pip install -e {folder} && loop plugins   "
                  f"(its README says how to use it)", highlight=False)


def _registered_by(registry_kind: str | None, name: str) -> str | None:
    """The installed plugin that already registers `name` for this kind, if any. Plugins that
    fail to load are not our business here (`loop plugins` reports them)."""
    if registry_kind is None:
        return None
    from loop.cli.common import plugin_manager
    from loop.plugin_manager import build_registry

    try:
        registry = build_registry(plugin_manager())
    except Exception:
        return None
    known = registry.kinds.get(registry_kind, {})
    return known[name].plugin if name in known else None
