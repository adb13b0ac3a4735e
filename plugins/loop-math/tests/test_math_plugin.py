"""The plugin registers exactly its names, through loop's own registry, as any plugin would."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import loop_math
from loop.plugin_manager import build_registry, get_plugin_manager


def registry():
    pm = get_plugin_manager(load_entrypoints=False, builtins=False)
    pm.register(loop_math, name="math")
    return build_registry(pm)


def test_hookimpls_register_exactly_these_names():
    reg = registry()
    assert reg.names("tasks") == ["arithmetic", "jsonl"]
    assert reg.names("verifiers") == ["math"]
    assert reg.names("rewards") == ["binary"]
    assert reg.names("environments") == ["calculator"]
    for kind in ("backends", "critics", "updaters"):
        assert reg.names(kind) == []
    assert reg.plugin_of("verifiers", "math") == "math"


def test_registered_components_are_the_real_ones():
    reg = registry()
    assert isinstance(reg.get("tasks", "arithmetic"), loop_math.ArithmeticTasks)
    assert isinstance(reg.get("tasks", "jsonl"), loop_math.JsonlTasks)
    assert isinstance(reg.get("verifiers", "math"), loop_math.MathVerifier)
    assert reg.get("rewards", "binary") is loop_math.binary
    assert isinstance(reg.get("environments", "calculator"), loop_math.Calculator)


def test_registered_pieces_work_end_to_end():
    reg = registry()
    source = reg.get("tasks", "arithmetic")
    tasks = source.load(source.Options(train_size=3, eval_size=2), 0)
    task = tasks.eval[0]
    verifier = reg.get("verifiers", reg.get("tasks", "arithmetic").default_verifiers[0])
    right, wrong = f"The answer is {task.reference}.", f"{int(task.reference) + 1}"
    verdicts = [{"math": verifier.check(right, task.reference)},
                {"math": verifier.check(wrong, task.reference)}]
    assert reg.get("rewards", "binary")([task.prompt] * 2, [right, wrong],
                                        verdicts=verdicts) == [1.0, 0.0]


def test_plugin_never_imports_pluggy_and_loads_math_verify_lazily():
    source = "".join(f.read_text(encoding="utf-8") for f in _module_files())
    assert "import pluggy" not in source and "from pluggy" not in source
    # `loop --help` imports every plugin: sympy (via math-verify) must wait for a verification.
    probe = "import sys, loop_math; print('math_verify' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_entry_point_is_declared_when_installed():
    try:
        dist = importlib.metadata.distribution("loop-math")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("loop-math is not installed (bare checkout)")
    eps = [ep for ep in dist.entry_points if ep.group == "loop"]
    assert [(ep.name, ep.value) for ep in eps] == [("math", "loop_math")]


def _module_files():
    return sorted(Path(loop_math.__file__).parent.glob("*.py"))
