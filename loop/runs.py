"""The run lifecycle: check everything, start a run, drive its rounds, resume it after a crash.

    plan = plan_run(task, config_file, flags, sets)   # plugins, config, components, tasks
    model_path = prepare(plan)                        # backend + verifier start-up checks
    run = start_run(plan, db)                         # the run row, its folder and lock
    drive(run, reporter)                              # the rounds; how the run ended

    run = open_resume(run_ref, db)                    # lock first, then the stored config
    drive(run, reporter, resuming=True)

Everything that can be wrong with the input is found by `plan_run` and `prepare`, before
anything is written; each problem is a `RunError` with one line and an exit status. The CLI
(`loop run`, `loop resume`, `loop verify`) and the bench scripts call these same functions.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loop.config import ConfigError, LoopConfig, build_config, format_validation_error
from loop.plugin_manager import PluginError, build_registry, get_plugin_manager
from loop.resolve import Components, resolve_components
from loop.runlock import RunLock, RunLocked
from loop.schema import TaskSet
from loop.store import DiskFull, Store, StoreError, StoreUnusable, is_disk_full

# Distributions whose versions each run records (runs.versions_json).
VERSIONED = ("loop", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
             "sqlite-utils", "math-verify")


class RunError(Exception):
    """A run that cannot start or continue: `str()` is one line, `code` the exit status (2: the
    input is wrong, 1: the run's state is)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    """A run's validated inputs: plugin manager, config, chosen components, loaded tasks, and
    (after `prepare`) what the backend made of the model."""

    pm: Any
    config: LoopConfig
    components: Components
    tasks: TaskSet
    model_path: str = ""


@dataclass
class Run:
    """A run being driven: its store, row id, name, folder and held lock."""

    plan: Plan
    store: Store
    run_id: str
    name: str
    run_dir: Path
    lock: RunLock
    notes: list[str] = field(default_factory=list)  # what opening it found, for the user


def plugin_registry(plugins_dir: Path | None = None, pm: Any = None) -> tuple[Any, Any]:
    """(plugin manager, registry); a plugin that fails to load or clashes is a RunError."""
    try:
        pm = pm or get_plugin_manager(plugins_dir=plugins_dir)
        return pm, build_registry(pm)
    except PluginError as exc:
        raise RunError(str(exc)) from None


def plan_run(task: str, config_file: Path | None = None, flags: dict | None = None,
             sets: list[str] | None = None, plugins_dir: Path | None = None,
             pm: Any = None) -> Plan:
    """Plugins, the validated config, its components and the loaded tasks of `loop run TASK`."""
    pm, registry = plugin_registry(plugins_dir, pm)
    try:
        config = build_config(task, config_file, flags=flags or {}, sets=sets or [])
        components = resolve_components(config, registry)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    tasks = load_tasks(config, components)
    if not tasks.train or not tasks.eval:
        raise RunError(f"task error: {config.task.source}: needs both train and eval tasks "
                       f"(got {len(tasks.train)} and {len(tasks.eval)})")
    return Plan(pm, config, components, tasks)


def load_tasks(config: LoopConfig, components: Components) -> TaskSet:
    source = components.task_source
    try:
        return source.component.load(source.options, config.seed)
    except (ValueError, OSError) as exc:
        raise RunError(f"task error: {config.task.source}: {exc}") from None


def prepare_verifiers(components: Components) -> None:
    """Each verifier's start-up check (e.g. the code sandbox's isolation probe), then the
    environment's; the first failure is a RunError with its one line."""
    checks = [("verifier", chosen) for chosen in components.verifiers]
    if components.environment is not None:
        checks.append(("environment", components.environment))
    for kind, chosen in checks:
        try:
            chosen.component.prepare()
        except Exception as exc:
            raise RunError(f"{kind} error: {chosen.name} (plugin {chosen.plugin}): {exc}"
                           ) from None


