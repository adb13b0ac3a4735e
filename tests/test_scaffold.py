"""`loop plugin new KIND NAME`: a ready plugin distribution that `pip install -e` makes live.

The fast tests check what is written and every one-line error; the slow ones install all five
kinds into this venv (and uninstall them afterwards), list them with `loop plugins`, run each
plugin's own tests, and run a real `loop run` on the tiny model with the new verifier."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.plugin_manager import build_registry, get_plugin_manager
from loop.scaffold import KINDS, REGISTRY_KIND, ScaffoldError, write_plugin

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = "hf,math,trl,code,reasoning_gym,tensorboard,openai,vllm"


def new(*args: str):
    return CliRunner().invoke(app, ["plugin", "new", *args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def load_generated(folder: Path, module: str, monkeypatch):
    """Import a generated plugin's module from its folder (no install) and register it."""
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    plugin = importlib.import_module(module)
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(plugin, name="generated")
    return plugin, build_registry(pm)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_complete_distribution(kind, tmp_path, monkeypatch):
    name = f"my-{kind}-x1"
    result = new(kind, name, "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    folder = tmp_path / f"loop-{name}"
    module = f"loop_my_{kind}_x1"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", f"{module}/__init__.py", "pyproject.toml",
                     f"tests/test_my_{kind}_x1.py"]
    assert f"loop-{name}/{module}/__init__.py" in result.output

    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"loop-{name}"
    assert project["project"]["entry-points"]["loop"] == {name: module}
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [f"{module}*"]
    assert "loop" in project["project"]["dependencies"]
    readme = (folder / "README.md").read_text()
    assert f"# loop-{name}" in readme and f"pip install -e loop-{name}" in readme
    assert "$" not in readme + (folder / module / "__init__.py").read_text()  # all filled in
    compile((folder / "tests" / f"test_my_{kind}_x1.py").read_text(), "test", "exec")

    # The component works: imported from the folder, it registers under NAME for its kind.
    _, registry = load_generated(folder, module, monkeypatch)
    registered = {(k, n) for k, by_name in registry.kinds.items()
                  for n, entry in by_name.items() if entry.plugin == "generated"}
    assert registered == {(REGISTRY_KIND[kind], name)}


@pytest.mark.parametrize("kind", KINDS)
def test_generated_tests_fail_on_a_name_clash(kind, tmp_path, monkeypatch):
    """The clash test every kind's tests get: passes with the plugin alone among the installed
    ones, fails (loop.PluginError naming both) when another plugin registers its name."""
    import importlib.util

    import loop.testing
    from loop.plugin_manager import PluginError

    name = f"clash-{kind}-x1"
    assert new(kind, name, "--dir", str(tmp_path)).exit_code == 0
    folder = tmp_path / f"loop-{name}"
    plugin, _ = load_generated(folder, f"loop_clash_{kind}_x1", monkeypatch)
    path = folder / "tests" / f"test_clash_{kind}_x1.py"
    spec = importlib.util.spec_from_file_location(f"generated_test_{kind}", path)
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    clash_test = tests.test_it_loads_next_to_the_installed_plugins_without_a_name_clash

    def installed(*others):
        def plugin_manager(plugins_dir=None):
            pm = get_plugin_manager(load_entrypoints=False)
            pm.register(plugin, name=name)
            for i, other in enumerate(others):
                pm.register(other, name=f"other-{i}")
            return pm
        return plugin_manager

    monkeypatch.setattr(loop.testing, "plugin_manager", installed())
    clash_test()  # alone: passes
    twin = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
        "twin", folder / f"loop_clash_{kind}_x1" / "__init__.py"))
    twin.__spec__.loader.exec_module(twin)  # a second copy registering the same name
    monkeypatch.setattr(loop.testing, "plugin_manager", installed(twin))
    with pytest.raises(PluginError, match=name):
        clash_test()


def test_generated_verifier_judges_answers(tmp_path, monkeypatch):
    write_plugin("verifier", "judge-x2", tmp_path)
    _, registry = load_generated(tmp_path / "loop-judge-x2", "loop_judge_x2", monkeypatch)
    from loop.schema import Attempt, Task

    verifier = registry.get("verifiers", "judge-x2")
    task = Task(source="t", split="train", prompt=[{"role": "user", "content": "2+2="}],
                reference="4")

    def attempt(text):
        return Attempt(id="a", run_id="r", round_index=1, task_id=task.id, purpose="train",
                       sample_index=0, messages=[], completion=text)

    assert verifier.verify(task, attempt(" 4 ")).passed
    wrong = verifier.verify(task, attempt("5"))
    assert not wrong.passed and wrong.error_kind == "model"


def test_generated_task_source_runs_through_config_resolution(tmp_path, monkeypatch):
    from loop.resolve import resolve_components
    from loop.config import build_config

    write_plugin("task", "words-x3", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "loop-words-x3"))
    import loop_words_x3

    pm = get_plugin_manager()  # the first-party plugins too: a config needs a backend, an updater
    pm.register(loop_words_x3, name="words-x3")
    config = build_config("words-x3", sets=["task.options={length: 4, train_size: 30, "
                                            "eval_size: 10}"])
    components = resolve_components(config, build_registry(pm))
    assert [v.name for v in components.verifiers] == ["exact_match"]  # its default verifier
    source = components.task_source
    tasks = source.component.load(source.options, config.seed)
    assert len(tasks.train) == 30 and len(tasks.eval) == 10
    assert all(len(t.metadata["word"]) == 4 for t in tasks.train)


