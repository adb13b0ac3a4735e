"""bench/perf.py, bench/perf_page.py, bench/vs_trl.py and bench/plain_trl_grpo.py: the arithmetic
of the ratios, the page that reports them, and the plain TRL script run for real on the tiny
model (the full benchmarks take half an hour and are run by hand: BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import perf  # noqa: E402
import perf_page  # noqa: E402
import vs_trl  # noqa: E402


def test_matmul_peak_and_machine_description():
    flops = perf.matmul_peak("float32", size=64, seconds=0.05)
    assert 1e6 < flops < 1e16
    machine = perf.describe_machine()
    assert machine["cores"] >= 1 and machine["threads"] >= 1 and machine["torch"]


def _points(*pairs):
    return [{"clock_s": t, "pass_at_1": p} for t, p in pairs]


def test_time_to_target_is_the_first_crossing_of_the_plain_scripts_final_accuracy():
    plain = {"points": _points((60, 0.1), (120, 0.45), (180, 0.6), (240, 0.55))}
    loop_arm = {"points": _points((0, 0.07), (50, 0.3), (90, 0.58), (140, 0.7))}
    result = vs_trl.compare(plain, loop_arm, Namespace(budget=240, every=60,
                                                       config="configs/vs-trl.yaml"))
    assert result["target_pass_at_1"] == 0.55  # the plain arm's last checkpoint
    assert result["plain_time_to_target_s"] == 180  # first time at or above it
    assert result["loop_time_to_target_s"] == 90
    assert result["ratio"] == pytest.approx(0.5)
    assert result["plain"]["points"][0] == {"clock_s": 0.0, "pass_at_1": 0.07}  # shared base
    never = vs_trl.compare(plain, {"points": _points((0, 0.07), (50, 0.2))},
                           Namespace(budget=240, every=60, config="x.yaml"))
    assert never["loop_time_to_target_s"] is None and never["ratio"] is None


def _results():
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "memory_gib": 8.0, "gpu": None,
               "torch": "2.13.0", "bf16_instructions": [], "load_average": 0.1}
    common = {"measured": "2026-11-22T01:00+00:00", "machine": machine, "section_seconds": 5.0,
              "command": "python bench/perf.py --sections x"}
    return {
        "p1": {**common, "peak_flops": {"float32": 1.0e11}, "params": 134_515_008,
               "flops_per_token": 269_030_016, "limit_tok_s": 371.7, "new_tokens": 64,
               "stage": {"prompts": 128, "n": 2, "rows": 256, "max_new_tokens": 48},
               "stage_tok_s": 290.0, "ratio": 0.78, "reference_ratio": 0.40,
               "levers": [{"lever": "loop decoder, 128 rows", "tok_s": 290.0,
                           "share_of_limit": 0.78}],
               "real": {"loop_tok_s": 250.0, "loop_tokens": 9000, "plain16_tok_s": 100.0,
                        "plain16_tokens": 9100, "rows": 128}},
        "p2": {**common, "run_command": "loop run arithmetic --rounds 1", "command_wall_s": 400.0,
               "run_wall_s": 390.0, "startup_s": 10.0, "outside_rounds_s": 1.0,
               "between_stages_s": 2.0, "work_s": 370.0, "overhead_s": 30.0, "ratio": 0.075,
               "stages": {"generate": {"seconds": 200.0, "work_seconds": 195.0,
                                       "load_seconds": 2.0, "overhead_seconds": 5.0}},
               "pass_at_1": [0.07, 0.15]},
        "p4": {**common, "ratio": 1.05, "programs": 300, "workers": 4,
               "arms": {a: {"wall_s": 20.0, "startup_p50_ms": 20.0, "startup_p95_ms": 40.0}
                        for a in ("plain", "sandbox")}},
        "p5": {**common, "attempts": 1_000_000, "insert": {
            "insert_attempts": {"wall": 25_000.0, "cpu": 30_000.0},
            "write stages": {"wall": 21_000.0, "cpu": 26_000.0}},
            "background_checkpoints": {"checkpoints": 200, "seconds": 12.0, "cpu": 4.0},
            "queries": [{"name": "loop show RUN", "first_ms": 2.0, "median_ms": 1.0, "rows": 10},
                        {"name": "loop mistakes RUN (every row)", "first_ms": 900.0,
                         "median_ms": 800.0, "rows": 100_000}]},
        "train": {**common, "peak_flops": 1.0e11, "params": 134_515_008, "limit_tok_s": 123.9,
                  "steps": 24, "rows": 256, "speedup": 1.4,
                  "modes": {"padded": {"tok_s": 50.0, "share_of_limit": 0.40, "loss": 1.0},
                            "padding_free": {"tok_s": 70.0, "share_of_limit": 0.56,
                                             "loss": 1.0}}},
    }


def test_p1_loads_the_weights_as_the_default_job_does(monkeypatch):
    """`dtype: auto` in the default task: bfloat16 on a CPU with AMX, float32 elsewhere."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert perf.default_dtype() == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert perf.default_dtype() == "float32"