def prepare(plan: Plan, status: Callable[[str], Any] | None = None) -> str:
    """The components' start-up checks, before anything is written: the backend prepares the
    model (its result, usually a local folder, is what updaters train: `plan.model_path`), every
    verifier checks it can work here, and a backend that cannot load adapters refuses a config
    with training rounds. `status(text)` may return a context manager shown while it runs."""
    config, components = plan.config, plan.components
    backend = components.backend
    try:
        if status is None:
            prepared = backend.component.prepare(config.model)
        else:
            with status(f"preparing model {config.model} (first use converts it once)"):
                prepared = backend.component.prepare(config.model)
    except Exception as exc:
        raise RunError(f"model error: {exc}") from None
    plan.model_path = str(prepared) if prepared else config.model
    prepare_verifiers(components)
    if config.rounds > 0 and not backend.component.can_load_adapters:
        raise RunError(f"backend error: {config.backend.name} cannot load this run's adapters "
                       "(its server's model is fixed), so this config is evaluation-only: use "
                       "--rounds 0")
    return plan.model_path


def start_run(plan: Plan, db: Path) -> Run:
    """Create the run: its row (config, seed, versions, git commit), its folder and its lock."""
    config = plan.config
    try:
        store = Store.open(db, plan.pm)
    except StoreUnusable as exc:
        raise RunError(str(exc), code=exc.code) from None
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    run_dir = Path(db).parent / "runs" / run_id
    facts = dict(versions=versions(), git_sha=git_sha())
    lock = None
    try:
        # The default name and the row in one write transaction: two runs starting at once in
        # one store never pick the same name.
        with store.transaction():
            name = config.name or default_name(store, config.task.name or config.task.source)
            lock = RunLock(run_dir).acquire(name)  # a fresh folder: nobody else can hold it
            store.create_run(run_id=run_id, name=name, task=config.task.source,
                             model=config.model, config=config.model_dump(mode="json"),
                             seed=config.seed, rounds_planned=config.rounds,
                             run_dir=str(run_dir), **facts)
    except StoreError as exc:
        if lock is not None:
            lock.release()
        raise RunError(str(exc), code=getattr(exc, "code", 2)) from None
    return Run(plan, store, run_id, name, run_dir, lock)


def open_resume(run_ref: str, store: Store, plugins_dir: Path | None = None,
                pm: Callable[[], Any] | None = None) -> Run | None:
    """Take over a stored run to continue it: None when it is already finished.

    The lock is taken first, before plugins load, so a second process on a live run answers at
    once and touches nothing. Then the stored config is resolved against today's plugins, the
    tasks are loaded, as for a new run (`prepare` it next). `pm`: a function returning the
    plugin manager to use (default: a fresh one with `plugins_dir`)."""
    try:
        row = store.get_run(run_ref)
    except StoreError as exc:
        raise RunError(str(exc), code=1) from None
    if row["status"] == "finished":
        return None
    try:
        lock = RunLock(Path(row["run_dir"])).acquire(row["name"])
    except RunLocked as exc:
        raise RunError(str(exc), code=1) from None
    try:
        run = _resumed(row, store, lock, plugins_dir, pm)
    except BaseException:
        lock.release()
        raise
    return run


def _resumed(row: dict, store: Store, lock: RunLock, plugins_dir: Path | None,
             pm_factory: Callable[[], Any] | None) -> Run:
    from pydantic import ValidationError

    pm, registry = plugin_registry(plugins_dir, pm_factory() if pm_factory else None)
    try:
        pm.hook.prepare_db(db=store.db)
    except Exception as exc:
        raise RunError(f"a plugin failed to prepare the store: {type(exc).__name__}: {exc}"
                       ) from None
    try:
        config = LoopConfig.model_validate_json(row["config_json"])
        components = resolve_components(config, registry)
    except ValidationError as exc:
        raise RunError(format_validation_error(exc, "stored config error")) from None
    except ConfigError as exc:
        raise RunError(f"{exc} (from the run's stored config: is a plugin it used missing?)"
                       ) from None
    plan = Plan(pm, config, components, load_tasks(config, components))
    run = Run(plan, store, row["id"], row["name"], Path(row["run_dir"]), lock)
    if row["status"] == "running":  # its process died without a word (kill -9, power loss)
        run.notes.append(f"run {row['name']} was left running by pid "
                         f"{lock.previous_pid or '?'}, which is gone: taking over")
        problems = store.integrity_problems()
        if problems:
            raise RunError(f"the store failed its integrity check: {problems[0]}", code=1)
    return run


