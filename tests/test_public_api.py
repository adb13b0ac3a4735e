"""`import loop` is the whole plugin API: first-party plugins use nothing else, every public name
imports from `loop`, the old module paths still work (with a DeprecationWarning naming the new
home), and loop's own modules import each other without a circle."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import loop

REPO = Path(__file__).resolve().parent.parent
LOOP_DIR = REPO / "loop"


# ----- (a) first-party plugins import only `loop` --------------------------------------------------


def _plugin_modules() -> list[Path]:
    """Every .py of the plugins' packages (plugins/*/loop_*/), never their tests."""
    return sorted(path for package in REPO.glob("plugins/*/loop_*") if package.is_dir()
                  and not package.name.endswith(".egg-info") for path in package.rglob("*.py")
                  if "__pycache__" not in path.parts)


def _is_submodule(name: str) -> bool:
    return (LOOP_DIR / f"{name}.py").is_file() or (LOOP_DIR / name / "__init__.py").is_file()


def submodule_imports(source: str) -> list[tuple[int, str]]:
    """(line, statement) for every import of a loop submodule anywhere in `source` (functions
    included): `from loop.x import ...`, `import loop.x`, `from loop import x` (x a submodule)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("loop."):
                found.append((node.lineno, ast.unparse(node)))
            elif node.module == "loop" and any(_is_submodule(a.name) for a in node.names):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Import):
            if any(a.name.startswith("loop.") for a in node.names):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_check_finds_submodule_imports():
    source = ("import loop\nimport loop_hf.models\nfrom loop import Task\n"
              "from loop.records import Task\nimport loop.store as s\n"
              "def f():\n    from loop import testing\n    from loop.testing import X\n")
    assert [line for line, _ in submodule_imports(source)] == [4, 5, 7, 8]


def test_plugin_packages_import_nothing_but_loop():
    modules = _plugin_modules()
    assert len(modules) > 30  # the glob found the plugins
    offences = [f"{path.relative_to(REPO)}:{line}: {statement}"
                for path in modules for line, statement in submodule_imports(path.read_text())]
    assert not offences, "plugins must use `import loop` only:\n" + "\n".join(offences)


def test_no_plugin_package_imports_another_plugin_package():
    """A plugin never needs another plugin to resolve a model (loop.resolve_model does)."""
    offences = []
    for path in _plugin_modules():
        own = next(part for part in path.relative_to(REPO).parts if part.startswith("loop_"))
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                top = name.split(".")[0]
                if top.startswith("loop_") and top != own:
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not offences, "\n".join(offences)


# ----- (b) every public name imports from loop --------------------------------------------------


@pytest.mark.parametrize("name", loop.__all__)
def test_every_public_name_imports_from_loop(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a public name never goes through a deprecated path
        namespace: dict = {}
        exec(f"from loop import {name}", namespace)
    assert namespace[name] is getattr(loop, name)


def test_all_lists_distinct_names():
    assert len(loop.__all__) == len(set(loop.__all__))


# ----- (c) old paths still work, with a warning naming the new home ------------------------------

OLD_PATHS = [
    # (old module, name, where the warning says it lives now, the object's real module)
    ("loop.records", "Verdict", "loop.Verdict", "loop.schema"),
    ("loop.records", "Task", "loop.Task", "loop.schema"),
    ("loop.records", "Verifier", "loop.Verifier", "loop.interfaces"),
    ("loop.rounds", "UpdateContext", "loop.UpdateContext", "loop.updates"),
    ("loop.rounds", "EmptyDataset", "loop.EmptyDataset", "loop.updates"),
    ("loop.rounds", "safe_verify_batch", "loop.safe_verify_batch", "loop.guarded"),
    ("loop.rounds", "load_samples", "loop.updates.load_samples", "loop.updates"),
    ("loop.components", "Chosen", "loop.Chosen", "loop.resolve"),
    ("loop.adapters", "reward_verifier", "loop.reward_verifier", "loop.reward_verifiers"),
    ("loop.isolation", "call_plugin", "loop.call_plugin", "loop.guarded"),
    ("loop.isolation", "PluginFailure", "loop.PluginFailure", "loop.guarded"),
    ("loop.plugins", "get_plugin_manager", "loop.get_plugin_manager", "loop.plugin_manager"),
    ("loop.plugins", "build_registry", "loop.build_registry", "loop.plugin_manager"),
    ("loop.logs", "attempt_logs", "loop.queries.attempt_logs", "loop.queries"),
]


def _old_path_id(case) -> str:
    old, name = (case.values if hasattr(case, "values") else case)[:2]
    return f"{old}.{name}"


@pytest.mark.parametrize("old, name, home, module", OLD_PATHS,
                         ids=[_old_path_id(case) for case in OLD_PATHS])
def test_an_old_path_still_imports_with_a_deprecation_warning(old, name, home, module):
    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved: use {home}\b"):
        exec(f"from {old} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(module), name)
    if not home.startswith(module):  # a public name: the same object as loop's
        assert namespace[name] is getattr(loop, name)


def test_a_name_that_never_lived_at_an_old_path_is_an_import_error():
    with pytest.raises(ImportError):
        exec("from loop.records import NoSuchName", {})


# ----- (d) no import circle inside loop/ -----------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """The import statements that run when the module is imported: module level and inside
    module-level if/try/with blocks and class bodies, not functions, not `if TYPE_CHECKING:`."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                found += _top_level_imports(node.body)
            found += _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                found += _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _top_level_imports(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """loop module -> the loop modules it imports at import time."""
    paths = {_module_name(p): p for p in LOOP_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from loop import schema` imports the submodule; `from loop import Task`, loop
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base
                           for a in node.names]
            edges |= {t for t in targets if t in paths and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) through each strongly connected component of more
    than one module (Tarjan's algorithm, then a walk inside the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    found = []
    for component in components:
        start = min(component)
        # breadth-first inside the component for the shortest way back to `start`
        paths = {succ: [start, succ] for succ in sorted(graph[start] & component)}
        queue = list(paths)
        while start not in paths:
            node = queue.pop(0)
            for succ in sorted(graph[node] & component):
                if succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    queue.append(succ)
        found.append(paths[start])
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_the_import_graph_sees_loop_modules():
    graph = import_graph()
    assert "loop.schema" in graph["loop"] and "loop.cli.run" in graph
    assert "loop.config" not in graph["loop.updates"]  # under `if TYPE_CHECKING:` only


def test_loop_has_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles in loop/:\n" + "\n".join(" -> ".join(c) for c in found)
