"""The comparisons that race loop's methods against each other (bench/methods.py) or against a
plain TRL script (configs/vs-trl.yaml) learn from the model's own answers alone: the default
job's sft also trains on reference solutions (tasks/arithmetic.yaml), which would give sft data
the methods and the plain script it is compared with do not have."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loop.config import build_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import methods  # noqa: E402


def _options(config: str, sets: list[str], method: str) -> dict:
    return build_config("arithmetic", REPO / "configs" / config, flags={"train.method": method},
                        sets=sets, environ={}, task_dirs=[REPO / "tasks"]).train.options


def test_the_default_job_trains_on_references_for_unsolved_prompts():
    assert _options("default.yaml", [], "sft")["references"] == "unsolved"


@pytest.mark.parametrize("method", ["sft", "dpo", "kto", "grpo", "nft", "redi"])
def test_bench_methods_runs_every_method_on_its_own_answers(method):
    flags = methods.own_answers_only(method)
    sets = [value for flag, value in zip(flags[::2], flags[1::2]) if flag == "--set"]
    assert _options("default.yaml", sets, method).get("references", "never") == "never"


def test_vs_trl_config_trains_sft_on_its_own_answers_only():
    assert _options("vs-trl.yaml", [], "sft")["references"] == "never"
