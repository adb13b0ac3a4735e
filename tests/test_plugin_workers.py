"""Plugins out of process (loop.plugin_workers): a verifier, reward function or critic that exits,
segfaults, passes its memory cap, is SIGKILLed (as the OOM killer does), hangs in C code or
raises costs only the items it was working on; the worker is replaced and the round goes on.

Every fault here is real: os._exit, a NULL read through ctypes, a 10 GB allocation under a
256 MiB cap, a SIGKILL, a C call that sleeps and a C loop that holds the GIL."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

import pytest
from typer.testing import CliRunner

import loop
from loop import plugin_workers
from loop.cli import app
from loop.config import LoopConfig
from loop.guarded import call_critic, call_reward, safe_verify, safe_verify_batch
from loop.resolve import Chosen, Components
from loop.schema import Attempt, Critique, Task, Verdict
from tiny_model import scripted_run

TASK = Task(source="s", split="train", prompt=[{"role": "user", "content": "1+1="}], reference="2")
POISON = "poison"
# the chunk: the poisoned answer between right and wrong ones
ANSWERS = ["2", "3", POISON, "2"]
TIMEOUT = 0.5


def _items(answers=ANSWERS):
    return [(TASK, Attempt(id=f"att-{i}", run_id="r", round_index=1, task_id=TASK.id,
                           purpose="train", sample_index=i, messages=[], completion=text))
            for i, text in enumerate(answers)]


def _exit():
    os._exit(3)


def _segfault():
    ctypes.string_at(0)


def _allocate():
    return bytearray(10 * 2**30)  # 10 GB, far past the 256 MiB cap


def _sigkill():
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer sends


def _sleep_in_c():
    time.sleep(60)  # one C call


def _busy_in_c():
    sum(range(10**13))  # a C loop that never releases the GIL


def _raise():
    raise RuntimeError("plugin bug")


# behaviour, the error kind of the poisoned item's verdict, its reason, whether the worker is
# replaced
FAULTS = {
    "os._exit": (_exit, "infra", "its worker process exited with code 3", True),
    "segfault": (_segfault, "infra",
                 "its worker process was killed by SIGSEGV (segmentation fault)", True),
    "memory-cap": (_allocate, "infra", "raised MemoryError (past the worker's memory cap of "
                   "256 MiB: plugins.memory_mb)", True),
    "sigkill-oom": (_sigkill, "infra", "its worker process was killed by SIGKILL (killed: out "
                    "of memory (the kernel's OOM killer) or by another process)", True),
    "sleep-in-c": (_sleep_in_c, "timeout", f"did not return within {TIMEOUT:g} s", True),
    "busy-gil": (_busy_in_c, "timeout", f"did not return within {TIMEOUT:g} s", True),
    "raises": (_raise, "infra", "raised RuntimeError: plugin bug", False),
}
HANGS = ("sleep-in-c", "busy-gil")


def _faults(hangs_are_slow: bool = True) -> list:
    """The faults as parameters; a hang in a whole chunk's call waits out the chunk's limit and
    then the item's own (about 3 s): slow."""
    return [pytest.param(name, id=name, marks=[pytest.mark.slow] if hangs_are_slow and
                         name in HANGS else []) for name in FAULTS]


def _judge(text: str) -> Verdict:
    right = text == TASK.reference
    return Verdict(passed=right, score=float(right), error_kind=None if right else "model",
                   feedback=f"judged in {os.getpid()}")


class PerItem(loop.Verifier):
    """Keeps the default verify_batch: the engine calls verify item by item."""

    name = "per_item"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def verify(self, task, attempt):
        if attempt.completion == POISON:
            self.behaviour()
        return _judge(attempt.completion)


class Batch(loop.Verifier):
    """Overrides verify_batch: the poisoned answer takes down the whole chunk's call."""

    name = "batch"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def verify_batch(self, items):
        if any(a.completion == POISON for _, a in items):
            self.behaviour()
        return [_judge(a.completion) for _, a in items]


def _reward(behaviour):
    def shaky(prompts, completions, **kwargs):
        texts = [c[0]["content"] for c in completions]
        if POISON in texts:
            behaviour()
        return [float(t == TASK.reference) for t in texts]

    return shaky


class Reviewer(loop.Critic):
    """Keeps the default critique_batch (critique per item): it runs in a worker."""

    name = "reviewer"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def critique(self, task, attempt, verdicts):
        if attempt.completion == POISON:
            self.behaviour()
        return Critique(kind="wrong_answer", text=f"{attempt.completion} is wrong")


