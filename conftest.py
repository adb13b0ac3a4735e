"""Shared test setup for tests/ and every plugins/*/tests/: an isolated store per test,
first-party plugins only, no hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))  # tests/tiny_model.py

from tiny_model import tiny_task_yaml  # noqa: E402

FIRST_PARTY = "hf,math,trl,code,reasoning_gym,tensorboard,openai,vllm"
REPO = Path(__file__).resolve().parent


# Tests that use a machine-wide resource do not share the machine with other tests: the code
# sandbox's tests count every process of its sandbox user and time its limits, so they are
# `serial` (make test runs them after the parallel part); each vLLM engine or server takes a
# share of the machine's memory for its KV cache, so those run in one pytest-xdist worker.
SERIAL = ("plugins/loop-code/",)
XDIST_GROUPS = {"plugins/loop-vllm/": "vllm",
                "plugins/loop-openai/tests/test_openai_vllm.py": "vllm"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        if where.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
        group = next((g for prefix, g in XDIST_GROUPS.items() if where.startswith(prefix)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own store and run folder; plugins are the first-party ones only (a
    plugin installed on a developer's machine must not change test results); no network."""
    monkeypatch.setenv("LOOP_DB", str(tmp_path / "store" / "loop.db"))
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", FIRST_PARTY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for key in list(os.environ):
        if key.startswith("LOOP_") and "__" in key:
            monkeypatch.delenv(key)
    monkeypatch.delenv("LOOP_PLUGINS_DIR", raising=False)
    import loop.cli.common

    monkeypatch.setattr(loop.cli.common, "_PM", None)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def pm():
    from loop.plugin_manager import get_plugin_manager

    return get_plugin_manager()


@pytest.fixture
def registry(pm):
    from loop.plugin_manager import build_registry

    return build_registry(pm)


@pytest.fixture
def store(tmp_path):
    from loop.store import Store, open_db

    return Store(open_db(tmp_path / "t.db"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight tiny Llama with a char tokenizer (HF folder)."""
    from tiny_model import random_tiny_model

    return random_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def weak_adder_dir():
    """The tiny model trained until it adds 2-digit numbers ~15 % of the time (cached on disk)."""
    from tiny_model import weak_adder

    return weak_adder()


TINY_TASK = tiny_task_yaml(train_size=400, eval_size=100)


@pytest.fixture
def tiny_task_file(tmp_path):
    path = tmp_path / "tiny-add.yaml"
    path.write_text(TINY_TASK)
    return path
