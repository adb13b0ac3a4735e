"""Plugin loading (entry points, LOOP_LOAD_PLUGINS, --plugins-dir), the registry and its errors,
and each hook's contract."""

from __future__ import annotations

import json
import sys

import pytest
import typer
from typer.testing import CliRunner

import loop
from loop import hookspecs
from loop.cli import app
from loop.plugin_manager import PluginError, build_registry, get_plugin_manager
from loop.schema import Verdict

ALWAYS_PASS = '''
import loop
from loop.schema import Verdict

class AlwaysPass(loop.Verifier):
    name = "always_pass"
    def verify(self, task, attempt):
        return Verdict(passed=True, score=1.0)

@loop.hookimpl
def register_verifiers(register):
    register(AlwaysPass())
'''


def test_first_party_plugins_load_from_entry_points(registry):
    assert {"arithmetic", "jsonl", "humaneval", "code-jsonl", "code-easy"} <= \
        set(registry.names("tasks"))
    assert "hf" in registry.names("backends")
    assert {"math", "exact_match", "python_tests"} <= set(registry.names("verifiers"))
    assert registry.names("rewards") == ["binary", "tests_passed"]
    assert registry.plugin_of("verifiers", "python_tests") == "code"
    assert registry.names("updaters") == ["dpo", "grpo", "kto", "nft", "noop", "redi", "sft"]
    assert registry.plugin_of("updaters", "sft") == "trl"
    assert registry.plugin_of("verifiers", "exact_match") == "loop.builtins"


def test_load_plugins_env_empty_loads_only_builtins(monkeypatch):
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "")
    registry = build_registry(get_plugin_manager())
    assert registry.names("verifiers") == ["exact_match"]
    assert registry.names("backends") == ["scripted"]  # the built-in test double


def test_load_plugins_env_selects_by_name(monkeypatch):
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "math")
    registry = build_registry(get_plugin_manager())
    assert "math" in registry.names("verifiers") and registry.names("updaters") == ["noop"]


def test_plugins_dir_loads_loose_files_without_touching_sys_path(tmp_path):
    folder = tmp_path / "myplugins"
    folder.mkdir()
    (folder / "always_pass.py").write_text(ALWAYS_PASS)
    (folder / "json.py").write_text("# a file named like a stdlib module must not shadow it\n")
    before = list(sys.path)
    registry = build_registry(get_plugin_manager(plugins_dir=folder))
    assert registry.plugin_of("verifiers", "always_pass") == "file:always_pass.py"
    assert sys.path == before
    assert json.dumps({"a": 1}) == '{"a": 1}'  # the real json module


def test_plugins_dir_via_cli_lists_plugin(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "always_pass.py").write_text(ALWAYS_PASS)
    result = CliRunner().invoke(app, ["plugins", "--json", "--plugins-dir", str(folder)])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["file:always_pass.py"]["verifiers"] == ["always_pass"]
    assert rows["file:always_pass.py"]["hooks"] == ["register_verifiers"]


def test_broken_plugin_file_is_one_line_error(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"plugin file .*broken.py: RuntimeError: boom"):
        get_plugin_manager(plugins_dir=folder)
    result = CliRunner().invoke(app, ["plugins", "--plugins-dir", str(folder)])
    assert result.exit_code == 2 and "broken.py" in result.output
    assert "Traceback" not in result.output


def test_missing_plugins_dir():
    with pytest.raises(PluginError, match="no such folder"):
        get_plugin_manager(plugins_dir="/nonexistent/plugins")


def test_duplicate_names_are_an_error_naming_both_plugins(pm):
    class Again:
        @loop.hookimpl
        def register_verifiers(self, register):
            class Math(loop.Verifier):
                name = "math"

            register(Math())

    pm.register(Again(), name="again")
    with pytest.raises(PluginError) as info:
        build_registry(pm)
    assert "duplicate verifier name 'math'" in str(info.value)
    assert "'math'" in str(info.value) and "'again'" in str(info.value)


def test_plugin_raising_at_registration_is_named(pm):
    class Bad:
        @loop.hookimpl
        def register_tasks(self, register):
            raise KeyError("oops")

    pm.register(Bad(), name="bad")
    with pytest.raises(PluginError, match="plugin 'bad' failed in register_tasks"):
        build_registry(pm)


def test_unnamed_component_rejected(pm):
    class Anon:
        @loop.hookimpl
        def register_critics(self, register):
            register(loop.Critic())

    pm.register(Anon(), name="anon")
    with pytest.raises(PluginError, match="without a name"):
        build_registry(pm)


