"""What the session needs to know about a model before the worker loads it, read from its files.

Model references resolve exactly as in the hf backend (`loop.resolve_model`: the embedded
alias converts once into a cached HF folder), and an adapter folder is read the same
way: a folder with config.json is a fully fine-tuned model that replaces the base; otherwise it
is a PEFT LoRA adapter served through a LoRARequest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import loop


@dataclass(frozen=True)
class ModelFiles:
    """`model`: the folder (or hub id) vLLM loads and the tokenizer comes from; `adapter`: a
    LoRA adapter folder served on top of it, or None; `adapter_rank`: its largest rank."""

    model: str
    adapter: str | None
    adapter_rank: int | None


def locate(ref: loop.ModelRef) -> ModelFiles:
    """Resolve a ModelRef into the files to load; ModelNotFound / ValueError with one line."""
    base = loop.resolve_model(ref.base)
    if not ref.adapter:
        return ModelFiles(base, None, None)
    adapter = Path(ref.adapter)
    if (adapter / "config.json").is_file():  # full fine-tuning writes a whole model
        return ModelFiles(str(adapter), None, None)
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"{ref.adapter}: neither a LoRA adapter (adapter_config.json) nor a "
                         "model folder (config.json)")
    return ModelFiles(base, str(adapter.resolve()), adapter_rank(adapter))


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in a PEFT adapter (its `r`, or a larger one in `rank_pattern`)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    patterns = config.get("rank_pattern") or {}
    ranks = [int(config.get("r") or 8), *(int(r) for r in patterns.values())]
    return max(ranks)


def position_limit(model: str) -> int | None:
    """The model's maximum sequence length from its config.json (None when not stated, or for
    a hub id whose files are not local)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    for section in (config, config.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_model_len(model: str, max_model_len: int | None) -> None:
    """Refuse a max_model_len above what the model's positions allow, before any worker starts."""
    limit = position_limit(model)
    if max_model_len is not None and limit is not None and max_model_len > limit:
        raise ValueError(f"backend.options.max_model_len={max_model_len} is above the model's "
                         f"limit of {limit} tokens (max_position_embeddings in "
                         f"{model}/config.json)")


def eos_token_ids(model: str, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation config plus the tokenizer's EOS,
    the same set the hf backend stops at."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model)
    except OSError:  # no generation_config.json: transformers derives it from config.json
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))
    eos = generation.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