def _pool(*, verifiers=(), rewards=(), critics=(), memory_mb=256):
    config = LoopConfig.model_validate({"verify": {"timeout_s": TIMEOUT},
                                        "plugins": {"memory_mb": memory_mb}})
    components = Components(None, None, list(verifiers), list(rewards), None, list(critics))
    return plugin_workers.pool_for(components, config)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("kind,fault", [
    *[pytest.param(PerItem, *p.values, id=f"PerItem-{p.id}") for p in _faults(False)],
    *[pytest.param(Batch, *p.values, id=f"Batch-{p.id}", marks=p.marks) for p in _faults()]])
def test_a_verifier_fault_costs_only_its_item_and_the_worker_is_replaced(kind, fault):
    behaviour, error_kind, reason, replaced = FAULTS[fault]
    chosen = Chosen(kind.name, kind(behaviour), None, "evil-plugin")
    items = _items()
    with _pool(verifiers=[chosen]) as pool:
        before = pool.pids()
        started = time.perf_counter()
        verdicts = safe_verify_batch(chosen, items, TIMEOUT)
        elapsed = time.perf_counter() - started
        after = pool.pids()
        again = safe_verify_batch(chosen, _items(["2", "5"]), TIMEOUT)  # a later call works
    if kind is Batch and fault == "raises":
        # an exception is no crash: as in process, the whole call's items get its verdict
        poisoned = range(len(items))
    else:
        poisoned = [ANSWERS.index(POISON)]
    for i, (verdict, (_, attempt)) in enumerate(zip(verdicts, items)):
        if i in poisoned:
            assert (verdict.passed, verdict.error_kind) == (False, error_kind)
            assert verdict.feedback == (f"verifier {kind.name!r} (plugin evil-plugin) on "
                                        f"attempt {attempt.id}: {reason}")
        else:  # judged normally, in a worker, not here
            right = attempt.completion == "2"
            assert (verdict.passed, verdict.error_kind) == (right, None if right else "model")
            assert verdict.feedback.startswith("judged in ")
            assert int(verdict.feedback.split()[-1]) != os.getpid()
    if fault == "raises":
        assert verdicts[ANSWERS.index(POISON)].details["where"].startswith(__file__)
    # a chunk that ends its worker is tried again item by item: the poisoned item ends another
    assert (after != before) is replaced
    assert pool.replaced == (0 if not replaced else 2 if kind is Batch else 1)
    assert all(_gone(pid) for pid in set(before) - set(after))
    assert [(v.passed, v.error_kind) for v in again] == [(True, None), (False, "model")]
    assert all(_gone(pid) for pid in after)  # the pool's workers end with it
    # the chunk's limit is 4 x 0.5 s, then the hanging item's own 0.5 s on the retry
    assert elapsed < 15


@pytest.mark.parametrize("fault", _faults(False))
def test_a_single_verify_call_in_a_worker(fault):
    behaviour, error_kind, reason, replaced = FAULTS[fault]
    chosen = Chosen("per_item", PerItem(behaviour), None, "evil-plugin")
    (_, poisoned), (_, fine) = _items([POISON, "2"])
    with _pool(verifiers=[chosen]) as pool:
        verdict = safe_verify(chosen, TASK, poisoned, TIMEOUT)
        assert safe_verify(chosen, TASK, fine, TIMEOUT).passed
        assert pool.replaced == int(replaced)
    assert (verdict.error_kind, verdict.feedback) == (
        error_kind, f"verifier 'per_item' (plugin evil-plugin) on attempt att-0: {reason}")


@pytest.mark.parametrize("fault", _faults())
def test_a_reward_fault_gives_null_for_its_answer_only(fault):
    behaviour, _, reason, replaced = FAULTS[fault]
    chosen = Chosen("shaky", _reward(behaviour), None, "evil-plugin")
    attempts = [a for _, a in _items()]
    warnings: list[str] = []
    failures: list[str] = []
    with _pool(rewards=[chosen]) as pool:
        values = call_reward(chosen, attempts, {TASK.id: TASK}, {a.id: {} for a in attempts},
                             TIMEOUT, warnings.append, failures)
        again = call_reward(chosen, attempts[:2], {TASK.id: TASK}, {a.id: {} for a in attempts},
                            TIMEOUT, warnings.append)
        assert pool.replaced == 2 * replaced  # the call's worker, then the retried item's
    assert again == [1.0, 0.0]
    if fault == "raises":  # as in process: the call failed, every value of it is NULL
        assert values == [None] * 4 and failures == [reason] * 4
        assert warnings[0].startswith(f"reward 'shaky' (plugin evil-plugin) failed: {reason} "
                                      "(at ")
        return
    assert values == [1.0, 0.0, None, 1.0]  # NULL, never 0, and only the poisoned answer's
    assert failures == [reason]
    whole = reason.replace(f"{TIMEOUT:g} s", f"{4 * TIMEOUT:g} s")  # the call's limit
    at = f" (at {__file__}:{_allocate.__code__.co_firstlineno + 1} in _allocate)" \
        if fault == "memory-cap" else ""  # an exception's frame is named
    assert warnings == [
        f"reward 'shaky' (plugin evil-plugin) failed: {whole}; calling it again answer by answer",
        f"reward 'shaky' (plugin evil-plugin) failed on attempt att-2: {reason}{at}; stored NULL"]


