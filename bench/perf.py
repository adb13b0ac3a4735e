"""Performance against the machine's limits and against a plain TRL script (P1-P5 and training),
each figure a ratio of two things measured in the same run on the same machine.

    python bench/perf.py [--sections p1,p2,p4,p5,train] [--quick] [--write]

- **p1** generation against the compute limit: the machine's matmul throughput (fp32; bf16 where
  the CPU has bf16 instructions), the limit it gives the default model (2 x parameters FLOPs per
  generated token), and the generate stage's tokens/s as a share of it; transformers' plain
  batched `generate` measured beside it, and each lever (rows per batch, shared prefill,
  threads) on its own.
- **p2** loop's overhead: `loop run` of the default job (the task's own rounds, or
  `--p2-rounds`), its time split
  into model, verifiers and everything else (`loop show`'s breakdown, loop.timing), plus the
  command's start-up.
- **p4** sandboxed verification against unsandboxed (`bench/sandbox.py`, needs root).
- **p5** the store: insert rate and query times at 1 M attempts (`bench/store.py`).
- **train** trained tokens/s of the SFT update against 6 x parameters FLOPs per token, padded
  batches against padding-free ones.
- **p3** time to target against plain TRL GRPO is `bench/vs_trl.py` (about 30 min); its result
  (`bench/results/vs_trl.json`) is read, not re-measured.

Each section's figures are merged into `bench/results/perf.json` with the time and machine they
were measured on; `--write` renders every section found there into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOP, REPO  # noqa: E402

RESULTS = REPO / "bench" / "results"
PERF_JSON = RESULTS / "perf.json"
VS_TRL_JSON = RESULTS / "vs_trl.json"
GPU_CHECK_JSON = RESULTS / "gpu_check.json"  # bench/gpu_check.py on a GPU
PAGE = REPO / "BENCHMARKS.md"
GOALS = {"p1": 0.7, "p2": 0.05, "p3": 0.25, "p4": 1.5, "p5_insert": 20_000.0, "p5_query_ms": 100.0}
SECTIONS = ("p1", "p2", "p4", "p5", "train")


# ----- the machine ------------------------------------------------------------------------------

def describe_machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "threads": torch.get_num_threads(),
            "memory_gib": round(memory, 1), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(),
            "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16"}),
            "simd": sorted(flags & {"avx2", "avx512f", "amx_tile", "fma"}),
            "load_average": round(os.getloadavg()[0], 2)}


def matmul_peak(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """Best FLOP/s of a square `size` matmul in `dtype_name` on this process's threads (best of
    repeated timings over about `seconds`): the machine's compute limit for dense layers."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for _ in range(2):  # warm-up: the first calls pick kernels and fault in pages
        torch.matmul(a, b)
    while time.perf_counter() < deadline or best == float("inf"):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


# ----- P1: generation against the compute limit -------------------------------------------------

def matmuls_only_tok_s(model, rows: int, seconds: float = 3.0) -> float:
    """tokens/s if a decode step were nothing but its matmuls: every linear layer of `model`
    (and the vocabulary projection) applied to `rows` rows, timed alone (best of repeats). The
    ceiling the thin matrices of decoding allow, below the square-matmul peak."""
    import torch

    shapes = [(m.in_features, m.out_features) for m in model.modules()
              if isinstance(m, torch.nn.Linear)]
    weights = [torch.randn(i, o) for i, o in shapes]
    x = {i: torch.randn(rows, i) for i, _ in shapes}
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        started = time.perf_counter()
        for (i, _), w in zip(shapes, weights):
            torch.mm(x[i], w)
        best = min(best, time.perf_counter() - started)
    return rows / best


def default_prompts(count: int) -> list[list[dict]]:
    """The default task's training prompts (what `loop run arithmetic` samples)."""
    from loop.runs import plan_run

    tasks = plan_run("arithmetic", REPO / "configs" / "default.yaml").tasks
    return [t.prompt for t in tasks.train[:count]]


def default_stage() -> dict:
    """The default job's generate stage: prompts a round, samples per prompt, rows per decoder
    call and the token limit, as `loop run arithmetic --config configs/default.yaml` has them."""
    from loop.runs import plan_run

    config = plan_run("arithmetic", REPO / "configs" / "default.yaml").config
    gen = config.generate
    return {"prompts": config.select.prompts_per_round, "n": gen.n,
            "rows": min(gen.batch_size, config.select.prompts_per_round * gen.n),
            "max_new_tokens": gen.max_new_tokens}


def default_dtype() -> str:
    """The weights' dtype the default job's generate stage loads here (its backend's `dtype`,
    `auto` resolved on this machine)."""
    from loop.runs import plan_run
    from loop_hf.backend import native_dtype

    dtype = plan_run("arithmetic", REPO / "configs" / "default.yaml").config.backend.options.get(
        "dtype", "float32")
    return native_dtype("cpu") if dtype == "auto" else dtype