def engine_for(run: Run, reporter: Any = None) -> Any:
    """The round engine of `run`, with the prepared model and the loaded tasks."""
    from loop.rounds import NullReporter, RoundEngine

    plan = run.plan
    return RoundEngine(store=run.store, config=plan.config, components=plan.components,
                       run_id=run.run_id, run_dir=run.run_dir, reporter=reporter or NullReporter(),
                       pm=plan.pm, tasks=plan.tasks, model_path=plan.model_path)


def drive(run: Run, reporter: Any = None, resuming: bool = False) -> None:
    """Run (or continue) the rounds and record how the run ended: `finished`; `interrupted` on
    Ctrl-C/SIGTERM (re-raised as KeyboardInterrupt); `failed` with the error on any other
    exception (re-raised), except a full disk: a RunError naming what could not be written and
    how to continue (when even the status cannot be written, the run stays `running`, which
    resume takes over). The lock is released in every case. Verifier, reward and critic calls
    run in the run's plugin worker pool (`plugins.isolation`), closed before the lock is
    released."""
    from loop.allocator import keep_freed_memory
    from loop.failpoints import failpoint
    from loop.plugin_workers import pool_for

    keep_freed_memory()  # each training and decoding step reuses the last one's memory
    engine = engine_for(run, reporter)
    try:
        try:
            if resuming:
                run.store.note_resume(run.run_id)
                run.store.set_run_status(run.run_id, "running")
                for message in engine.recover():
                    engine.reporter.warn(message)
            # plugin workers are forked here, before any stage opens a model (loop.plugin_workers);
            # each stage's commit leaves the copy of its pages into the store file to a thread
            with pool_for(run.plan.components, run.plan.config), \
                    run.store.checkpoints_in_background():
                engine.run()
            failpoint("run.before_finish")
            run.store.set_run_status(run.run_id, "finished")
        except KeyboardInterrupt:
            _mark(run, "interrupted")
            raise
        except Exception as exc:
            full = disk_full(exc, run)
            _mark(run, "failed", f"{type(exc).__name__}: {exc}")
            if full is not None:
                raise RunError(f"run {run.name} stopped: {full}: free space there, then "
                               f"`loop resume {run.name}` (nothing committed is lost)",
                               code=1) from exc
            raise
    finally:
        run.lock.release()


def _mark(run: Run, status: str, error: str | None = None) -> None:
    """Record how the run ended. On a full disk that write may fail too: the run then stays
    `running`, which `loop resume` takes over as it does a killed run's."""
    try:
        run.store.set_run_status(run.run_id, status, error=error)
    except Exception as exc:
        if disk_full(exc, run) is None:
            raise


def disk_full(exc: BaseException, run: Run) -> DiskFull | None:
    """The DiskFull that `exc` is or was caused by (a store write: SQLITE_FULL; a file: ENOSPC or
    EDQUOT), naming what could not be written; None when it is not about space."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return exc
        if is_disk_full(exc):
            if isinstance(exc, OSError):
                return DiskFull(str(exc.filename) if exc.filename else
                                f"a file in the run folder {run.run_dir}")
            return DiskFull(f"the store {run.store.path}")
        exc = exc.__cause__ or exc.__context__
    return None


def default_name(store: Store, task: str) -> str:
    """`TASK-N` with the smallest N no run in the store has."""
    taken = {r["name"] for r in store.list_runs()}
    n = 1
    while f"{task}-{n}" in taken:
        n += 1
    return f"{task}-{n}"


def versions() -> dict[str, str | None]:
    """The installed version of each VERSIONED distribution (None: not installed)."""
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_sha() -> str | None:
    """The commit of loop's own checkout, when it runs from one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
