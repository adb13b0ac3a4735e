"""Scale-out training: `train.launcher` runs the update under `accelerate launch`
(loop.train_worker). The slow tests run real DDP with 2 CPU processes over gloo on the tiny model;
the fast ones check the shipped accelerate configs, the config section, the CLI options and the
supervision of the launched processes (exit codes, stalls, timeouts, progress) with real
subprocesses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.config import ConfigError, LauncherConfig, build_config
from loop.train_worker import (
    PROGRESS_MARK,
    LaunchError,
    accelerate_command,
    read_accelerate_config,
    summarize,
    supervise,
)

REPO = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
GLOO = "configs/accelerate/cpu-2proc-gloo.yaml"

EXPECTED_TYPES = {
    "single-gpu.yaml": "NO",
    "multi-gpu-ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed-zero2.yaml": "DEEPSPEED",
    "deepspeed-zero3.yaml": "DEEPSPEED",
    "cpu-2proc-gloo.yaml": "MULTI_GPU",  # torchrun; the workers see no GPU (see the file)
}


# ----- shipped accelerate configs ----------------------------------------------------------------


def test_every_expected_accelerate_config_is_shipped():
    assert {p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")} == set(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_shipped_accelerate_config_loads_in_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_CONFIGS / name
    config = load_config_from_file(str(path))  # accelerate's own parser: unknown keys are errors
    assert config.distributed_type.value == EXPECTED_TYPES[name]
    if name.startswith("cpu-"):
        assert config.use_cpu and config.num_processes == 2 and config.mixed_precision == "no"
    else:
        assert not config.use_cpu and config.mixed_precision == "bf16"
    if name.startswith("deepspeed-zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
    # and loop accepts it as the launcher's config file
    cfg = build_config("arithmetic", None, environ={}, task_dirs=[REPO / "tasks"],
                       sets=["train.launcher.name=accelerate",
                             f"train.launcher.config_file=configs/accelerate/{name}"])
    assert cfg.train.launcher.config_file == str(path)


# ----- the config section -----------------------------------------------------------------------


def test_launcher_defaults_to_in_process():
    cfg = build_config("arithmetic", None, environ={}, task_dirs=[REPO / "tasks"])
    assert cfg.train.launcher.name == "inprocess" and cfg.train.launcher.config_file is None


def test_launcher_config_file_is_found_from_anywhere_and_stored_absolute(tmp_path):
    # the autouse fixture runs each test in tmp_path: the path resolves against the checkout
    assert Path.cwd() == tmp_path
    launcher = LauncherConfig.model_validate({"name": "accelerate", "config_file": GLOO})
    assert launcher.config_file == str(REPO / GLOO)
    local = tmp_path / "mine.yaml"
    local.write_text("distributed_type: MULTI_GPU\nnum_processes: 4\n")
    assert LauncherConfig.model_validate(
        {"name": "accelerate", "config_file": "mine.yaml"}).config_file == str(local.resolve())
    assert LauncherConfig.model_validate("accelerate").name == "accelerate"


@pytest.mark.parametrize("sets, field, words", [
    (["train.launcher.name=accelerate", "train.launcher.config_file=missing.yaml"],
     "train.launcher.config_file", "missing.yaml: no such file"),
    (["train.launcher.name=accelerate", "train.launcher.config_file=configs/default.yaml"],
     "train.launcher.config_file", "not an accelerate config"),
    ([f"train.launcher.config_file={GLOO}"], "train.launcher", "need name: accelerate"),
    (["train.launcher=slurm"], "train.launcher.name", "'inprocess' or 'accelerate'"),
    (["train.launcher.name=accelerate", "train.launcher.num_processes=0"],
     "train.launcher.num_processes", "greater than or equal to 1"),
    (["train.launcher.name=accelerate", "train.launcher.stall_timeout_s=0"],
     "train.launcher.stall_timeout_s", "greater than 0"),
])
def test_bad_launcher_settings_are_one_line_errors(sets, field, words):
    with pytest.raises(ConfigError) as info:
        build_config("arithmetic", None, environ={}, task_dirs=[REPO / "tasks"], sets=sets)
    message = str(info.value)
    assert "\n" not in message and f"config error: {field}:" in message and words in message


@pytest.mark.parametrize("args, words", [
    (["--accelerate-config", "missing.yaml"], "train.launcher.config_file: Value error, "
                                              "missing.yaml: no such file"),
    (["--launcher", "inprocess", "--accelerate-config", GLOO], "--accelerate-config needs "
                                                               "--launcher accelerate"),
    (["--launcher", "slurm"], "train.launcher.name"),
])
def test_cli_launcher_options_fail_before_anything_is_written(tmp_path, args, words):
    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, ["run", "arithmetic", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())
    assert not db.exists()


def test_cli_launcher_options_set_the_config(monkeypatch):
    seen = {}

    def fake_resolve(task, config, flags, sets, plugins_dir):
        seen["cfg"] = build_config(task, config, flags=flags, sets=sets, environ={},
                                   task_dirs=[REPO / "tasks"])
        raise SystemExit(0)

    import loop.cli.run

    monkeypatch.setattr(loop.cli.run, "resolve_task", fake_resolve)
    CliRunner().invoke(app, ["run", "arithmetic", "--launcher", "accelerate",
                             "--accelerate-config", GLOO])
    assert seen["cfg"].train.launcher.name == "accelerate"
    assert seen["cfg"].train.launcher.config_file == str(REPO / GLOO)
    # --accelerate-config alone implies the accelerate launcher
    CliRunner().invoke(app, ["run", "arithmetic", "--accelerate-config", GLOO])
    assert seen["cfg"].train.launcher.name == "accelerate"
    # --launcher inprocess replaces a launcher that the config file sets
    config = REPO / "configs" / "gpu-hf.yaml"
    assert build_config("jsonl", config, environ={}).train.launcher.name == "accelerate"
    CliRunner().invoke(app, ["run", "jsonl", "--config", str(config), "--launcher", "inprocess"])
    assert seen["cfg"].train.launcher.name == "inprocess"
    assert seen["cfg"].train.launcher.config_file is None


# ----- the launch command and the supervision of the launched processes ------------------------


def test_accelerate_command():
    gloo = LauncherConfig(name="accelerate", config_file=GLOO)
    command = accelerate_command(gloo, read_accelerate_config(gloo.config_file), Path("r.json"))
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:5] == ["--config_file", str(REPO / GLOO)]
    assert command[-3:] == ["-m", "loop.train_worker", "r.json"]
    assert "--main_process_port" in command  # a free port: two runs on one machine never collide
    single = LauncherConfig(name="accelerate",
                            config_file="configs/accelerate/single-gpu.yaml", num_processes=1)
    command = accelerate_command(single, read_accelerate_config(single.config_file), Path("r"))
    assert "--main_process_port" not in command  # no process group to meet on
    assert command[command.index("--num_processes") + 1] == "1"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _supervise(command, tmp_path, **kwargs):
    events = []
    settings = dict(name="accelerate launch (test)", log_path=tmp_path / "train.log",
                    progress=lambda **counts: events.append(counts), stall_timeout_s=60.0,
                    timeout_s=None)
    settings.update(kwargs)
    code, tail = supervise(command, dict(os.environ), **settings)
    return code, tail, events


def test_supervise_reports_exit_code_and_the_last_exception_line(tmp_path):
    code, tail, _ = _supervise(_python(
        "import sys\n"
        "print('loading', flush=True)\n"
        "print('Traceback (most recent call last):', file=sys.stderr)\n"
        "print('RuntimeError: NCCL error: unhandled system error', file=sys.stderr)\n"
        "for i in range(5): print(f'launcher report {i}', file=sys.stderr)\n"
        "print('=' * 40, file=sys.stderr)\n"
        "sys.exit(3)\n"), tmp_path)
    assert code == 3
    line = summarize(tail)
    assert line.startswith("RuntimeError: NCCL error: unhandled system error | ... | ")
    assert line.endswith("launcher report 4") and "=" * 10 not in line
    log = (tmp_path / "train.log").read_text()
    assert "loading" in log and "[exit code 3]" in log


def test_supervise_relays_progress_lines(tmp_path):
    code, tail, events = _supervise(_python(
        f"print('[rank0]:{PROGRESS_MARK}' + '{{\"total\": 3}}')\n"
        f"for _ in range(3): print('{PROGRESS_MARK}' + '{{\"items\": 1}}')\n"
        f"print('{PROGRESS_MARK}not json')\n"), tmp_path)
    assert code == 0 and tail == []
    assert events == [{"total": 3}, {"items": 1}, {"items": 1}, {"items": 1}]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def test_a_silent_hang_is_killed_with_every_process_under_it(tmp_path):
    # Like torchrun: the worker runs in its own session, so killing the launcher's process group
    # alone would leave it running.
    pid_file = tmp_path / "worker.pid"
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        _supervise(_python(
            "import subprocess, sys, time\n"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
            " start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
            "print('worker started', flush=True)\n"
            "time.sleep(300)\n"), tmp_path, stall_timeout_s=2.0)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("accelerate launch (test) stalled: no output from any process "
                              "for 2 s")
    assert "worker started" in message
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _state(worker) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(worker) in (None, "Z")  # gone (or a zombie waiting for init to reap it)


def test_timeout_kills_a_process_that_keeps_talking(tmp_path):
    with pytest.raises(LaunchError, match=r"ran past train.launcher.timeout_s=1 s and was "
                                          r"killed: tick"):
        _supervise(_python(
            "import time\n"
            "while True:\n"
            "    print('tick', flush=True); time.sleep(0.1)\n"), tmp_path, timeout_s=1.0)


def test_a_worker_stops_when_the_loop_process_is_gone(tmp_path):
    """If the loop process dies without killing its workers (SIGKILL, OOM killer), each worker
    exits by itself: a resumed run must not find orphans training into its folders."""
    import subprocess

    from loop.train_worker import process_start

    loop_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from loop.train_worker import watch_parent\n"
        f"watch_parent({loop_process.pid}, {process_start(loop_process.pid)}, every_s=0.2)\n"
        "time.sleep(60)\n")], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert worker.poll() is None  # still watching: its loop process is alive
        loop_process.kill()
        loop_process.wait()
        assert worker.wait(timeout=10) == 1
        assert f"the loop process {loop_process.pid} is gone; stopping" in worker.stderr.read()
    finally:
        for proc in (loop_process, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_worker_without_a_request_explains_itself():
    from loop.train_worker import main

    assert main([]) == 2


# ----- real DDP: 2 CPU processes over gloo on the tiny model ------------------------------------

TINY_SETTINGS = [
    "--set", "select.prompts_per_round=48", "--set", "generate.n=4",
    "--set", "generate.temperature=1.0", "--set", "generate.max_new_tokens=6",
    "--set", "evaluate.problems=60", "--set", "evaluate.max_new_tokens=6",
    "--set", "train.learning_rate=1e-3", "--set", "train.epochs=2",
    "--set", "train.lora.r=8", "--set", "train.lora.alpha=16", "--set", "train.max_length=32",
]

# Breaks the second worker only (an asymmetric failure: rank 0 is left waiting in DDP's first
# collective, so the launcher has to notice and stop it), and only while the marker file exists.
INJECT = '''
import os
from pathlib import Path

if os.environ.get("RANK") == "1" and Path(os.environ["INJECT_MARKER"]).exists():
    raise RuntimeError("injected failure on rank 1")
'''


@pytest.fixture(scope="module")
def launched(tmp_path_factory, weak_adder_dir):
    """One `loop run --rounds 1 --launcher accelerate` with the 2-process gloo config whose
    first launch fails on rank 1, then `loop resume` of it."""
    from tiny_model import tiny_task_yaml

    folder = tmp_path_factory.mktemp("launched")
    task = folder / "tiny-add.yaml"
    task.write_text(tiny_task_yaml(train_size=400, eval_size=100))
    plugins = folder / "plugins"
    plugins.mkdir()
    (plugins / "inject.py").write_text(INJECT)
    marker = folder / "fail-once"
    marker.write_text("")
    db = folder / "store" / "loop.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_LOAD_PLUGINS", "hf,math,trl,code")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("INJECT_MARKER", str(marker))
        mp.delenv("LOOP_PLUGINS_DIR", raising=False)
        started = time.perf_counter()
        # A process of its own, as a user runs it: the run lock goes with it when it exits.
        failed = subprocess.run([
            sys.executable, "-m", "loop.cli",
            "run", str(task), "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
            "--model", str(weak_adder_dir), "--rounds", "1", "--name", "ddp", "--db", str(db),
            "--plugins-dir", str(plugins), "--launcher", "accelerate",
            "--accelerate-config", GLOO, *TINY_SETTINGS], capture_output=True, text=True,
            timeout=600, cwd=folder)
        failed_s = time.perf_counter() - started
        import sqlite_utils

        after_failure = {
            "status": next(sqlite_utils.Database(db)["runs"].rows)["status"],
            "updates": sqlite_utils.Database(db)["updates"].count,
        }
        marker.unlink()
        started = time.perf_counter()
        resumed = CliRunner().invoke(app, ["resume", "ddp", "--db", str(db),
                                           "--plugins-dir", str(plugins)])
        resumed_s = time.perf_counter() - started
    print(f"\nfailed launch run: {failed_s:.1f} s; resume with a 2-process update: "
          f"{resumed_s:.1f} s")
    return {"failed": failed, "after_failure": after_failure, "resumed": resumed, "db": db,
            "folder": folder}


def _run_row(db: Path) -> dict:
    import sqlite_utils

    return next(sqlite_utils.Database(db)["runs"].rows)


@pytest.mark.slow
def test_failed_launch_is_one_line_naming_the_launcher_and_the_run_resumes(launched):
    failed = launched["failed"]
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr.count("error:") == 1
    error = " ".join(failed.stderr.split("error:", 1)[1].split())
    assert "accelerate launch (cpu-2proc-gloo.yaml, 2 processes): rank 1 failed: PluginError: " \
           "plugin file" in error
    assert "RuntimeError: injected failure on rank 1" in error
    assert launched["after_failure"] == {"status": "failed", "updates": 0}

    resumed = launched["resumed"]
    assert resumed.exit_code == 0, resumed.output
    run = _run_row(launched["db"])
    assert run["status"] == "finished"
    import sqlite_utils

    updates = list(sqlite_utils.Database(launched["db"])["updates"].rows)
    assert len(updates) == 1 and updates[0]["round_idx"] == 1
    assert updates[0]["dataset_size"] > 0 and len(updates[0]["adapter_sha256"]) == 64
    # resume launched the stored launcher: the update ran in 2 processes
    assert json.loads(updates[0]["metrics_json"])["processes"] == 2
    stored = json.loads(run["config_json"])["train"]["launcher"]
    assert stored["name"] == "accelerate" and stored["config_file"] == str(REPO / GLOO)
    run_dir = Path(run["run_dir"])
    assert not list(run_dir.glob(".tmp-*"))  # no request folder, no rank scratch left
    log = (run_dir / "round-1" / "train.log").read_text()
    assert log.count("-m loop.train_worker") == 2  # the failed launch and the resumed one
    assert "injected failure on rank 1" in log and PROGRESS_MARK in log


@pytest.mark.slow
def test_two_process_adapter_loads_and_matches_the_single_process_one(launched, tmp_path,
                                                                       weak_adder_dir):
    """The DDP adapter has every tensor (name and shape) of an in-process update on the same
    round's samples, loads with PEFT, and took half the optimizer steps (2 processes)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from loop.resolve import resolve_components
    from loop.config import LoopConfig
    from loop.plugin_manager import build_registry, get_plugin_manager
    from loop.updates import UpdateContext, load_samples
    from loop.store import Store

    db = launched["db"]
    run = _run_row(db)
    store = Store.open(db)
    update = store.updates(run["id"])[0]
    launched_adapter = Path(update["adapter_path"])
    launched_metrics = json.loads(update["metrics_json"])

    config = LoopConfig.model_validate_json(run["config_json"])
    updater = resolve_components(config, build_registry(get_plugin_manager())).updater
    samples = load_samples(store, run["id"], 1, ["binary"])
    single = tmp_path / "single"
    single.mkdir()
    result = updater.component.update(UpdateContext(
        run_id=run["id"], round_index=1, samples=samples, base_model=config.model,
        adapter_in=None, output_dir=single, config=config, options=updater.options, seed=0,
        progress=lambda **_: None, reward_names=["binary"]))
    assert result.metrics.get("processes") is None  # in process: nothing added

    two = load_file(str(launched_adapter / "adapter_model.safetensors"))
    one = load_file(str(single / "adapter_model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in two.items()}
    assert shapes == {k: tuple(v.shape) for k, v in one.items()}
    lora_b = [k for k in two if "lora_B" in k]
    assert lora_b and all(two[k].abs().sum() > 0 for k in lora_b)  # trained (PEFT starts B at 0)
    assert json.loads((launched_adapter / "adapter_config.json").read_text()) == \
        json.loads((single / "adapter_config.json").read_text())

    rows = result.metrics["dataset_size"]
    assert launched_metrics["dataset_size"] == rows
    epochs, batch = config.train.epochs, config.train.batch_size
    assert result.metrics["steps"] == epochs * math.ceil(rows / batch)
    assert launched_metrics["steps"] == epochs * math.ceil(rows / (2 * batch))

    base = AutoModelForCausalLM.from_pretrained(weak_adder_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(launched_adapter))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(two)
    for name, tensor in two.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key], tensor)


