"""Round adapters on the servers: runtime mode loads each session's adapter into every endpoint
under a fresh name, generates with that name and unloads it on close; fixed mode refuses to
generate with an adapter at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_fake_server import FakeOpenAIServer

from loop import ModelRef, Sampling
from loop_openai import EndpointError, OpenAIBackend, OpenAIOptions
from loop_openai.lora import AdapterNotServable

PROMPT = [[{"role": "user", "content": "2+2="}]]


@pytest.fixture
def two_servers():
    servers = [FakeOpenAIServer().start(), FakeOpenAIServer().start()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def adapter(tmp_path) -> Path:
    folder = tmp_path / "runs" / "r1" / "round-1" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    return folder


def open_session(servers, adapter=None, **options):
    opts = OpenAIOptions(endpoints=[s.url for s in servers], backoff_s=0.01, **options)
    return OpenAIBackend().open(ModelRef(base="base-model", adapter=adapter and str(adapter)),
                                opts)


def loads(server):
    return [r["body"] for r in server.requests if r["path"] == "/v1/load_lora_adapter"]


def test_runtime_loads_into_every_endpoint_with_fresh_names(two_servers, adapter, monkeypatch):
    a, b = two_servers
    monkeypatch.chdir(adapter.parent)  # the path sent must not depend on the working directory
    first = open_session(two_servers, Path("adapter"))
    name = first.adapter_name
    assert name.startswith("loop-round-1-")
    for server in two_servers:
        assert loads(server) == [{"lora_name": name, "lora_path": str(adapter.resolve())}]
        assert server.adapters == {name: str(adapter.resolve())}
    out = first.generate(PROMPT * 4, Sampling(n=2))
    assert all(g.text.startswith(f"{name}|") for gens in out for g in gens)
    assert {r["body"]["model"] for s in two_servers for r in s.chat_requests()} == {name}
    first.close()
    assert a.adapters == b.adapters == {}
    first.close()  # closing twice is harmless
    second = open_session(two_servers, adapter)
    assert second.adapter_name != name  # never reused: no stale state from an earlier load
    assert [body["lora_name"] for body in loads(a)] == [name, second.adapter_name]
    second.close()


def test_without_an_adapter_the_base_model_is_used(two_servers):
    s = open_session(two_servers, lora="fixed")
    out = s.generate(PROMPT, Sampling())
    assert out[0][0].text.startswith("base-model|")
    assert not any(loads(server) for server in two_servers)


def test_fixed_mode_refuses_an_adapter(two_servers, adapter):
    with pytest.raises(AdapterNotServable) as info:
        open_session(two_servers, adapter, lora="fixed")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the servers' model is fixed (backend.options.lora=fixed), so "
                              "this config is evaluation-only (--rounds 0)")
    assert str(adapter) in message
    assert not any(loads(server) for server in two_servers)


def test_the_backend_says_whether_it_can_load_adapters():
    backend = OpenAIBackend()
    for mode, expected in (("runtime", True), ("fixed", False)):
        backend.options = OpenAIOptions(endpoints=["http://a/v1"], lora=mode)
        assert backend.can_load_adapters is expected


def test_a_server_without_runtime_lora_is_explained_and_the_others_cleaned_up(adapter):
    with FakeOpenAIServer() as good, FakeOpenAIServer(lora=False) as plain:
        with pytest.raises(EndpointError) as info:
            open_session([good, plain], adapter)
        assert str(info.value) == (
            f"endpoint {plain.url} cannot load LoRA adapters at runtime (POST /load_lora_adapter "
            "answered HTTP 404): start vllm serve with --enable-lora and the environment variable "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set backend.options.lora=fixed for an "
            "evaluation-only run")
        assert len(loads(good)) == 1 and good.adapters == {}  # loaded, then unloaded again


def test_full_model_and_non_adapter_folders_are_refused(two_servers, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    with pytest.raises(AdapterNotServable, match="is a full model"):
        open_session(two_servers, full)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterNotServable, match="not a LoRA adapter folder"):
        open_session(two_servers, empty)
