"""bench/gpu_check.py's CPU dry run, in a subprocess as a user runs it: every row is there with a
positive rate, and each training step really moved its LoRA adapter (PEFT starts every B matrix
at zero, so a step that did nothing leaves their sum at 0 and this test fails)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import perf  # noqa: E402
import perf_page  # noqa: E402
STEPS = ["generate (hf)", "train sft (1 step, LoRA r 16)", "train grpo (1 step, LoRA r 16)"]


@pytest.mark.slow  # loads the default model and trains it twice (~30 s on 2 cores)
def test_dry_run_measures_every_step_and_training_changes_the_adapter(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "dry-run (CPU)" and report["failures"] == []
    assert report["machine"]["device"].startswith("CPU")
    assert all(report["versions"][p] for p in ("torch", "transformers", "peft", "trl"))
    rows = {(r["model"], r["step"]): r for r in report["rows"]}
    assert set(rows) == {(m, s) for m in ("tiny", "default") for s in STEPS}
    for key, row in rows.items():
        assert row["tokens"] > 0 and row["seconds"] > 0 and row["tokens_per_s"] > 0, key
        assert row["peak_memory_bytes"] > 0, key
        if row["step"].startswith("train"):
            assert row["steps"] == 1, key
            assert row["lora_b_tensors"] > 0 and row["lora_b_abs_sum"] > 0, key
    # no vllm on the CPU path: said so, not silently missing
    assert {(s["model"], s["step"]) for s in report["skipped"]} == {
        ("tiny", "generate (vllm)"), ("default", "generate (vllm)")}
    assert "tok/s" in done.stdout and "peak MiB" in done.stdout


def test_benchmarks_page_says_plainly_when_no_gpu_run_was_measured():
    missing = perf_page.page({}, None, perf.GOALS)
    section = missing.split("## GPU check")[1]
    assert "**Not measured on a GPU**" in section and "`python bench/gpu_check.py`" in section
    dry = {"mode": "dry-run (CPU)", "rows": []}  # a CPU dry run is no GPU measurement
    assert "**Not measured on a GPU**" in perf_page.page({}, None, perf.GOALS, dry)
    gpu = {"mode": "gpu", "total_seconds": 95.2,
           "machine": {"device": "NVIDIA H200", "cuda": "12.8"},
           "versions": {"torch": "2.9.0", "vllm": None},
           "rows": [{"model": "default", "step": "generate (hf)", "tokens": 65536,
                     "seconds": 4.0, "tokens_per_s": 16384.0, "peak_memory_bytes": 3 * 2**30}],
           "skipped": [{"model": "default", "step": "generate (vllm)",
                        "reason": "vllm is not installed"}]}
    text = perf_page.page({}, None, perf.GOALS, gpu).split("## GPU check")[1]
    assert "Not measured" not in text and "NVIDIA H200, CUDA 12.8; torch 2.9.0" in text
    assert "| default | generate (hf) | 65,536 | 4.00 | 16,384 | 3.00 |" in text
    assert "Skipped: default generate (vllm): vllm is not installed." in text
