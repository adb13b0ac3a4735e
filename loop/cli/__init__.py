"""The `loop` command line: a Typer app with one module per command group.

Nothing here imports torch: plugins import their heavy libraries inside the functions that use
them, so `loop --help` stays fast. Plugin commands are registered before the app runs.
"""

from __future__ import annotations

import sys

import typer

from loop.cli import browse as browse_commands
from loop.cli import doctor as doctor_commands
from loop.cli import export as export_commands
from loop.cli import inspect as inspect_commands
from loop.cli import logs as log_commands
from loop.cli import plugins as plugin_commands
from loop.cli import report as report_commands
from loop.cli import run as run_commands
from loop.cli import scaffold as scaffold_commands
from loop.cli import verify as verify_commands

app = typer.Typer(
    name="loop",
    help="Self-improvement loops for language models: generate, verify, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Self-improvement loops for language models: generate, verify, train, evaluate."""


run_commands.register(app)
inspect_commands.register(app)
log_commands.register(app)
plugin_commands.register(app)
verify_commands.register(app)
export_commands.register(app)
report_commands.register(app)
scaffold_commands.register(app)
browse_commands.register(app)
doctor_commands.register(app)


def one_paragraph_help(typer_app: typer.Typer) -> None:
    """Give each command whose help is its docstring that text with the docstring's line breaks
    joined (blank lines still part paragraphs): Typer prints a docstring's hard line breaks, so a
    sentence wrapped in the source would break mid-sentence in `loop --help`."""
    import inspect

    for info in typer_app.registered_commands:
        doc = info.help if info.help is not None else getattr(info.callback, "__doc__", None)
        if doc:
            info.help = "\n\n".join(" ".join(part.split())
                                     for part in inspect.cleandoc(doc).split("\n\n"))


one_paragraph_help(app)


def build_app() -> typer.Typer:
    """The app with every plugin's extra commands (register_commands hook) added."""
    from loop.cli.common import plugin_manager

    try:
        pm = plugin_manager()
    except Exception:  # a broken plugin must not hide the built-in commands; `loop plugins` reports it
        return app
    pm.hook.register_commands(app=app)
    one_paragraph_help(app)
    return app


def main() -> None:
    sys.exit(build_app()(standalone_mode=True))
