"""`loop run TASK` and `loop resume RUN`: wiring of the run lifecycle (loop.runs) to the terminal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import (
    DB_OPTION,
    PLUGINS_DIR_OPTION,
    console,
    db_path,
    fail,
    plugin_manager,
)

def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("resume")(resume)


def run(
    task: str = typer.Argument(..., help="task: tasks/NAME.yaml, a task YAML file, or a "
                               "registered task source"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run config YAML"),
    model: Optional[str] = typer.Option(None, "--model", help="model alias, local HF folder or "
                                        "hub id"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="training rounds after round 0"),
    method: Optional[str] = typer.Option(None, "--method", help="update method (e.g. sft)"),
    sets: list[str] = typer.Option([], "--set", help="override any config key: KEY=VALUE "
                                   "(e.g. train.learning_rate=1e-4); repeatable"),
    db: Optional[Path] = DB_OPTION,
    name: Optional[str] = typer.Option(None, "--name", help="a unique name for the run"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
    launcher: Optional[str] = typer.Option(None, "--launcher", help="where the train stage "
                                           "runs: inprocess, or accelerate (`accelerate launch` "
                                           "workers: DDP, FSDP, DeepSpeed)"),
    accelerate_config: Optional[Path] = typer.Option(None, "--accelerate-config", help="accelerate "
                                                     "config YAML for --launcher accelerate (e.g. "
                                                     "configs/accelerate/multi-gpu-ddp.yaml)"),
) -> None:
    """Run a self-improvement loop on TASK: round 0 evaluates the model, then each round
    samples, verifies, rewards, logs mistakes, trains and evaluates again."""
    flags = {"model": model, "rounds": rounds, "train.method": method, "name": name}
    if launcher == "inprocess":
        if accelerate_config is not None:
            fail("--accelerate-config needs --launcher accelerate", code=2)
        flags["train.launcher"] = "inprocess"  # replaces a launcher the config file sets
    elif launcher is not None or accelerate_config is not None:
        flags["train.launcher.name"] = launcher or "accelerate"
        flags["train.launcher.config_file"] = (str(accelerate_config)
                                               if accelerate_config is not None else None)
    from loop import runs

    plan = resolve_task(task, config, flags, sets, plugins_dir)
    try:
        runs.prepare(plan, status=console.status)
        run = runs.start_run(plan, db_path(db))
    except runs.RunError as exc:
        fail(str(exc), code=exc.code)
    cfg = plan.config
    console.print(f"run [bold]{run.name}[/bold] ({run.run_id}): {cfg.task.source} on {cfg.model}, "
                  f"{cfg.rounds} rounds, method {cfg.train.method}; store {db_path(db)}",
                  highlight=False, soft_wrap=True)  # soft_wrap: never break the path
    drive(run)


def resume(
    run: str = typer.Argument(..., help="run id (or a unique prefix) or name"),
    db: Optional[Path] = DB_OPTION,
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """Continue a run that was interrupted, failed or killed, from its first unfinished stage.
    Stored work is not redone; a finished run is left as it is."""
    from loop import runs
    from loop.cli.common import open_store

    from loop.plugin_manager import PluginError

    store = open_store(db)
    try:
        opened = runs.open_resume(run, store, pm=lambda: plugin_manager(plugins_dir))
        if opened is not None:
            runs.prepare(opened.plan, status=console.status)
    except runs.RunError as exc:
        fail(str(exc), code=exc.code)
    except PluginError as exc:
        fail(str(exc), code=2)
    if opened is None:
        row = store.get_run(run)
        console.print(f"run {row['name']} ({row['id']}) already complete; nothing to do",
                      highlight=False)
        return
    for note in opened.notes:
        console.print(note, highlight=False, soft_wrap=True)
    status = store.get_run(opened.run_id)["status"]
    console.print(f"resuming run [bold]{opened.name}[/bold] ({opened.run_id}) (was {status})",
                  highlight=False)
    drive(opened, resuming=True)


def resolve_task(task: str, config: Path | None, flags: dict, sets: list[str],
                 plugins_dir: Path | None):
    """The run's plan (plugins, validated config, components, loaded tasks), or a one-line
    error (exit 2): everything that can be wrong with the input is found before anything is
    written (loop.runs.plan_run)."""
    from loop import runs
    from loop.plugin_manager import PluginError

    try:
        return runs.plan_run(task, config, flags, sets, pm=plugin_manager(plugins_dir))
    except PluginError as exc:
        fail(str(exc), code=2)
    except runs.RunError as exc:
        fail(str(exc), code=exc.code)


def drive(run, resuming: bool = False) -> None:
    """Drive the run's rounds with progress bars, then print the per-round table."""
    from loop import runs
    from loop.cli.display import RichReporter, rounds_table
    from loop.summary import run_summary

    _sigterm_interrupts()
    with RichReporter(console) as reporter:
        try:
            runs.drive(run, reporter, resuming=resuming)
        except KeyboardInterrupt:
            reporter.warn("interrupted")
            raise typer.Exit(130)
        except runs.RunError as exc:  # e.g. a full disk: what to do is in the line
            reporter.progress.stop()
            fail(str(exc), code=exc.code)
        except Exception as exc:
            if os.environ.get("LOOP_DEBUG"):
                raise
            reporter.progress.stop()
            fail(f"run {run.run_id} failed: {type(exc).__name__}: {exc} "
                 "(what it finished is in the store; LOOP_DEBUG=1 shows the traceback)")
    console.print(rounds_table(run_summary(run.store, run.store.get_run(run.run_id))))


def _sigterm_interrupts() -> None:
    """SIGTERM (a scheduler stopping the job) ends the run like Ctrl-C: marked interrupted.

    SIGINT is set to raise KeyboardInterrupt too: a shell starts background jobs (`loop run ... &`
    in a script, nohup) with SIGINT ignored, and then `kill -INT` would do nothing."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (e.g. an embedding application)
        pass