@pytest.mark.parametrize("fault", _faults())
def test_a_critic_fault_costs_only_its_critique(fault):
    behaviour, _, reason, replaced = FAULTS[fault]
    chosen = Chosen("reviewer", Reviewer(behaviour), None, "evil-plugin")
    items = [(task, attempt, {}) for task, attempt in _items()]
    warnings: list[str] = []
    with _pool(critics=[chosen]) as pool:
        assert pool.serves(chosen.component)
        results = call_critic(chosen, items, None, warnings.append)
        again = call_critic(chosen, items[:2], None, warnings.append)
        assert pool.replaced == 2 * replaced  # the call's worker, then the retried item's
    assert [c.text for c in again] == ["2 is wrong", "3 is wrong"]
    if fault == "raises":  # as in process: the critic failed, no critique from it
        assert results is None
        assert warnings == [f"critic 'reviewer' (plugin evil-plugin) failed: {reason}; no "
                            "critique from it"]
        return
    assert [c and c.text for c in results] == ["2 is wrong", "3 is wrong", None, "2 is wrong"]
    assert warnings == [f"critic 'reviewer' (plugin evil-plugin) failed on attempt att-2: "
                        f"{reason}; no critique from it"]


class Echo(loop.CriticContext):
    """The policy model as a model critic sees it (here: the process it runs in)."""

    def generate(self, prompts, max_new_tokens=256):
        return [f"reviewed in {os.getpid()}" for _ in prompts]


class ModelCritic(loop.Critic):
    name = "model_critic"

    def critique_batch(self, items, context):
        return [Critique(kind="wrong_answer", text=text)
                for text in context.generate([[] for _ in items])]


def test_a_critic_that_uses_the_model_runs_in_this_process():
    chosen = Chosen("model_critic", ModelCritic(), None, "p")
    items = [(task, attempt, {}) for task, attempt in _items(["3"])]
    with _pool(critics=[chosen]) as pool:
        assert not pool.serves(chosen.component)
        results = call_critic(chosen, items, Echo(), pytest.fail)
    assert [c.text for c in results] == [f"reviewed in {os.getpid()}"]


def test_results_that_cannot_be_pickled_are_an_infra_verdict_and_the_worker_goes_on():
    class Unpicklable(loop.Verifier):
        name = "unpicklable"

        def verify(self, task, attempt):
            if attempt.completion == POISON:
                return Verdict(passed=True, details={"fn": lambda: None})
            return _judge(attempt.completion)

    chosen = Chosen("unpicklable", Unpicklable(), None, "p")
    with _pool(verifiers=[chosen]) as pool:
        verdicts = safe_verify_batch(chosen, _items([POISON, "2"]), TIMEOUT)
        assert pool.replaced == 0
    assert verdicts[0].error_kind == "infra"
    assert "returned a value that cannot be sent back from its worker process" in \
        verdicts[0].feedback
    assert verdicts[1].passed


def test_no_pool_outside_a_run_and_none_in_process_mode():
    chosen = Chosen("per_item", PerItem(_raise), None, "p")
    assert plugin_workers.current() is None
    [(_, attempt)] = _items(["2"])
    assert safe_verify(chosen, TASK, attempt).feedback == f"judged in {os.getpid()}"
    config = LoopConfig.model_validate({"plugins": {"isolation": "in_process"}})
    with plugin_workers.pool_for(Components(None, None, [chosen], [], None), config) as pool:
        assert pool is None and plugin_workers.current() is None


# ----- through `loop run` ------------------------------------------------------------------------

