"""The fake vllm's platform: always CPU."""

from types import SimpleNamespace

current_platform = SimpleNamespace(is_cpu=lambda: True, device_name="cpu")
