"""loop-vllm: the vLLM generation backend. The package itself imports nothing, so the worker
(`python -m loop_vllm.worker`) runs in an interpreter that has vllm but not loop."""