HANG = '''
import os, time
from pathlib import Path

if os.environ.get("RANK") is not None:
    Path(os.environ["PID_DIR"], "rank" + os.environ["RANK"]).write_text(str(os.getpid()))
    if os.environ["RANK"] == "1":
        time.sleep(600)  # rank 0 waits for it in DDP's first collective, printing nothing
'''


@pytest.mark.slow
def test_a_hung_worker_is_detected_and_every_worker_killed(launched, tmp_path, monkeypatch):
    """A silent hang of the real 2-process launch (what a stuck NCCL/gloo collective looks
    like) ends in a one-line LaunchError after stall_timeout_s, and no worker outlives it."""
    from loop.config import LoopConfig
    from loop.plugin_manager import get_plugin_manager
    from loop.updates import UpdateContext, load_samples
    from loop.store import Store
    from loop.train_worker import launch_update

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hang.py").write_text(HANG)
    monkeypatch.setenv("PID_DIR", str(tmp_path))
    monkeypatch.delenv("RANK", raising=False)
    db = launched["db"]
    run = _run_row(db)
    store = Store.open(db)
    config = LoopConfig.model_validate_json(run["config_json"])
    output_dir = tmp_path / "run" / "adapter"
    output_dir.mkdir(parents=True)
    context = UpdateContext(
        run_id=run["id"], round_index=1, samples=load_samples(store, run["id"], 1, ["binary"]),
        base_model=config.model, adapter_in=None, output_dir=output_dir, config=config,
        options=None, seed=0, progress=lambda **_: None, reward_names=["binary"])
    launcher = config.train.launcher.model_copy(update={"stall_timeout_s": 15.0})
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch_update(context, launcher, store=store, pm=get_plugin_manager(plugins_dir=plugins),
                      log_path=tmp_path / "train.log")
    print(f"\nhang detected and killed after {time.monotonic() - started:.1f} s")
    assert str(info.value).startswith("accelerate launch (cpu-2proc-gloo.yaml, 2 processes) "
                                      "stalled: no output from any process for 15 s")
    assert "\n" not in str(info.value)
    pids = [int((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 5
    while any(_state(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [_state(p) in (None, "Z") for p in pids] == [True, True]
    # the launch's own folders are gone (a killed trainer's scratch goes at the next resume)
    assert not list((tmp_path / "run").glob(".tmp-round-1-*"))


# ----- the parent <-> worker protocol through a real single-process `accelerate launch` --------

UPDATERS = '''
from pathlib import Path

import loop
from loop.updates import EmptyDataset


class Writes(loop.Updater):
    name = "writes"

    def update(self, context):
        context.progress(total=2)
        context.progress(items=2)
        (Path(context.output_dir) / "adapter_model.bin").write_bytes(b"weights")
        return loop.UpdateResult(adapter_path=str(context.output_dir),
                                 metrics={"dataset_size": len(context.samples),
                                          "seed": context.seed})


class Empty(loop.Updater):
    name = "empty"

    def update(self, context):
        raise EmptyDataset(f"none of the {len(context.samples)} attempts passed")


class Broken(loop.Updater):
    name = "broken"

    def update(self, context):
        raise ValueError("bad batch")


@loop.hookimpl
def register_updaters(register):
    for updater in (Writes(), Empty(), Broken()):
        register(updater)
'''

NO_DISTRIBUTION = """compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: 'no'
num_machines: 1
num_processes: 1
use_cpu: true
"""


@pytest.fixture
def launch(tmp_path, store):
    from loop.plugin_manager import get_plugin_manager
    from loop.updates import UpdateContext
    from loop.train_worker import launch_update

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "updaters.py").write_text(UPDATERS)
    (tmp_path / "no-dist.yaml").write_text(NO_DISTRIBUTION)
    run_dir = tmp_path / "run"
    store.create_run(run_id="r1", name="r1", task="arithmetic", model="m", config={}, seed=0,
                     rounds_planned=1, versions={}, git_sha=None, run_dir=str(run_dir))

    def run(method: str):
        config = build_config("arithmetic", None, environ={}, task_dirs=[REPO / "tasks"], sets=[
            f"train.method={method}", "train.launcher.name=accelerate",
            f"train.launcher.config_file={tmp_path / 'no-dist.yaml'}"])
        output_dir = run_dir / ".tmp-round-1-adapter"
        output_dir.mkdir(parents=True, exist_ok=True)
        events, warnings = [], []
        context = UpdateContext(
            run_id="r1", round_index=1, samples=[], base_model="m", adapter_in=None,
            output_dir=output_dir, config=config, options=None, seed=123,
            progress=lambda **counts: events.append(counts), reward_names=[])
        result = launch_update(context, config.train.launcher, store=store,
                               pm=get_plugin_manager(plugins_dir=plugins),
                               log_path=run_dir / "round-1" / "train.log", warn=warnings.append)
        return result, events, warnings, run_dir

    return run


@pytest.mark.slow
def test_launched_update_returns_rank_0_result(launch):
    result, events, warnings, run_dir = launch("writes")
    assert Path(result.adapter_path) == run_dir / ".tmp-round-1-adapter"
    assert (Path(result.adapter_path) / "adapter_model.bin").read_bytes() == b"weights"
    assert result.metrics == {"dataset_size": 0, "seed": 123, "processes": 1}
    assert events == [{"total": 2}, {"items": 2}] and warnings == []
    assert sorted(p.name for p in run_dir.iterdir()) == [".tmp-round-1-adapter", "round-1"]


@pytest.mark.slow
def test_launched_update_with_nothing_to_train_on_is_empty_dataset(launch):
    from loop.updates import EmptyDataset

    with pytest.raises(EmptyDataset, match="none of the 0 attempts passed"):
        launch("empty")


@pytest.mark.slow
def test_launched_update_that_raises_is_one_line(launch):
    with pytest.raises(LaunchError) as info:
        launch("broken")
    assert str(info.value).startswith("accelerate launch (no-dist.yaml, 1 process): rank 0 "
                                      "failed: ValueError: bad batch (output: ")
