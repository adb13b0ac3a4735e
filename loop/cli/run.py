"""`loop run TASK`: validate everything first, then create the run and drive the round engine."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import secrets
import subprocess
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

VERSIONED = ("loop", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
             "sqlite-utils", "math-verify")


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
    pm, cfg, components, tasks = resolve_task(task, config, flags, sets, plugins_dir)
    prepare = getattr(components.backend.component, "prepare", None)
    if prepare is not None:
        try:
            with console.status(f"preparing model {cfg.model} (first use converts it once)"):
                prepare(cfg.model)
        except Exception as exc:
            fail(f"model error: {exc}", code=2)
    prepare_verifiers(components)
    if cfg.rounds > 0 and not getattr(components.backend.component, "can_load_adapters", True):
        fail(f"backend error: {cfg.backend.name} cannot load this run's adapters (its server's "
             "model is fixed), so this config is evaluation-only: use --rounds 0", code=2)

    from loop.runlock import RunLock
    from loop.store import Store, StoreError

    path = db_path(db)
    store = Store.open(path, pm)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    run_name = cfg.name or _default_name(store, cfg.task.source)
    run_dir = path.parent / "runs" / run_id
    lock = RunLock(run_dir).acquire(run_name)  # a fresh folder: nobody else can hold it
    try:
        store.create_run(run_id=run_id, name=run_name, task=cfg.task.source, model=cfg.model,
                         config=cfg.model_dump(mode="json"), seed=cfg.seed,
                         rounds_planned=cfg.rounds, versions=_versions(), git_sha=_git_sha(),
                         run_dir=str(run_dir))
    except StoreError as exc:
        fail(str(exc), code=2)
    console.print(f"run [bold]{run_name}[/bold] ({run_id}): {cfg.task.source} on {cfg.model}, "
                  f"{cfg.rounds} rounds, method {cfg.train.method}; store {path}", highlight=False)
    drive(store, cfg, components, run_id, run_dir, pm, tasks)
    lock.release()


def resume(
    run: str = typer.Argument(..., help="run id (or a unique prefix) or name"),
    db: Optional[Path] = DB_OPTION,
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """Continue a run that was interrupted, failed or killed, from its first unfinished stage.
    Stored work is not redone; a finished run is left as it is."""
    from pydantic import ValidationError

    from loop.cli.common import open_store
    from loop.components import resolve_components
    from loop.config import ConfigError, LoopConfig, format_validation_error
    from loop.plugins import PluginError, build_registry
    from loop.runlock import RunLock, RunLocked
    from loop.store import StoreError

    # The lock is checked first, before plugins load: a second process on a live run must answer
    # at once and touch nothing.
    store = open_store(db)
    try:
        row = store.get_run(run)
    except StoreError as exc:
        fail(str(exc))
    if row["status"] == "finished":
        console.print(f"run {row['name']} ({row['id']}) already complete; nothing to do",
                      highlight=False)
        return
    try:
        lock = RunLock(Path(row["run_dir"])).acquire(row["name"])
    except RunLocked as exc:
        fail(str(exc))
    try:
        pm = plugin_manager(plugins_dir)
        registry = build_registry(pm)
        pm.hook.prepare_db(db=store.db)
    except PluginError as exc:
        fail(str(exc), code=2)
    try:
        cfg = LoopConfig.model_validate_json(row["config_json"])
        components = resolve_components(cfg, registry)
    except ValidationError as exc:
        fail(format_validation_error(exc, "stored config error"), code=2)
    except ConfigError as exc:
        fail(f"{exc} (from the run's stored config: is a plugin it used missing?)", code=2)
    source = components.task_source
    try:
        tasks = source.component.load(source.options, cfg.seed)
    except (ValueError, OSError) as exc:
        fail(f"task error: {cfg.task.source}: {exc}", code=2)
    prepare_verifiers(components)
    if row["status"] == "running":  # its process died without a word (kill -9, power loss)
        console.print(f"run {row['name']} was left running by pid {lock.previous_pid or '?'}, "
                      "which is gone: taking over", highlight=False)
        problems = store.integrity_problems()
        if problems:
            fail(f"the store failed its integrity check: {problems[0]}")
    console.print(f"resuming run [bold]{row['name']}[/bold] ({row['id']}) "
                  f"(was {row['status']})", highlight=False)
    store.note_resume(row["id"])
    store.set_run_status(row["id"], "running")
    drive(store, cfg, components, row["id"], Path(row["run_dir"]), pm, tasks, resuming=True)
    lock.release()


def resolve_task(task: str, config: Path | None, flags: dict, sets: list[str],
                 plugins_dir: Path | None):
    """Plugins, the validated config, its components and the loaded tasks, or a one-line error
    (exit 2): everything that can be wrong with the input is found before anything is written."""
    from loop.components import resolve_components
    from loop.config import ConfigError, build_config
    from loop.plugins import PluginError, build_registry

    try:
        pm = plugin_manager(plugins_dir)
        registry = build_registry(pm)
    except PluginError as exc:
        fail(str(exc), code=2)
    try:
        cfg = build_config(task, config, flags=flags, sets=sets)
        components = resolve_components(cfg, registry)
    except ConfigError as exc:
        fail(str(exc), code=2)
    source = components.task_source
    try:
        tasks = source.component.load(source.options, cfg.seed)
    except (ValueError, OSError) as exc:
        fail(f"task error: {cfg.task.source}: {exc}", code=2)
    if not tasks.train or not tasks.eval:
        fail(f"task error: {cfg.task.source}: needs both train and eval tasks "
             f"(got {len(tasks.train)} and {len(tasks.eval)})", code=2)
    return pm, cfg, components, tasks


def prepare_verifiers(components) -> None:
    """Each verifier's optional start-up check (e.g. the code sandbox's isolation probe); the
    first failure stops here, before anything is written, with its one line."""
    for chosen in components.verifiers:
        prepare = getattr(chosen.component, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare()
        except Exception as exc:
            fail(f"verifier error: {chosen.name} (plugin {chosen.plugin}): {exc}", code=2)


def drive(store, cfg, components, run_id, run_dir, pm, tasks, resuming: bool = False) -> None:
    """Run the engine with progress bars and record how the run ended."""
    from loop.cli.display import RichReporter, rounds_table
    from loop.failpoints import failpoint
    from loop.rounds import RoundEngine
    from loop.summary import run_summary

    _sigterm_interrupts()
    with RichReporter(console) as reporter:
        engine = RoundEngine(store=store, config=cfg, components=components, run_id=run_id,
                             run_dir=Path(run_dir), reporter=reporter, pm=pm, tasks=tasks)
        try:
            if resuming:
                for message in engine.recover():
                    reporter.warn(message)
            engine.run()
        except KeyboardInterrupt:
            store.set_run_status(run_id, "interrupted")
            reporter.warn("interrupted")
            raise typer.Exit(130)
        except Exception as exc:
            store.set_run_status(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            if os.environ.get("LOOP_DEBUG"):
                raise
            reporter.progress.stop()
            fail(f"run {run_id} failed: {type(exc).__name__}: {exc} "
                 "(what it finished is in the store; LOOP_DEBUG=1 shows the traceback)")
    failpoint("run.before_finish")
    store.set_run_status(run_id, "finished")
    console.print(rounds_table(run_summary(store, store.get_run(run_id))))


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


def _default_name(store, task: str) -> str:
    taken = {r["name"] for r in store.list_runs()}
    n = 1
    while f"{task}-{n}" in taken:
        n += 1
    return f"{task}-{n}"


def _versions() -> dict[str, str | None]:
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