def test_p2_counts_overhead_by_the_monotonic_clock_whatever_the_run_rows_clock_did():
    # the run row's wall clock stepped 6.8 s forward: its span exceeds the whole command
    stepped = {"wall_seconds": 256.8, "work_seconds": 232.8}
    startup, overhead, step = perf.p2_split(250.0, stepped)
    assert (startup, round(overhead, 6), round(step, 6)) == (0.0, 17.2, 6.8)
    steady = {"wall_seconds": 248.0, "work_seconds": 232.8}
    startup, overhead, step = perf.p2_split(250.0, steady)
    assert (startup, round(overhead, 6), step) == (2.0, 17.2, 0.0)


def test_p1_measures_the_default_jobs_generate_stage():
    """P1's shape is the task file's, read here from the YAML itself."""
    import yaml

    run = yaml.safe_load((REPO / "tasks" / "arithmetic.yaml").read_text())["run"]
    prompts, gen = run["select"]["prompts_per_round"], run["generate"]
    assert perf.default_stage() == {
        "prompts": prompts, "n": gen["n"], "rows": min(gen["batch_size"], prompts * gen["n"]),
        "max_new_tokens": gen["max_new_tokens"]}


def test_page_reports_every_goal_with_its_status_and_how_much_a_miss_is():
    vs = {"machine": "x86_64, 2 cores", "budget_s": 600, "every_s": 60,
          "config": "configs/vs-trl.yaml", "target_pass_at_1": 0.55,
          "plain_time_to_target_s": 480.0, "loop_time_to_target_s": 300.0, "ratio": 0.625,
          "plain": {"points": _points((0, 0.07), (480, 0.55))},
          "loop": {"points": _points((0, 0.07), (300, 0.6))}}
    text = perf_page.page(_results(), vs, perf.GOALS)
    summary = text.split("## Summary")[1].split("\n## ")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 8  # header, P1, P2, P3, P4, P5 answers, P5 round, P5 query, training
    assert "| P1 generate stage / compute limit (fp32) | 0.78 | ≥ 0.7 | met |" in summary
    assert "shape (128 prompts x 2 samples = 256 rows per decoder call" in text
    assert "weights in float32 (the default job's `dtype: auto` on a CPU without AMX)" in text
    assert "| 7.5% | ≤ 5% | **missed** |" in summary
    assert "| 0.62 | ≤ 0.25 | **missed** |" in summary
    assert "Missed by 2.5 points." in text  # P2's miss, said in its section
    assert "bench/results/vs_trl.png" in text and "Test CPU, 2 cores" in text
    assert "| padding-free | 70 | 0.56 | 1.000 |" in text
    assert "P5 attempts written per second (a round's rows, committed) | 21,000" in summary
    # the checkpoints moved to a thread are said, and their CPU counted against the writes too
    assert "ran 200 checkpoints in 12.0 s (4.0 s CPU)" in text
    assert "well, whenever it ran: 23,551 attempts/s." in text
    # the every-row listing is shown, not held to the query goal
    assert "| 1.0 ms (loop show RUN) | < 100 ms | met |" in summary
    assert "clock stepped" not in text  # no step in these figures
    stepped = _results()
    stepped["p2"]["clock_step_s"] = 6.8
    assert "span 6.8 s more than the whole command took" in perf_page.page(stepped, vs, perf.GOALS)
    missing = perf_page.page({}, None, perf.GOALS)
    assert "Not measured yet: `python bench/perf.py --sections p1`" in missing
    assert "Not measured yet: `python bench/vs_trl.py`" in missing


@pytest.mark.slow
def test_plain_trl_script_trains_on_a_budget_and_saves_timed_checkpoints(tiny_model_dir,
                                                                         tmp_path):
    data = tmp_path / "train.jsonl"
    with data.open("w") as out:
        for a in range(10, 40):
            out.write(json.dumps({"prompt": [{"role": "user", "content": f"{a}+{a}="}],
                                  "reference": str(2 * a)}) + "\n")
    out_dir = tmp_path / "plain"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "plain_trl_grpo.py"), "--model", str(tiny_model_dir),
         "--data", str(data), "--out", str(out_dir), "--budget", "4", "--every", "1",
         "--max-completion-length", "8"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    timeline = json.loads((out_dir / "timeline.json").read_text())
    checkpoints = timeline["checkpoints"]
    assert len(checkpoints) >= 2 and timeline["steps"] >= len(checkpoints)
    clocks = [c["train_s"] for c in checkpoints]
    assert clocks == sorted(clocks) and clocks[-1] >= 4  # stopped once past the budget
    assert clocks[-2] < 4 + 1e-9
    for checkpoint in checkpoints:
        assert (Path(checkpoint["adapter"]) / "adapter_model.safetensors").is_file()
    assert len(timeline["rollout_rewards"]) == timeline["steps"]


def test_write_keeps_the_sections_other_benchmarks_wrote():
    new = "# Benchmarks\n\nintro\n\n## Summary\n\nnew\n\n## GPU check\n\nnew gpu\n"
    old = ("# Benchmarks\n\nold intro\n\n## Summary\n\nold\n\n## Agent: the calculator demo\n\n"
           "| a |\n\n## GPU check\n\nold gpu\n\n## Plugin workers\n\nfigures\n")
    page = perf_page.keep_other_sections(new, old)
    assert page.startswith(new)
    assert page.count("## Summary") == 1 and "old gpu" not in page and "\nold\n" not in page
    assert page.index("## Agent: the calculator demo") < page.index("## Plugin workers")
    assert page.endswith("## Plugin workers\n\nfigures\n")
    assert perf_page.keep_other_sections(new, "") == new
