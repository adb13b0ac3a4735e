"""A round's LoRA adapter on the servers, through vLLM's runtime adapter API.

`POST {base}/load_lora_adapter {"lora_name", "lora_path"}` registers an adapter folder (read by
the server, so the path must be visible to it) under a name; requests then name it as their
`model`; `POST {base}/unload_lora_adapter {"lora_name"}` drops it. vLLM offers these routes
only when started with `--enable-lora` (and `--max-lora-rank` at least the adapter's rank) and
the environment variable `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.

Every session loads its adapter under a fresh name. Reloading a name that was used before can
serve stale cached state (vllm#42125), and a resumed run may retrain a round into the same
folder, so a name is never reused. Sessions unload their adapter when they close.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import replace
from pathlib import Path

import httpx

from loop_openai.pool import EndpointPool
from loop_openai.transport import EndpointError, RetryPolicy, send

SETUP_HINT = ("start vllm serve with --enable-lora and the environment variable "
              "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set backend.options.lora=fixed for an "
              "evaluation-only run")


UNLOAD_TIMEOUT_S = 10.0  # closing a session must not hang on a server that stopped answering


class AdapterNotServable(ValueError):
    """This configuration cannot generate with the round's adapter; `str()` is one line."""


def check_servable(adapter: str, mode: str) -> None:
    """Raise AdapterNotServable unless `adapter` can be loaded at runtime in this `mode`."""
    if mode == "fixed":
        raise AdapterNotServable(
            f"the servers' model is fixed (backend.options.lora=fixed), so this config is "
            f"evaluation-only (--rounds 0); it cannot generate with the trained adapter "
            f"{adapter} (use lora: runtime to load adapters into vllm serve)")
    folder = Path(adapter)
    if (folder / "config.json").is_file():
        raise AdapterNotServable(
            f"{adapter} is a full model (full fine-tuning), which a running server cannot load; "
            "train a LoRA adapter (train.lora.enabled=true) to use the openai backend")
    if not (folder / "adapter_config.json").is_file():
        raise AdapterNotServable(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")


def fresh_name(adapter: str) -> str:
    """A name never used before, readable in the server's logs: loop-<round folder>-<random>."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(adapter).resolve().parent.name)[:40] or "adapter"
    return f"loop-{label}-{secrets.token_hex(4)}"


async def load(client: httpx.AsyncClient, pool: EndpointPool, policy: RetryPolicy,
               headers: dict[str, str], name: str, adapter: str) -> None:
    """Load `adapter` as `name` into every endpoint; on any failure unload it from those that
    took it and raise the first error."""
    body = {"lora_name": name, "lora_path": str(Path(adapter).resolve())}
    urls = [e.url for e in pool.endpoints]
    results = await asyncio.gather(
        *(send(client, pool, policy, "POST", "/load_lora_adapter", body, headers, url=url)
          for url in urls),
        return_exceptions=True)
    failed = [(url, r) for url, r in zip(urls, results) if isinstance(r, BaseException)]
    if not failed:
        return
    await unload(client, pool, policy, headers, name,
                 [url for url, r in zip(urls, results) if not isinstance(r, BaseException)])
    url, error = failed[0]
    if isinstance(error, EndpointError) and error.status in (404, 405):
        raise EndpointError(f"endpoint {url} cannot load LoRA adapters at runtime (POST "
                            f"/load_lora_adapter answered HTTP {error.status}): {SETUP_HINT}",
                            status=error.status)
    raise error


async def unload(client: httpx.AsyncClient, pool: EndpointPool, policy: RetryPolicy,
                 headers: dict[str, str], name: str, urls: list[str]) -> None:
    """Best effort, one try each: a server that is gone has dropped the adapter anyway."""
    once = replace(policy, retries=0, timeout_s=min(policy.timeout_s, UNLOAD_TIMEOUT_S))
    await asyncio.gather(
        *(send(client, pool, once, "POST", "/unload_lora_adapter", {"lora_name": name}, headers,
               url=url) for url in urls),
        return_exceptions=True)
