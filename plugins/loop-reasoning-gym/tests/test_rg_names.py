"""The static list of dataset names matches the installed registry, registration never imports
reasoning-gym, and the plugin registers one `rg:` source per dataset plus its verifier."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import loop_reasoning_gym
from loop.plugin_manager import build_registry, get_plugin_manager
from loop_reasoning_gym import names


def test_static_names_are_the_installed_registry():
    # On failure: `python -m loop_reasoning_gym.names` rewrites names.py from the installed
    # reasoning-gym (then check the README's count).
    assert list(names.DATASET_NAMES) == names.live_names()
    assert names.GENERATED_FROM == f"reasoning-gym {importlib.metadata.version('reasoning-gym')}"


def test_the_generator_reproduces_names_py():
    source = Path(names.__file__).read_text(encoding="utf-8")
    version = names.GENERATED_FROM.split()[-1]
    assert names.render(list(names.DATASET_NAMES), version) == source
    changed = names.render(["a", "b"], "9.9")
    assert '    "a",\n    "b",\n)\n' in changed
    assert 'GENERATED_FROM = "reasoning-gym 9.9"' in changed
    assert changed.split("DATASET_NAMES")[0].count('"""') == 2  # the docstring survives


def test_registering_all_sources_does_not_import_reasoning_gym():
    probe = ("import sys\n"
             "from loop import get_plugin_manager, build_registry\n"
             "import loop_reasoning_gym\n"
             "pm = get_plugin_manager(load_entrypoints=False)\n"
             "pm.register(loop_reasoning_gym, name='reasoning_gym')\n"
             "registry = build_registry(pm)\n"
             "print(len([n for n in registry.names('tasks') if n.startswith('rg:')]),"
             " 'reasoning_gym' in sys.modules, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(names.DATASET_NAMES)), "False", "False"]


def test_registers_one_source_per_dataset_and_the_verifier():
    pm = get_plugin_manager(load_entrypoints=False, builtins=False)
    pm.register(loop_reasoning_gym, name="reasoning_gym")
    registry = build_registry(pm)
    assert registry.names("tasks") == sorted(f"rg:{n}" for n in names.DATASET_NAMES)
    assert registry.names("verifiers") == ["reasoning_gym"]
    for kind in ("backends", "critics", "rewards", "updaters"):
        assert registry.names(kind) == []
    source = registry.get("tasks", "rg:leg_counting")
    assert isinstance(source, loop_reasoning_gym.ReasoningGymTasks)
    assert source.dataset == "leg_counting" and source.default_verifiers == ["reasoning_gym"]
    assert registry.plugin_of("tasks", "rg:leg_counting") == "reasoning_gym"


def test_plugin_never_imports_pluggy():
    folder = Path(loop_reasoning_gym.__file__).parent
    source = "".join(f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.py")))
    assert "import pluggy" not in source and "from pluggy" not in source


def test_entry_point_is_declared_when_installed():
    try:
        dist = importlib.metadata.distribution("loop-reasoning-gym")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("loop-reasoning-gym is not installed (bare checkout)")
    eps = [ep for ep in dist.entry_points if ep.group == "loop"]
    assert [(ep.name, ep.value) for ep in eps] == [("reasoning_gym", "loop_reasoning_gym")]