def test_existing_folder_is_a_one_line_error_and_is_left_alone(tmp_path):
    folder = tmp_path / "loop-taken"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    line = one_line_error(new("verifier", "taken", "--dir", str(tmp_path)))
    assert "already exists" in line and "loop-taken" in line
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("name", ["MyCheck", "1check", "my--check", "my check", "_check",
                                  "check-", "my.check", "ü", "a" * 41, ""])
def test_bad_names_are_one_line_errors(name, tmp_path):
    line = one_line_error(new("verifier", name, "--dir", str(tmp_path)))
    assert "is not valid" in line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ScaffoldError, match="is not valid"):
        write_plugin("verifier", "-" + name, tmp_path)  # (a leading '-' reads as an option)


def test_keyword_unknown_kind_missing_dir(tmp_path):
    assert "Python keyword" in one_line_error(new("reward", "class", "--dir", str(tmp_path)))
    line = one_line_error(new("scorer", "x", "--dir", str(tmp_path)))
    assert "unknown plugin kind 'scorer'" in line and "verifier, critic, reward" in line
    assert "no such folder" in one_line_error(new("critic", "x", "--dir", str(tmp_path / "no")))
    assert list(tmp_path.iterdir()) == []


def test_a_name_an_installed_plugin_registers_is_refused(tmp_path):
    line = one_line_error(new("task", "arithmetic", "--dir", str(tmp_path)))
    assert "task named 'arithmetic' is already registered by plugin 'math'" in line
    # the same name for another kind is fine (names are per kind) unless its module exists
    line = one_line_error(new("critic", "math", "--dir", str(tmp_path)))
    assert "a module named loop_math is already installed" in line
    assert new("critic", "arithmetic", "--dir", str(tmp_path)).exit_code == 0


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    line = one_line_error(new("verifier", "nospace", "--dir", str(tmp_path)))
    assert "No space left on device" in line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ScaffoldError):
        write_plugin("verifier", "Bad", tmp_path)


# ----- installed for real (slow) ---------------------------------------------------------------

def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One plugin of every kind, generated and `pip install -e`d into this venv; uninstalled when
    the module's tests are done. Names are unique so no other installed plugin is touched."""
    root = tmp_path_factory.mktemp("scaffolded")
    tag = secrets.token_hex(3)
    names = {kind: f"scaffolded-{kind}-{tag}" for kind in KINDS}
    folders = {kind: write_plugin(kind, name, root) for kind, name in names.items()}
    dists = [f"loop-{name}" for name in names.values()]
    try:
        args = [arg for folder in folders.values() for arg in ("-e", str(folder))]
        result = _pip("install", "--no-deps", "--no-build-isolation", "--quiet", *args)
        assert result.returncode == 0, result.stderr
        yield names, folders
    finally:
        _pip("uninstall", "--yes", "--quiet", *dists)


def _env(names: dict[str, str], **extra: str) -> dict[str, str]:
    return {**os.environ, "LOOP_LOAD_PLUGINS": ",".join([FIRST_PARTY, *names.values()]),
            **extra}


@pytest.mark.slow
def test_installed_plugins_are_listed_by_loop_plugins(installed, tmp_path):
    names, _ = installed
    result = subprocess.run([sys.executable, "-m", "loop.cli", "plugins", "--json"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=_env(names))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for kind, name in names.items():
        row = rows[name]
        assert row["version"] == "0.1.0"
        assert row["hooks"] == [f"register_{REGISTRY_KIND[kind]}"]
        assert row[REGISTRY_KIND[kind]] == [name]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_generated_tests_pass(installed, kind):
    names, folders = installed
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, timeout=300, cwd=folders[kind],
                            env=_env(names))
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 4 and "failed" not in result.stdout


@pytest.mark.slow
def test_installed_verifier_judges_a_real_loop_run(installed, tiny_task_file, tmp_path):
    """`loop run --set task.verifiers=[NAME]` in a fresh process selects the installed verifier;
    every stored verdict is its, and each agrees with what the verifier promises. The answers
    come from the parity scripted backend (tests/scripted_runs.py; the noop updater)."""
    from scripted_runs import PARITY_SETTINGS, question_of, right, write_parity_plugin

    names, _ = installed
    name = names["verifier"]
    db = tmp_path / "store" / "loop.db"
    plugins = write_parity_plugin(tmp_path / "plugins")
    result = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", str(tiny_task_file), *PARITY_SETTINGS,
         "--plugins-dir", str(plugins), "--rounds", "1", "--db", str(db),
         "--set", f"task.verifiers=[{name}]", "--set", "select.prompts_per_round=24",
         "--set", "generate.n=4", "--set", "generate.max_new_tokens=6",
         "--set", "evaluate.problems=40", "--set", "evaluate.max_new_tokens=6"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env(names))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    import sqlite_utils

    conn = sqlite_utils.Database(db)
    rows = conn.execute(
        "select v.verifier, v.passed, v.error_kind, a.completion, t.reference, a.sample_index, "
        "a.purpose, a.round_idx, t.prompt_json "
        "from verdicts v join attempts a on a.id = v.attempt_id join tasks t on t.id = a.task_id"
    ).fetchall()
    attempts = conn["attempts"].count
    assert attempts == 24 * 4 + 2 * 40 and len(rows) == attempts
    assert {r[0] for r in rows} == {name}
    for _, passed, error_kind, completion, reference, k, purpose, idx, prompt in rows:
        assert bool(passed) == (completion.strip() == reference.strip())
        assert error_kind == (None if passed else "model")
        # the parity rule: sampled from round 0's model for training, round idx's for eval
        assert bool(passed) == right(question_of(prompt), k, idx if purpose == "eval" else 0)
    assert 0 < sum(r[1] for r in rows) < len(rows)
    config = json.loads(next(conn["runs"].rows)["config_json"])
    assert [v["name"] for v in config["task"]["verifiers"]] == [name]