CRASHY = '''
import ctypes
import os
import loop
from loop.schema import Verdict

class Crashy(loop.Verifier):
    """Segfaults on answers ending in 1, else exact match; the feedback names its process."""
    name = "crashy"
    def verify(self, task, attempt):
        text = attempt.completion.strip()
        if text.endswith("1"):
            ctypes.string_at(0)
        right = text == task.reference
        return Verdict(passed=right, score=float(right), error_kind=None if right else "model",
                       feedback=f"pid {os.getpid()}")

@loop.hookimpl
def register_verifiers(register):
    register(Crashy())
'''

RUN_ARGS = ("--rounds", "1", "--set", "task.verifiers=[crashy]", "--set", "verify.timeout_s=5",
            "--set", "select.prompts_per_round=4", "--set", "generate.temperature=1.0",
            "--set", "generate.n=2", "--set", "generate.max_new_tokens=5",
            "--set", "evaluate.problems=4", "--set", "evaluate.max_new_tokens=5")


def _crashy_run(tmp_path, *args):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "crashy.py").write_text(CRASHY)
    return scripted_run(tmp_path, *RUN_ARGS, *args, name="crashy")


def test_a_run_whose_verifier_segfaults_on_some_answers_finishes_and_counts_them(tmp_path):
    result, conn = _crashy_run(tmp_path)
    assert result.exit_code == 0, result.output
    completions = {r["id"]: r["completion"].strip()
                   for r in conn.execute("select id, completion from attempts")}
    poisoned = {i for i, text in completions.items() if text.endswith("1")}
    assert poisoned and len(poisoned) < len(completions)
    verdicts = {r["attempt_id"]: r for r in conn.execute(
        "select attempt_id, passed, error_kind, feedback from verdicts")}
    assert set(verdicts) == set(completions)
    pids = set()
    for attempt_id, row in verdicts.items():
        if attempt_id in poisoned:
            assert (row["passed"], row["error_kind"], row["feedback"]) == (
                0, "infra", f"verifier 'crashy' (plugin file:crashy.py) on attempt {attempt_id}: "
                            "its worker process was killed by SIGSEGV (segmentation fault)")
        else:
            right = row["passed"] == 1
            assert row["error_kind"] == (None if right else "model")
            pids.add(int(row["feedback"].split()[-1]))
    assert os.getpid() not in pids  # judged in workers, replacements after each crash
    assert all(_gone(pid) for pid in pids)  # none outlives the run
    rewards = {r[0]: r[1] for r in conn.execute("select attempt_id, value from rewards")}
    train = {r[0] for r in conn.execute("select id from attempts where purpose = 'train'")}
    assert {i for i, v in rewards.items() if v is None} == train & poisoned  # NULL, never 0
    shown = json.loads(CliRunner().invoke(app, ["show", "crashy", "--db",
                                                str(tmp_path / "loop.db"), "--json"]).output)
    round_of = {r[0]: r[1] for r in conn.execute("select id, round_idx from attempts")}
    for idx in (0, 1):
        assert shown["rounds"][idx]["errors"]["verifier"] == \
            sum(round_of[i] == idx for i in poisoned)
    assert shown["rounds"][1]["errors"]["verifier"] > 0
    assert shown["run"]["status"] == "finished"


PID_VERIFIER = '''
import os
import loop
from loop.schema import Verdict

class Where(loop.Verifier):
    """Passes everything; the feedback names the process that judged."""
    name = "where"
    def verify(self, task, attempt):
        return Verdict(passed=True, feedback=f"pid {os.getpid()}")

@loop.hookimpl
def register_verifiers(register):
    register(Where())
'''


@pytest.mark.parametrize("isolation", ["process", "in_process"])
def test_one_worker_serves_the_whole_run_and_in_process_runs_here(tmp_path, isolation):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "where.py").write_text(PID_VERIFIER)
    result, conn = scripted_run(tmp_path, *RUN_ARGS, "--set", "task.verifiers=[where]",
                                "--set", f"plugins.isolation={isolation}", name="where")
    assert result.exit_code == 0, result.output
    pids = {int(r[0].split()[-1]) for r in conn.execute("select feedback from verdicts")}
    if isolation == "in_process":
        assert pids == {os.getpid()}
    else:  # started once per run, not per call: one worker judged all of both rounds
        assert len(pids) == 1 and os.getpid() not in pids
        assert _gone(pids.pop())


def test_plugins_config_is_checked():
    from loop.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"plugins.isolation: Input should be 'process' or "
                                          r"'in_process'"):
        build_config("arithmetic", sets=["plugins.isolation=thread"], environ={})
    assert build_config("arithmetic", environ={"LOOP_PLUGINS__MEMORY_MB": "512"}
                        ).plugins.memory_mb == 512
    assert sys.platform.startswith("linux")  # the fork-based pool's platform
