"""LOOP_TRACE_PLUGINS=1: every hook implementation call, every registration and every component
call through loop.guarded.call_plugin prints one `loop-trace:` line to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

import loop
from loop.resolve import Chosen
from loop.guarded import PluginFailure, call_plugin
from loop.plugin_manager import TracingPluginManager, build_registry, get_plugin_manager
from loop.schema import Attempt, Task, Verdict
from loop.rounds import RoundEngine
from loop.guarded import safe_verify, safe_verify_batch
from loop.store import open_db

PLUGIN = '''
import loop
from loop.schema import Task, TaskSet, Verdict


class OneTask(loop.TaskSource):
    name = "one_task"
    default_verifiers = ["always_pass"]

    def load(self, options, seed):
        def task(split, name):
            return Task(source="one_task", split=split, reference="4", metadata={"name": name},
                        prompt=[{"role": "user", "content": "2+2=" + split}])
        return TaskSet(train=[task("train", "one")], eval=[task("eval", "two")])


class AlwaysPass(loop.Verifier):
    name = "always_pass"

    def verify(self, task, attempt):
        return Verdict(passed=True, score=1.0, feedback="fine")


@loop.hookimpl
def register_tasks(register):
    register(OneTask())


@loop.hookimpl
def register_verifiers(register):
    register(AlwaysPass())


@loop.hookimpl
def prepare_db(db):
    db["traced_table"].create({"id": int}, pk="id", if_not_exists=True)


@loop.hookimpl
def round_started(run_id, round_index):
    return f"saw round {round_index}"


@loop.hookimpl
def round_finished(round_index):
    raise RuntimeError("observer bug")
'''


@pytest.fixture
def plugin_dir(tmp_path):
    folder = tmp_path / "traced"
    folder.mkdir()
    (folder / "traced.py").write_text(PLUGIN)
    return folder


def trace_lines(text: str) -> list[str]:
    return [line[len("loop-trace: "):] for line in text.splitlines()
            if line.startswith("loop-trace: ")]


def one_item():
    task = Task(source="t", split="train", prompt=[{"role": "user", "content": "2+2="}],
                reference="4")
    attempt = Attempt(id="a1", run_id="r", round_index=1, task_id=task.id, purpose="train",
                      sample_index=0, messages=[], completion="4")
    return task, attempt


def test_every_hook_implementation_call_is_traced(monkeypatch, capsys, plugin_dir, tmp_path):
    monkeypatch.setenv("LOOP_TRACE_PLUGINS", "1")
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "")
    pm = get_plugin_manager(plugins_dir=plugin_dir)
    assert isinstance(pm, TracingPluginManager)

    registry = build_registry(pm)  # registry hooks: called implementation by implementation
    assert registry.names("tasks") == ["one_task"]
    lines = trace_lines(capsys.readouterr().err)
    assert "hook register_tasks [file:traced.py] registered task 'one_task': " \
           "_loop_plugins_dir.traced.OneTask" in lines
    assert "hook register_verifiers [loop.builtins] registered verifier 'exact_match': " \
           "loop.builtin_plugins.ExactMatchVerifier" in lines
    calls = [line for line in lines if line.startswith("hook register_verifiers [")
             and "(register=<function register>)" in line]
    assert {line.split("]")[0] for line in calls} == {"hook register_verifiers [loop.builtins",
                                                      "hook register_verifiers [file:traced.py"}
    assert all(line.endswith("-> None") for line in calls)

    open_db(tmp_path / "t.db", pm)  # prepare_db: called through pm.hook
    lines = trace_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("hook prepare_db [file:traced.py] (db=")
    assert lines[0].endswith("-> None")

    engine = RoundEngine(store=None, config=None, components=None, run_id="run-1",
                         run_dir=tmp_path, pm=pm)  # observers: the engine's own path
    engine._notify("round_started", run_id="run-1", round_index=2, config=None)
    engine._notify("round_finished", run_id="run-1", round_index=2, summary={})
    lines = trace_lines(capsys.readouterr().err)
    assert lines[0].startswith("hook round_started [file:traced.py] (run_id='run-1', "
                               "round_index=2) ")
    assert lines[0].endswith("-> 'saw round 2'")
    assert lines[1].startswith("hook round_finished [file:traced.py] (round_index=2) ")
    assert lines[1].endswith("raised RuntimeError: 'observer bug'")


def test_component_calls_are_traced_one_line_each(monkeypatch, capsys):
    monkeypatch.setenv("LOOP_TRACE_PLUGINS", "1")
    task, attempt = one_item()

    class Judge(loop.Verifier):
        name = "judge_me"

        def verify(self, task, attempt):
            return Verdict(passed=attempt.completion == task.reference, score=1.0)

    class Broken(loop.Verifier):
        name = "broken"

        def verify_batch(self, items):
            raise RuntimeError("no sandbox")

    safe_verify(Chosen("judge_me", Judge(), None, "p"), task, attempt, 5.0)
    safe_verify_batch(Chosen("broken", Broken(), None, "p"), [(task, attempt)] * 3, 5.0)

    def shaped(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    call_plugin(shaped, None, prompts=[[]] * 4, completions=[[]] * 4)
    lines = trace_lines(capsys.readouterr().err)
    assert len(lines) == 3
    assert lines[0].startswith("call verifier 'judge_me'.verify ")
    assert lines[0].endswith("s -> Verdict(passed=True, score=1.0)")
    assert lines[1].startswith("call verifier 'broken'.verify_batch ")
    assert lines[1].endswith(f"s failed: raised RuntimeError: no sandbox (at {__file__}:"
                             f"{Broken.verify_batch.__code__.co_firstlineno + 1} in verify_batch)")
    assert lines[2].startswith(f"call {__name__}.test_component_calls_are_traced_one_line_each."
                               "<locals>.shaped ")
    assert lines[2].endswith("s -> 4 items [0.5, 0.5, 0.5, ...]")
    seconds = float(lines[0].split()[3].rstrip("s"))
    assert 0 <= seconds < 5


def test_a_timeout_is_traced_with_its_time(monkeypatch, capsys):
    monkeypatch.setenv("LOOP_TRACE_PLUGINS", "1")
    release = threading.Event()
    with pytest.raises(PluginFailure):
        call_plugin(lambda: release.wait(10), 0.2)
    release.set()
    (line,) = trace_lines(capsys.readouterr().err)
    assert line.endswith("failed: did not return within 0.2 s")
    assert float(line.split()[2].rstrip("s")) >= 0.2


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_off_means_no_trace_and_plain_plugin_manager(monkeypatch, capsys, plugin_dir, value):
    if value is None:
        monkeypatch.delenv("LOOP_TRACE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("LOOP_TRACE_PLUGINS", value)
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "")
    pm = get_plugin_manager(plugins_dir=plugin_dir)
    build_registry(pm)
    safe_verify(Chosen("exact_match", build_registry(pm).get("verifiers", "exact_match"), None,
                       "loop.builtins"), *one_item())
    assert not isinstance(pm, TracingPluginManager)
    assert "loop-trace" not in capsys.readouterr().err


def test_cli_traces_to_stderr_and_keeps_stdout_clean(plugin_dir, tmp_path):
    """`loop verify` in a fresh process: hooks and the verifier call are traced on stderr while
    the JSON on stdout still parses."""
    env = {**os.environ, "LOOP_TRACE_PLUGINS": "1", "LOOP_PLUGINS_DIR": str(plugin_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "loop.cli", "verify", "one_task", "one", "-", "--json"],
        input="4", capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdicts"]["always_pass"]["passed"] is True
    lines = trace_lines(result.stderr)
    assert "hook register_tasks [file:traced.py] registered task 'one_task': " \
           "_loop_plugins_dir.traced.OneTask" in lines
    verify_calls = [line for line in lines
                    if line.startswith("call verifier 'always_pass'.verify ")]
    assert len(verify_calls) == 1 and "feedback='fine'" in verify_calls[0]
