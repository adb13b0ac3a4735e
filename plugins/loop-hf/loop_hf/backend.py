"""The `hf` generation backend: transformers models (base + LoRA adapter) on CPU or one GPU.

A session loads the model once; the round engine keeps it from a round's evaluation to the next
round's generation (the same checkpoint) and closes it before training, so memory is free for the
trainer. A LoRA adapter is
merged into the weights for generation (same outputs, no adapter overhead per token).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import loop


class HFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32", description=(
            "weights dtype for generation; auto: bfloat16 where the hardware computes it natively "
            "(a CUDA GPU that supports it, a CPU with AMX), float32 elsewhere (the default "
            "task sets auto). Training stays float32; stored log-probabilities are those of the "
            "weights sampled from (BENCHMARKS.md, bf16 generation)"))
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda if present")
    batch_size: int | None = Field(default=None, ge=1, description="rows per decode batch "
                                   "(default: the config's generate/evaluate batch_size)")


def native_dtype(device: str) -> str:
    """What `dtype: auto` loads: "bfloat16" on a CUDA GPU that supports it and on a CPU with AMX
    tiles (Intel Xeon since Sapphire Rapids: bf16 matmuls several times as fast as float32 ones;
    the default task's generate stage about 2.4x, BENCHMARKS.md P1), "float32" elsewhere (a CPU
    without AMX emulates bf16, slower than float32)."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own check (not public)
    try:
        return "bfloat16" if amx is not None and amx() else "float32"
    except RuntimeError:
        return "float32"


def _mapped(path: str, dtype: str) -> bool:
    """Whether transformers hands out views of the checkpoint's memory map: its safetensors hold
    `dtype` already (a conversion to another dtype copies into process memory anyway)."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return False
    with safe_open(str(files[0]), framework="pt") as f:
        names = list(f.keys())
        stored = f.get_slice(names[0]).get_dtype() if names else ""
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(stored) == dtype


def _own_weights(model: Any) -> None:
    """Copy weights that still live in the checkpoint file's memory map into process memory.

    transformers maps a safetensors file whose dtype matches and hands out views of it; merging
    an adapter then writes every page of those views, and each first write is a copy-on-write
    page fault, paid at every evaluation of a new checkpoint. One bulk copy first, into memory a
    run's malloc keeps from the previous stage (loop.allocator), is cheaper: a float32 load of
    the default model with an adapter took about 1.6 s in a run on a 2-core Xeon, 0.6 s after."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


class HFBackend(loop.Backend):
    name = "hf"
    Options = HFOptions

    def prepare(self, model: str) -> str:
        """Resolve (and on first use convert) the model before a run starts, so a bad reference
        is an error before anything is written. The engine hands the folder to updaters as
        `UpdateContext.model_path`."""
        return loop.resolve_model(model)

    def open(self, model: loop.ModelRef, options: BaseModel | None = None) -> "HFSession":
        return HFSession(model, options or HFOptions())


class HFSession(loop.GenerationSession):
    def __init__(self, ref: loop.ModelRef, options: HFOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from loop_hf.models import quiet_transformers

        quiet_transformers()
        started = time.perf_counter()
        self.options = options
        path = loop.resolve_model(ref.base)
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        full_model = bool(ref.adapter) and (Path(ref.adapter) / "config.json").is_file()
        tokenizer_path = path
        if full_model:  # full fine-tuning writes a whole model, not an adapter
            path = ref.adapter
            if (Path(path) / "tokenizer_config.json").is_file():  # else weights only: the base's
                tokenizer_path = path
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        dtype = native_dtype(device) if options.dtype == "auto" else options.dtype
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        if ref.adapter and not full_model:
            from peft import PeftModel

            if device == "cpu" and _mapped(path, dtype):
                _own_weights(model)
            model = PeftModel.from_pretrained(model, ref.adapter).merge_and_unload()
        self.model = model.to(device).eval()
        self.device = device
        self.dtype = dtype  # what `auto` resolved to
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(eos)
        self.chat = loop.TokenizerChat(self.tokenizer)  # token-exact episodes
        self.load_seconds = time.perf_counter() - started
        self.model_seconds = 0.0

    def encode(self, messages: list[loop.Message]) -> list[int]:
        """The prompt's token ids through the tokenizer's chat template."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, prompts: list[list[loop.Message]], sampling: loop.Sampling,
                 progress: Any = None, batch_size: int = 64) -> list[list[loop.Generation]]:
        return self.generate_ids([self.encode(p) for p in prompts], sampling, progress,
                                 batch_size)

    def generate_ids(self, prompts: list[list[int]], sampling: loop.Sampling,
                     progress: Any = None, batch_size: int = 64) -> list[list[loop.Generation]]:
        """`sampling.n` continuations of each token-id prompt (rendered, or an episode's ids so
        far), in the prompts' order."""
        import torch

        from loop_hf.decoding import decode_batch

        batch_rows = self.options.batch_size or batch_size
        encoded = [list(p) for p in prompts]
        # Length-sorted chunks waste less on padding; results go back in the callers' order.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        n = sampling.n if sampling.temperature > 0 else 1
        per_chunk = max(1, batch_rows // n)
        results: list[list[loop.Generation]] = [[] for _ in prompts]
        for chunk_no, start in enumerate(range(0, len(order), per_chunk)):
            chunk = order[start:start + per_chunk]
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed + chunk_no)
            on_token = (lambda rows: progress(tokens=rows)) if progress else None
            decoding = time.perf_counter()
            decoded = decode_batch(
                self.model, [encoded[i] for i in chunk], n=n,
                max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id, generator=generator, on_token=on_token,
            )
            self.model_seconds += time.perf_counter() - decoding
            for i, samples in zip(chunk, decoded):
                gens = [
                    loop.Generation(
                        text=self.tokenizer.decode(s.token_ids, skip_special_tokens=True),
                        token_ids=s.token_ids, prompt_tokens=len(encoded[i]),
                        finish_reason=s.finish_reason, logprobs=s.logprobs,
                    )
                    for s in samples
                ]
                if n < sampling.n:  # greedy: every sample would be the same answer
                    gens = gens * sampling.n
                results[i] = gens
            if progress:
                progress(prompts=len(chunk))
        return results

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

