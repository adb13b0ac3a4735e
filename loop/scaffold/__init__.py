"""Plugin scaffolding: `loop plugin new KIND NAME` writes a ready distribution `loop-NAME/`.

What it writes is what a first-party plugin looks like (see plugins/loop-math):

    loop-NAME/
      pyproject.toml           the entry point `NAME = "loop_NAME"` in group `loop`
      README.md                install, use, develop
      loop_NAME/__init__.py    a small working component of that KIND and its @loop.hookimpl
      tests/test_NAME.py       tests that pass once the distribution is installed

`pip install -e loop-NAME` makes it live: `loop plugins` lists it and configs select it by NAME.
Each kind's template is a module here (verifier.py, critic.py, ...) holding `string.Template`
texts; `$name`, `$module`, `${Camel}`, `$Class` and friends are filled in by `render`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import keyword
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

KINDS = ("verifier", "critic", "reward", "updater", "task")

# kind -> the registry kind of loop.plugin_manager.KINDS (which `loop plugins` lists)
REGISTRY_KIND = {"verifier": "verifiers", "critic": "critics", "reward": "rewards",
                 "updater": "updaters", "task": "tasks"}

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME = 40


class ScaffoldError(Exception):
    """Bad input for the scaffold; `str()` is the one line the CLI prints."""


@dataclass(frozen=True)
class Names:
    """Every spelling of a plugin's name the templates need, from NAME (e.g. `my-check`)."""

    name: str    # the component's name in configs, and the entry point's: my-check
    dist: str    # the distribution and its folder: loop-my-check
    module: str  # the import package: loop_my_check
    ident: str   # a Python identifier (a reward function's name): my_check
    Camel: str   # class names: MyCheck (MyCheckVerifier, MyCheckOptions)

    @classmethod
    def of(cls, name: str) -> "Names":
        if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME:
            raise ScaffoldError(
                f"plugin name {name!r} is not valid: use lowercase letters and digits, starting "
                f"with a letter, words joined by single '-' or '_' (at most {MAX_NAME} "
                "characters), e.g. my-check")
        ident = name.replace("-", "_")
        if keyword.iskeyword(ident):
            raise ScaffoldError(f"plugin name {name!r} is a Python keyword; pick another")
        camel = "".join(part.capitalize() for part in re.split(r"[-_]", name))
        return cls(name=name, dist=f"loop-{name}", module=f"loop_{ident}", ident=ident,
                   Camel=camel)


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = $description
readme = "README.md"
requires-python = ">=3.11"
dependencies = [$dependencies]

[project.optional-dependencies]
test = ["pytest>=8"]

# How loop finds the plugin: entry point group "loop", name = the plugin's name.
[project.entry-points.loop]
$name = "$module"

[tool.setuptools.packages.find]
include = ["$module*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# $dist

A plugin for `loop`, the self-improvement loop for language models. It registers the
$summary.

## Install

```bash
pip install -e $dist
loop plugins          # lists `$name`
```

## Use

$usage
## Develop

```bash
pip install -e '$dist[test]'
cd $dist && pytest
```

The code is `$module/__init__.py`. The hooks and what loop expects of each component are in
loop's `docs/plugins.md`; `LOOP_TRACE_PLUGINS=1 loop ...` prints every hook call and every call
of your component (with its time and result) to stderr.
"""


def template_module(kind: str):
    if kind not in KINDS:
        raise ScaffoldError(f"unknown plugin kind {kind!r} (one of: {', '.join(KINDS)})")
    return importlib.import_module(f"loop.scaffold.{kind}")


def class_name(camel: str, suffix: str) -> str:
    """`MyCheck` + `Verifier` -> `MyCheckVerifier`, without doubling a suffix the name already
    has: `NiceCritic` stays, `WordTask` + `Tasks` -> `WordTasks`."""
    if camel.endswith(suffix):
        return camel
    stem = suffix.rstrip("s")
    if stem != suffix and camel.endswith(stem):
        return camel + suffix[len(stem):]
    return camel + suffix


# Appended to every kind's tests: the plugin loads next to every installed plugin, as `loop run`
# loads them, without a name clash (two plugins registering one name for one kind).
CLASH_TEST = '''

def test_it_loads_next_to_the_installed_plugins_without_a_name_clash():
    """Every installed plugin's entry point (LOOP_LOAD_PLUGINS narrows them), as `loop run`
    loads them: loop.testing.registry() raises loop.PluginError naming both plugins when
    another one registers "$name" as $registry_kind too."""
    import loop.testing

    registry = loop.testing.registry()
    assert registry.plugin_of("$registry_kind", "$name") == "$name"
'''


def render(kind: str, name: str) -> dict[str, str]:
    """The files of plugin NAME of KIND: relative path -> text."""
    names = Names.of(name)
    parts = template_module(kind)
    values = asdict(names)
    values["kind"] = kind
    values["registry_kind"] = REGISTRY_KIND[kind]
    values["Class"] = class_name(names.Camel, getattr(parts, "CLASS_SUFFIX", ""))
    values["summary"] = Template(parts.SUMMARY).substitute(values)
    # TOML basic strings escape like JSON strings (quotes, backslashes)
    values["description"] = json.dumps(f"loop plugin: the {values['summary']}", ensure_ascii=False)
    values["dependencies"] = ", ".join(f'"{d}"' for d in parts.DEPENDENCIES)
    values["usage"] = Template(parts.USAGE).substitute(values)
    fill = lambda text: Template(text).substitute(values)  # noqa: E731
    return {
        "pyproject.toml": fill(PYPROJECT),
        "README.md": fill(README),
        f"{names.module}/__init__.py": fill(parts.MODULE),
        f"tests/test_{names.ident}.py": fill(parts.TEST) + fill(CLASH_TEST),
    }


def write_plugin(kind: str, name: str, parent: Path) -> Path:
    """Write plugin NAME of KIND as `parent/loop-NAME/` and return that folder.

    Raises ScaffoldError (one line) for a bad kind or name, a missing parent, a folder that
    already exists, or an import name an installed distribution already uses. The files are
    written to a temporary sibling first and renamed into place, so a failure leaves nothing.
    """
    names = Names.of(name)
    files = render(kind, name)
    parent = Path(parent)
    if not parent.is_dir():
        raise ScaffoldError(f"--dir {parent}: no such folder")
    target = parent / names.dist
    if target.exists():
        raise ScaffoldError(f"{target} already exists; pick another name or remove it")
    if importlib.util.find_spec(names.module) is not None:
        raise ScaffoldError(f"a module named {names.module} is already installed; pick another "
                            f"name (or `pip uninstall {names.dist}` first)")
    staging = parent / f".{names.dist}.tmp-{secrets.token_hex(4)}"
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if target.exists():  # created meanwhile by someone else: never overwrite it
            raise ScaffoldError(f"{target} already exists; pick another name or remove it")
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
