"""Run a round's update in processes started by `accelerate launch` (DDP, FSDP, DeepSpeed).

Parent side, `launch_update` (the train stage calls it when `train.launcher.name` is
`accelerate`): it writes a request (run, round, the resolved config, where to write) into a
temporary folder of the run and starts

    python -m accelerate.commands.launch --config_file FILE [--num_processes N] \\
        -m loop.train_worker REQUEST.json

then waits, turning the workers' progress lines into the stage's progress bar and keeping their
whole output in `round-N/train.log`.

Child side, `main` (one per process): it rebuilds the UpdateContext from the store and the
request, runs the registered updater by name, and rank 0 writes the UpdateResult as JSON. Every
rank trains (that is what DDP/FSDP/DeepSpeed need), but only rank 0's checkpoint lands where the
engine publishes it: the other ranks write theirs into scratch folders that are thrown away, so
no two processes ever write the same file. The parent then goes on exactly as after an
in-process update (publish the checkpoint, record the `updates` row).

A failure (a non-zero exit, a worker that raised, no output from any process for
`stall_timeout_s` (what a hung NCCL/gloo collective looks like), or `timeout_s`) becomes one
LaunchError line naming the launcher and the last lines the workers wrote. The workers are
killed, the train stage is not marked done, and `loop resume` trains the round again. If the
loop process itself dies (SIGKILL, OOM), each worker notices within seconds and exits, so a
resumed run never shares the GPU or its checkpoint folder with orphans.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from loop.checkpoints import TMP_PREFIX, scratch_path

if TYPE_CHECKING:
    from loop.config import LauncherConfig
    from loop.schema import UpdateResult
    from loop.updates import UpdateContext
    from loop.store import Store

PROTOCOL = 1
# A worker's progress line; matched anywhere in a line because launchers may prefix "[rank0]:".
PROGRESS_MARK = "@loop-progress "
# After a kill, how long the launcher gets to stop its workers before everything is SIGKILLed.
KILL_GRACE_S = 10.0
TAIL_LINES = 40


class LaunchError(RuntimeError):
    """The launched update failed; `str()` is one line naming the launcher and the cause."""


# ----- parent side ------------------------------------------------------------------------------


def launch_update(context: UpdateContext, launcher: LauncherConfig, *, store: Store, pm: Any,
                  log_path: Path, warn: Callable[[str], None] = lambda _: None) -> UpdateResult:
    """Run `context`'s update under `accelerate launch` and return rank 0's UpdateResult.

    Raises EmptyDataset when the updater found nothing to train on (as in process), and
    LaunchError for every failure of the launched processes."""
    from loop.schema import UpdateResult
    from loop.updates import EmptyDataset

    accelerate_config = read_accelerate_config(launcher.config_file)
    name = describe(launcher, accelerate_config)
    db = store_path(store)
    output_dir = Path(context.output_dir)
    work = scratch_path(output_dir.parent, f"round-{context.round_index}-launch")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    request = {
        "protocol": PROTOCOL,
        "db": str(db),
        "plugins_dir": plugins_dir_of(pm),
        "run_id": context.run_id,
        "round_index": context.round_index,
        "adapter_in": context.adapter_in,
        "model_path": context.model_path,
        "output_dir": str(output_dir),
        "seed": context.seed,
        "reward_names": list(context.reward_names),
        "config": context.config.model_dump(mode="json"),
        "result": str(work / "result.json"),
        # The workers stop themselves if this process dies without killing them (SIGKILL, OOM):
        # a resumed run must never share the GPU or the checkpoint folder with orphans.
        "parent": {"pid": os.getpid(), "started": process_start(os.getpid())},
    }
    request_path = work / "request.json"
    request_path.write_text(json.dumps(request, indent=1))
    command = accelerate_command(launcher, accelerate_config, request_path)
    try:
        returncode, tail = supervise(
            command, worker_env(accelerate_config), name=name, log_path=log_path,
            progress=context.progress, stall_timeout_s=launcher.stall_timeout_s,
            timeout_s=launcher.timeout_s)
        outcome = _read_json(work / "result.json")
        errors = sorted(work.glob("error-rank*.json"),
                        key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        failed = (_read_json(errors[0]) or {}) if errors else {}
        if failed.get("disk_full") or (returncode != 0 and mentions_disk_full(tail)):
            from loop.store import DiskFull

            # as in process (loop.checkpoints.checkpoint_space): the run stops with one line
            raise DiskFull(f"the checkpoint folder {output_dir}")
        if errors:
            raise LaunchError(f"{name}: rank {failed.get('rank', '?')} failed: "
                              f"{failed.get('error', 'unknown error')} (output: {log_path})")
        if returncode != 0:
            raise LaunchError(f"{name} exited with code {returncode}: {summarize(tail)} "
                              f"(output: {log_path})")
        if outcome is None:
            raise LaunchError(f"{name} exited without a result from rank 0: {summarize(tail)} "
                              f"(output: {log_path})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for scratch in output_dir.parent.glob(f"{TMP_PREFIX}round-{context.round_index}-rank*"):
            shutil.rmtree(scratch, ignore_errors=True)
    if outcome.get("status") == "empty":
        raise EmptyDataset(outcome.get("message", "nothing to train on"))
    metrics = outcome.get("metrics") or {}
    expected = launcher.num_processes or accelerate_config.get("num_processes")
    if isinstance(expected, int) and expected > 0 and metrics.get("processes") != expected:
        warn(f"round {context.round_index}: {name} ran {metrics.get('processes')} process(es), "
             f"not {expected}: check the accelerate config's distributed_type")
    adapter = Path(outcome["adapter_path"])
    if not adapter.is_dir() or not any(adapter.iterdir()):
        raise LaunchError(f"{name}: rank 0 reported {adapter} but wrote nothing there")
    return UpdateResult(adapter_path=str(adapter), metrics=metrics)


def read_accelerate_config(path: str | None) -> dict[str, Any]:
    """The accelerate config as a dict ({} for accelerate's own default config)."""
    if path is None:
        return {}
    from loop.config import read_yaml

    return read_yaml(Path(path), "accelerate config")


def describe(launcher: LauncherConfig, accelerate_config: dict[str, Any]) -> str:
    """How error lines name the launcher: `accelerate launch (FILE, N processes)`."""
    where = Path(launcher.config_file).name if launcher.config_file else "default config"
    count = launcher.num_processes or accelerate_config.get("num_processes")
    if not count:
        return f"accelerate launch ({where})"
    return f"accelerate launch ({where}, {count} process{'es' if count != 1 else ''})"


def accelerate_command(launcher: LauncherConfig, accelerate_config: dict[str, Any],
                       request_path: Path) -> list[str]:
    """The command line: accelerate from this interpreter, so the workers share loop's venv."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launcher.config_file:
        command += ["--config_file", launcher.config_file]
    if launcher.num_processes:
        command += ["--num_processes", str(launcher.num_processes)]
    distributed = str(accelerate_config.get("distributed_type", "NO")) != "NO"
    single_machine = int(accelerate_config.get("num_machines") or 1) <= 1
    if distributed and single_machine and accelerate_config.get("main_process_port") is None:
        # 0: accelerate picks a free port, so two runs on one machine never meet on 29500.
        command += ["--main_process_port", "0"]
    return command + ["-m", "loop.train_worker", str(request_path)]


def worker_env(accelerate_config: dict[str, Any]) -> dict[str, str]:
    """The workers' environment: ours, unbuffered, and with the GPUs hidden when the accelerate
    config says use_cpu (accelerate's torchrun path does not do that itself)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if accelerate_config.get("use_cpu") is True:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def store_path(store: Store) -> Path:
    """The file behind the store; the workers open it themselves."""
    for _, name, file in store.db.execute("pragma database_list").fetchall():
        if name == "main" and file:
            return Path(file)
    raise LaunchError("accelerate launch needs a store on disk (this one is in memory)")


def plugins_dir_of(pm: Any) -> str | None:
    """The --plugins-dir the parent loaded loose plugin files from, for the workers to load too."""
    if pm is None:
        return None
    for name, module in pm.list_name_plugin():
        if name.startswith("file:") and getattr(module, "__file__", None):
            return str(Path(module.__file__).resolve().parent)
    return None


def supervise(command: list[str], env: dict[str, str], *, name: str, log_path: Path,
              progress: Callable[..., None], stall_timeout_s: float,
              timeout_s: float | None) -> tuple[int, list[str]]:
    """Run `command`, relaying progress lines and logging every line to `log_path`.

    Returns (exit code, the last lines it wrote, stderr preferred). Raises LaunchError when it
    writes nothing for `stall_timeout_s` or runs past `timeout_s`; on that, on Ctrl-C, or on any
    error here, the launcher and every process under it are killed first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_output = started
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    tails = {"stdout": deque(maxlen=TAIL_LINES), "stderr": deque(maxlen=TAIL_LINES)}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        readers = [threading.Thread(target=_pump, args=(stream, label, lines), daemon=True)
                   for stream, label in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        open_streams, exited_at = 2, None
        try:
            while True:
                try:
                    label, line = lines.get(timeout=0.2)
                except queue.Empty:
                    label, line = "", None
                now = time.monotonic()
                if label and line is None:
                    open_streams -= 1
                elif line is not None:
                    last_output = now
                    log.write(line + "\n")
                    mark = line.find(PROGRESS_MARK)
                    if mark >= 0:
                        _relay(line[mark + len(PROGRESS_MARK):], progress)
                    elif line.strip():
                        tails[label].append(line)
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    # Workers in their own sessions may hold the pipes a moment longer.
                    if open_streams == 0 or now - exited_at > 5.0:
                        break
                    continue
                if timeout_s is not None and now - started > timeout_s:
                    _kill_tree(proc)
                    raise LaunchError(f"{name} ran past train.launcher.timeout_s={timeout_s:g} s "
                                      f"and was killed: {summarize(_tail(tails))} "
                                      f"(output: {log_path})")
                if now - last_output > stall_timeout_s:
                    _kill_tree(proc)
                    raise LaunchError(
                        f"{name} stalled: no output from any process for {stall_timeout_s:g} s "
                        f"(a hung NCCL/gloo collective?), killed: {summarize(_tail(tails))} "
                        f"(output: {log_path})")
        except BaseException:
            if proc.poll() is None:
                _kill_tree(proc)
            raise
        finally:
            log.write(f"[exit code {proc.poll()}]\n")
    return proc.returncode, _tail(tails)


def _pump(stream: IO[bytes], label: str, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put((label, raw.decode("utf-8", "replace").rstrip("\r\n")))
    stream.close()
    lines.put((label, None))


def _relay(payload: str, progress: Callable[..., None]) -> None:
    try:
        counts = json.loads(payload)
    except ValueError:
        return
    if isinstance(counts, dict):
        progress(**{k: v for k, v in counts.items()
                    if k in ("prompts", "tokens", "items", "total") and
                    (v is None or isinstance(v, int))})


def _tail(tails: dict[str, deque]) -> list[str]:
    return list(tails["stderr"] or tails["stdout"])


SEPARATOR = re.compile(r"^[\s=\-*_]*$")
EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]:\s*)?[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


def summarize(lines: list[str], keep: int = 3, width: int = 300) -> str:
    """The last few meaningful lines, joined into one: the last exception line a process printed
    (the real cause, before the launcher's own report), then the final lines."""
    useful = [line.strip() for line in lines if not SEPARATOR.match(line)]
    if not useful:
        return "no output"
    chosen = useful[-keep:]
    errors = [line for line in useful if EXCEPTION_LINE.match(line)]
    if errors and errors[-1] not in chosen:
        chosen = [errors[-1], "...", *chosen]
    return " | ".join(line[:width] for line in chosen)


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (Linux /proc; torchrun starts its workers in new sessions, so
    killing the launcher's process group alone would leave a hung worker running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher (torchrun then stops its workers), SIGKILL whatever is left."""
    tree = _descendants(proc.pid)
    _signal_all(proc.pid, tree, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_all(proc.pid, tree, signal.SIGKILL)
    proc.wait()


def _signal_all(leader: int, pids: list[int], sig: signal.Signals) -> None:
    try:
        os.killpg(leader, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot; Linux), so a reused pid is not mistaken for
    the process it replaced. None if there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# What Python prints for an OSError of a full disk or quota (ENOSPC, EDQUOT), and SQLite's
# message for a full database: how a worker's output says the disk was full when the worker
# could not even write its error file.
_DISK_FULL_TEXT = re.compile(r"\[Errno (28|122)\]|No space left on device|Disk quota exceeded|"
                             r"database or disk is full")


def mentions_disk_full(lines: list[str]) -> bool:
    """Whether the launched processes' last output lines report a full disk or quota."""
    return any(_DISK_FULL_TEXT.search(line) for line in lines)


def _caused_by_full_disk(exc: BaseException) -> bool:
    """`exc`, or an exception it was raised from or during, is a full disk or quota."""
    from loop.store import is_disk_full

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_disk_full(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----- child side -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """One worker process: rebuild the context, run the updater, rank 0 reports."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m loop.train_worker REQUEST.json (started by loop's accelerate "
              "launcher, not by hand)", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    folder = Path(argv[0]).parent
    parent = request.get("parent") or {}
    if parent.get("pid") and parent.get("started") is not None:
        watch_parent(parent["pid"], parent["started"])
    scratch = None
    try:
        from loop.allocator import keep_freed_memory
        from loop.updates import EmptyDataset

        keep_freed_memory()  # as the parent's run does (loop.runs.drive)
        context, updater = rebuild_context(request, rank)
        if rank != 0:
            scratch = Path(context.output_dir).parent
        try:
            result = updater.component.update(context)
        except EmptyDataset as exc:
            outcome = {"status": "empty", "message": str(exc)}
        else:
            outcome = {"status": "ok", "adapter_path": str(result.adapter_path),
                       "metrics": {**result.metrics, "processes": world}}
    except BaseException as exc:
        traceback.print_exc()
        try:
            _write_json(folder / f"error-rank{rank}.json",
                        {"rank": rank, "error": f"{type(exc).__name__}: {exc}",
                         "disk_full": _caused_by_full_disk(exc)})
        except OSError:  # no space even for this: the parent reads the traceback printed above
            pass
        return 1
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        _end_process_group()
    if rank == 0:
        _write_json(Path(request["result"]), outcome)
    return 0


def rebuild_context(request: dict[str, Any], rank: int):
    """(UpdateContext, chosen updater) for this worker, from the request and the store."""
    from loop.config import LoopConfig
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.resolve import resolve_components
    from loop.store import Store
    from loop.updates import update_context

    if request.get("protocol") != PROTOCOL:
        raise LaunchError(f"request protocol {request.get('protocol')!r}, expected {PROTOCOL}")
    config = LoopConfig.model_validate(request["config"])
    pm = get_plugin_manager(plugins_dir=request.get("plugins_dir"))
    updater = resolve_components(config, build_registry(pm)).updater
    output_dir = Path(request["output_dir"])
    if rank != 0:  # a private copy, thrown away: only rank 0's checkpoint is published
        output_dir = (scratch_path(output_dir.parent, f"round-{request['round_index']}-rank{rank}")
                      / output_dir.name)
    output_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(request["db"], pm)
    try:
        context = update_context(
            store, config, request["run_id"], request["round_index"], options=updater.options,
            output_dir=output_dir, reward_names=request["reward_names"],
            model_path=request.get("model_path") or "", adapter_in=request["adapter_in"],
            seed=request["seed"], progress=_progress_printer() if rank == 0 else _no_progress)
    finally:
        store.db.conn.close()
    return context, updater


def watch_parent(pid: int, started: int, every_s: float = 2.0) -> threading.Thread:
    """Exit this worker at once when the loop process `pid` (which started at `started`) is
    gone: nobody would read its result, and a resumed run would find it still training."""

    def watch() -> None:
        while process_start(pid) == started:
            time.sleep(every_s)
        print(f"loop.train_worker: the loop process {pid} is gone; stopping", file=sys.stderr,
              flush=True)
        os._exit(1)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _progress_printer() -> Callable[..., None]:
    def progress(**counts: Any) -> None:
        print(PROGRESS_MARK + json.dumps(counts), flush=True)

    return progress


def _no_progress(**_: Any) -> None:
    pass


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _end_process_group() -> None:
    """Tear down torch.distributed before exit: gloo aborts the interpreter ("terminate called
    without an active exception") when a process exits with its group still up."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