def section_p1(args) -> dict:
    import torch

    from loop.config import DEFAULT_MODEL
    from loop.schema import ModelRef, Sampling
    from loop_hf.backend import HFBackend, HFOptions, native_dtype
    from loop_hf.decoding import decode_batch

    peaks = {"float32": matmul_peak("float32")}
    machine = describe_machine()
    if machine["bf16_instructions"] or torch.cuda.is_available():
        peaks["bfloat16"] = matmul_peak("bfloat16")
    dtype = default_dtype()
    session = HFBackend().open(ModelRef(base=DEFAULT_MODEL), HFOptions(device="cpu", dtype=dtype))
    model = session.model
    params = sum(p.numel() for p in model.parameters())
    limit = peaks["float32"] / (2 * params)
    new_tokens = 32 if args.quick else 64
    shape = default_stage()
    n, rows = shape["n"], shape["rows"]
    per_call = rows // n  # prompts per decoder call
    prompts = default_prompts(max(64, per_call))
    encoded = [session.encode(p) for p in prompts]

    def forced(prompt_ids: list[list[int]], n: int, per_call_rows: int, model=model) -> float:
        """tokens/s of loop's decoder with no end-of-sequence (every row makes `new_tokens`)."""
        per_call = max(1, per_call_rows // n)
        tokens, started = 0, time.perf_counter()
        for start in range(0, len(prompt_ids), per_call):
            chunk = prompt_ids[start:start + per_call]
            out = decode_batch(model, chunk, n=n, max_new_tokens=new_tokens, temperature=0.7,
                               top_p=1.0, eos_token_ids=set(), pad_token_id=session.pad_token_id,
                               generator=torch.Generator().manual_seed(0))
            tokens += sum(len(d.token_ids) for group in out for d in group)
        return tokens / (time.perf_counter() - started)

    def plain_generate(prompt_ids: list[list[int]], rows: int, stop: bool,
                       max_new: int) -> tuple[float, int]:
        """(useful tokens/s, useful tokens) of transformers' `generate`, static padded batches of
        `rows`, sampling at the default temperature; `stop` False forces `max_new` tokens."""
        tokens, started = 0, time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(prompt_ids), rows):
                chunk = prompt_ids[start:start + rows]
                width = max(map(len, chunk))
                ids = torch.tensor([[session.pad_token_id] * (width - len(c)) + c for c in chunk])
                mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                     temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=max_new,
                                     min_new_tokens=0 if stop else max_new,
                                     pad_token_id=session.pad_token_id)
                for row in out[:, width:].tolist():
                    end = next((i + 1 for i, t in enumerate(row) if t in session.eos_token_ids),
                               len(row)) if stop else len(row)
                    tokens += end
        return tokens / (time.perf_counter() - started), tokens

    torch.manual_seed(0)
    prompts_stage = encoded[:per_call]  # the default generate stage's decoder call
    naive16, _ = plain_generate([p for p in prompts_stage[:16]], 16, stop=False,
                                max_new=new_tokens)
    stage = forced(prompts_stage, n, rows)
    levers = [{"lever": "transformers generate, batch 16 (the reference)", "tok_s": naive16}]
    for smaller in (16, 64, 128):
        if smaller < rows:
            levers.append({"lever": f"loop decoder, {smaller} rows ({smaller // n} prompts x {n})",
                           "tok_s": forced(encoded[:smaller // n], n, smaller)})
    levers += [
        {"lever": f"loop decoder, {rows} rows ({per_call} prompts x {n}): the default stage",
         "tok_s": stage},
        {"lever": f"loop decoder, {rows} rows without shared prefill ({rows} prompts x 1)",
         "tok_s": forced([p for p in prompts_stage for _ in range(n)], 1, rows)},
    ]
    other = "float32" if dtype != "float32" else (
        "bfloat16" if native_dtype("cpu") == "bfloat16" else None)
    if other is not None:  # the same stage with the weights in the other dtype `auto` picks from
        session_other = HFBackend().open(ModelRef(base=DEFAULT_MODEL),
                                         HFOptions(device="cpu", dtype=other))
        levers.append({"lever": f"loop decoder, {rows} rows, {other} weights instead of {dtype}",
                       "tok_s": forced(prompts_stage, n, rows, model=session_other.model)})
        session_other.close()
    if not args.quick:
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
            one = forced(prompts_stage, n, rows)
            torch.set_num_threads(threads)
            levers.append({"lever": f"loop decoder, {rows} rows, 1 thread instead of {threads}",
                           "tok_s": one})
    for lever in levers:
        lever["share_of_limit"] = lever["tok_s"] / limit
    matmuls_only = matmuls_only_tok_s(model, rows)

    # Real answers, as the generate stage makes them (end-of-sequence on, the stage's token
    # limit): what dropping finished rows is worth against static batches.
    sampling = Sampling(n=n, temperature=0.7, top_p=1.0,
                        max_new_tokens=shape["max_new_tokens"], seed=0)
    real_prompts = prompts[: 8 if args.quick else 64]
    started = time.perf_counter()
    generations = session.generate(real_prompts, sampling, batch_size=rows)
    real_tokens = sum(g.completion_tokens for gens in generations for g in gens)
    real_loop = real_tokens / (time.perf_counter() - started)
    repeated = [session.encode(p) for p in real_prompts for _ in range(n)]
    real_plain, plain_tokens = plain_generate(repeated, 16, stop=True,
                                              max_new=shape["max_new_tokens"])
    session.close()
    return {
        "peak_flops": peaks, "params": params, "flops_per_token": 2 * params,
        "limit_tok_s": limit, "new_tokens": new_tokens, "stage": shape, "stage_tok_s": stage,
        "dtype": dtype,
        "ratio": stage / limit, "reference_ratio": naive16 / limit, "levers": levers,
        "matmuls_only_tok_s": matmuls_only, "matmuls_only_ratio": matmuls_only / limit,
        "real": {"loop_tok_s": real_loop, "loop_tokens": real_tokens, "plain16_tok_s": real_plain,
                 "plain16_tokens": plain_tokens, "rows": len(repeated),
                 "max_new_tokens": shape["max_new_tokens"]},
    }


# ----- P2: loop's overhead ----------------------------------------------------------------------

def p2_split(command_wall: float, run: dict) -> tuple[float, float, float]:
    """(start-up and exit, overhead, clock step) in seconds of a `loop run` that took
    `command_wall` by the monotonic clock, from its `loop show --json` time totals `run`.

    Overhead is counted by clocks that cannot step: the command's monotonic time less the work
    (stage timings are monotonic too). The run row's created and finished times are wall-clock
    readings, which a clock stepped during the run (a virtual machine's resync) skews: the step
    is what they hold beyond the whole command."""
    startup = max(0.0, command_wall - run["wall_seconds"])
    overhead = command_wall - run["work_seconds"]
    clock_step = max(0.0, run["wall_seconds"] - command_wall)
    return startup, overhead, clock_step


def section_p2(args) -> dict:
    import shutil

    folder = RESULTS / "p2"  # kept (git-ignored): `loop show perf-p2 --db bench/results/p2/loop.db`
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    db = folder / "loop.db"
    rounds = ["--rounds", str(args.p2_rounds)] if args.p2_rounds else []
    command = [*LOOP, "run", "arithmetic", "--config", str(REPO / "configs" / "default.yaml"),
               *rounds, "--db", str(db), "--name", "perf-p2"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=folder, stdout=subprocess.DEVNULL)
    command_wall = time.perf_counter() - started
    shown = subprocess.run([*LOOP, "show", "perf-p2", "--db", str(db), "--json"], check=True,
                           capture_output=True, text=True)
    data = json.loads(shown.stdout)
    run = data["time"]
    startup, overhead, clock_step = p2_split(command_wall, run)
    stages: dict[str, dict] = {}
    for r in data["rounds"]:
        for name, s in r["time"]["stages"].items():
            total = stages.setdefault(name, {"seconds": 0.0, "work_seconds": 0.0,
                                             "load_seconds": 0.0, "overhead_seconds": 0.0})
            for key in total:
                total[key] += s[key]
    between = sum(r["time"]["between_stages_seconds"] for r in data["rounds"])
    return {"run_command": " ".join(["loop run arithmetic --config configs/default.yaml",
                                     *rounds]),
            "command_wall_s": command_wall, "run_wall_s": run["wall_seconds"],
            "startup_s": startup, "outside_rounds_s": run["outside_rounds_seconds"],
            "between_stages_s": between, "work_s": run["work_seconds"],
            "overhead_s": overhead, "ratio": overhead / command_wall, "stages": stages,
            "clock_step_s": clock_step,
            "pass_at_1": [r["eval"]["pass_at_1"] for r in data["rounds"]]}


# ----- P4 and P5: the sandbox and the store (their own benchmarks) ------------------------------

def section_p4(args) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    programs = 100 if args.quick else 300
    command = [sys.executable, str(REPO / "bench" / "sandbox.py"), "--programs", str(programs),
               "--workers", "4", "--work-ms", "100", "--startup", "30", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0], "command": " ".join(["python", *command[1:-2]])}
    return {**json.loads(out.read_text()), "command": " ".join(["python", *command[1:-2]])
            .replace(str(REPO) + "/", "")}


def section_p5(args) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    attempts = 200_000 if args.quick else 1_000_000
    command = [sys.executable, str(REPO / "bench" / "store.py"), "--attempts", str(attempts),
               "--json", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    return {**data, "command": f"python bench/store.py --attempts {attempts}"}


# ----- training: tokens/s against 6 x parameters ------------------------------------------------

def section_train(args) -> dict:
    """loop's own SFT update (the default method, `loop_trl.sft`, as the train stage calls it)
    on answers of the default task: trained tokens/s with padded batches and with padding-free
    ones, against the limit 6 x parameters FLOPs per token."""
    import torch
    from transformers import AutoModelForCausalLM

    from loop import Attempt, Sample, UpdateContext, resolve_model
    from loop.runs import plan_run
    from loop_trl.sft import SFTOptions, SFTUpdater

    plan = plan_run("arithmetic", REPO / "configs" / "default.yaml")
    config, tasks = plan.config, plan.tasks
    steps = 8 if args.quick else 24
    config.train.max_steps = steps
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(
        resolve_model(config.model), dtype=torch.float32).parameters())
    peak = matmul_peak("float32")
    rng = random.Random(0)
    samples = []
    for i, task in enumerate(tasks.train[: 64 if args.quick else 256]):
        meta = task.metadata
        # answers of the lengths the model writes: terse, or a sentence or two of working
        filler = " ".join(["Adding the tens and then the ones gives the sum."] * rng.randint(0, 6))
        text = f"{filler} {meta['a']} + {meta['b']} = {task.reference}".strip()
        attempt = Attempt(id=f"a{i}", run_id="perf", round_index=1, task_id=task.id,
                          purpose="train", sample_index=0, completion=text,
                          messages=[*task.prompt, {"role": "assistant", "content": text}])
        samples.append(Sample(task=task, attempt=attempt, passed=True, score=1.0, reward=1.0))
    results = {}
    for mode in ("padded", "padding_free"):
        context = UpdateContext(
            run_id="perf", round_index=1, samples=samples, base_model=config.model,
            adapter_in=None, output_dir=Path(tempfile.mkdtemp(prefix="loop-perf-train-")),
            config=config, options=SFTOptions(padding_free=mode == "padding_free"),
            seed=0, model_path=resolve_model(config.model))
        metrics = SFTUpdater().update(context).metrics
        results[mode] = {"tok_s": metrics["train_tokens"] / metrics["train_seconds"],
                         "seconds": metrics["train_seconds"], "tokens": metrics["train_tokens"],
                         "loss": metrics["train_loss"]}
    limit = peak / (6 * params)
    for mode in results.values():
        mode["share_of_limit"] = mode["tok_s"] / limit
    return {"peak_flops": peak, "params": params, "limit_tok_s": limit, "steps": steps,
            "rows": len(samples), "modes": results,
            "speedup": results["padding_free"]["tok_s"] / results["padded"]["tok_s"]}


# ----- the page ---------------------------------------------------------------------------------

def merge(results: dict, sections: dict) -> dict:
    stamp = datetime.now(timezone.utc).isoformat(timespec="minutes")
    for name, figures in sections.items():
        results[name] = {"measured": stamp, "machine": describe_machine(), **figures}
    return results


def render(results: dict) -> str:
    from perf_page import page

    vs_trl = json.loads(VS_TRL_JSON.read_text()) if VS_TRL_JSON.exists() else None
    gpu = json.loads(GPU_CHECK_JSON.read_text()) if GPU_CHECK_JSON.exists() else None
    return page(results, vs_trl, GOALS, gpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which to measure: {','.join(SECTIONS)} (none: only --write)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--p2-rounds", type=int, default=None,
                        help="rounds of the default run measured for p2 (default: the whole run)")
    parser.add_argument("--write", action="store_true", help="render BENCHMARKS.md")
    parser.add_argument("--results", type=Path, default=PERF_JSON)
    args = parser.parse_args()
    wanted = [s for s in args.sections.split(",") if s and s != "none"]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    from loop.allocator import keep_freed_memory

    keep_freed_memory()  # measured as a run runs (loop.runs.drive tunes malloc the same way)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for name in wanted:
        print(f"measuring {name} ...", flush=True)
        started = time.perf_counter()
        figures = globals()[f"section_{name}"](args)
        figures["command"] = figures.get("command") or (
            "python bench/perf.py --sections " + name + (" --quick" if args.quick else ""))
        figures["section_seconds"] = time.perf_counter() - started
        merge(results, {name: figures})
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
        print(json.dumps(figures, indent=1, default=str), flush=True)
    if args.write:
        from perf_page import keep_other_sections

        old = PAGE.read_text() if PAGE.exists() else ""
        PAGE.write_text(keep_other_sections(render(results), old))
        print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