def test_register_each_kind_with_a_third_party_plugin(pm):
    """Every registry hook works for a third-party plugin (and a reward may be a plain function
    named by __name__ or explicitly)."""

    class Source(loop.TaskSource):
        name = "mytasks"

    class Back(loop.Backend):
        name = "myback"

    class Crit(loop.Critic):
        name = "mycritic"

    class Upd(loop.Updater):
        name = "myupdater"

    def my_reward(prompts, completions, **kwargs):
        return [1.0 for _ in completions]

    class Third:
        @loop.hookimpl
        def register_tasks(self, register):
            register(Source())

        @loop.hookimpl
        def register_backends(self, register):
            register(Back())

        @loop.hookimpl
        def register_critics(self, register):
            register(Crit())

        @loop.hookimpl
        def register_rewards(self, register):
            register(my_reward)
            register(my_reward, name="renamed")

        @loop.hookimpl
        def register_updaters(self, register):
            register(Upd())

    pm.register(Third(), name="third")
    registry = build_registry(pm)
    assert registry.plugin_of("tasks", "mytasks") == "third"
    assert registry.plugin_of("backends", "myback") == "third"
    assert registry.plugin_of("critics", "mycritic") == "third"
    assert registry.plugin_of("updaters", "myupdater") == "third"
    assert {"my_reward", "renamed"} <= set(registry.names("rewards"))


def test_register_commands_hook_adds_a_cli_command(monkeypatch):
    import loop.cli
    import loop.cli.common

    class Cmd:
        @loop.hookimpl
        def register_commands(self, app):
            @app.command("hello-plugin")
            def hello():
                typer.echo("hello from a plugin")

    pm = get_plugin_manager()
    pm.register(Cmd(), name="cmd")
    monkeypatch.setattr(loop.cli.common, "_PM", pm)
    fresh = typer.Typer()
    fresh.callback()(lambda: None)
    for module in (loop.cli.run_commands, loop.cli.inspect_commands, loop.cli.plugin_commands):
        module.register(fresh)
    monkeypatch.setattr(loop.cli, "app", fresh)
    result = CliRunner().invoke(loop.cli.build_app(), ["hello-plugin"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_every_hookspec_is_documented_and_tested():
    """Each hook has a test somewhere in the suite (datasette's rule)."""
    from pathlib import Path

    names = [n for n in dir(hookspecs) if n.startswith(("register_", "prepare_", "round_"))]
    assert set(names) == {"register_tasks", "register_backends", "register_verifiers",
                          "register_critics", "register_rewards", "register_updaters",
                          "register_environments", "register_commands", "prepare_db",
                          "round_started", "round_finished"}
    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in names:
        assert f"def {name}(" in text, f"no test implements hook {name}"


def test_cli_plugins_json_shape():
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) >= {"loop.builtins", "hf", "math", "trl"}
    for row in rows.values():
        assert set(row) == {"name", "version", "hooks", "tasks", "backends", "verifiers",
                            "critics", "rewards", "updaters", "environments"}
    assert rows["trl"]["updaters"] == ["dpo", "grpo", "kto", "nft", "redi", "sft"] and rows["trl"]["version"] == "0.1.0"
    assert rows["hf"]["hooks"] == ["register_backends"]


def test_cli_tasks_lists_sources(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("source: arithmetic\n")
    result = CliRunner().invoke(app, ["tasks", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["name"], r["kind"]) for r in json.loads(result.output)}
    assert {("arithmetic", "source"), ("jsonl", "source"), ("mine", "file"),
            ("arithmetic", "file")} <= rows


def test_loop_help_does_not_import_torch():
    import subprocess

    code = ("import sys; from loop.cli import build_app; build_app();"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_verifier_exception_becomes_infra_verdict_naming_plugin():
    from loop.resolve import Chosen
    from loop.schema import Attempt, Task
    from loop.guarded import safe_verify

    class Boom(loop.Verifier):
        name = "boom"

        def verify(self, task, attempt):
            raise ZeroDivisionError("bad plugin")

    task = Task(source="s", split="train", prompt=[], reference="1")
    attempt = Attempt(id="a", run_id="r", round_index=1, task_id=task.id, purpose="train",
                      sample_index=0, messages=[], completion="1")
    verdict = safe_verify(Chosen("boom", Boom(), None, "myplugin"), task, attempt)
    assert verdict.model_copy(update={"details": {}}) == Verdict(
        passed=False, score=0.0, error_kind="infra",
        feedback="verifier 'boom' (plugin myplugin) on attempt a: raised ZeroDivisionError: bad "
                 "plugin")
    assert verdict.details["where"].endswith(" in verify")  # where it raised, and how
    assert verdict.details["traceback"].rstrip().endswith("ZeroDivisionError: bad plugin")
