"""The `python` environment: registered through the hook as any plugin's, its tool's code run for
real in loop-code's sandbox, results in the next turn and in the stored turns, hostile code a
tool message with an error (never a crash, never outside the sandbox), and a run whose rows are
exactly what the sandbox computed, killed mid-episode and resumed onto the same rows. Needs root
(as CI and containers), like the sandbox tests."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import loop
import loop.testing
import loop_code
from loop.episodes import EpisodeSettings, run_episodes
from loop_code.python_env import PythonEnvironment, clip
from loop_code.sandbox import BASE_UID

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "tasks" / "gsm8k-sample.jsonl"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs "
                                "as root)")


def call(code: str) -> str:
    return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) \
        + "</tool_call>"


def environment(**options) -> PythonEnvironment:
    env = PythonEnvironment()
    env.options = env.Options(**{"timeout_s": 2.0, "cpu_s": 2, **options})
    return env


def settings(**kw) -> EpisodeSettings:
    return EpisodeSettings(**{"max_turns": 8, "max_tokens": 200_000, "tool_timeout_s": 10,
                              "environment": "python", **kw})


def task(question: str, reference: str = "0") -> loop.Task:
    return loop.Task(source="t", split="train", reference=reference,
                     prompt=[{"role": "user", "content": question}])


def first_expressions() -> dict[str, str]:
    """question -> the first calculation of its worked solution (`<<12+7=19>>` gives 12+7)."""
    out = {}
    for line in SAMPLE.read_text().splitlines():
        row = json.loads(line)
        out[row["question"]] = re.findall(r"<<([^=>]+)=", row["answer"])[0]
    return out


def test_registered_through_the_hook_with_the_verifiers_options():
    pm = loop.get_plugin_manager(load_entrypoints=False)
    pm.register(loop_code, name="code")
    registry = loop.build_registry(pm)
    assert registry.plugin_of("environments", "python") == "code"
    from loop.config import ConfigError, LoopConfig
    from loop.resolve import resolve_components

    config = LoopConfig.model_validate({
        "task": {"source": "code-easy", "verifiers": [], "rewards": [],
                 "environment": {"name": "python", "options": {"timeout_s": 3, "cpu_s": 3}}},
        "backend": "scripted", "train": {"method": "noop"}})
    chosen = resolve_components(config, registry).environment.component
    assert isinstance(chosen, PythonEnvironment)
    assert (chosen.options.timeout_s, chosen.options.memory_mb) == (3.0, 1024)
    assert chosen.options.limits().wall_s == 3.0
    bad = config.model_copy(deep=True)
    bad.task.environment.options = {"timeout": 3}
    with pytest.raises(ConfigError, match="timeout"):
        resolve_components(bad, registry)


def test_the_tool_result_is_computed_in_the_sandbox_and_read_in_the_next_turn():
    expressions = first_expressions()
    seen = []

    def respond(prompt, k, sampling):
        seen.append(prompt)
        results = [m["content"] for m in prompt if m["role"] == "tool"]
        question = next(m["content"] for m in prompt if m["role"] == "user")
        if not results:
            return "Let me compute.\n" + call(f"print({expressions[question]})")
        if len(results) == 1:  # who runs it: a sandbox uid, alone in its PID namespace
            return call("import os\nprint(os.getuid(), sorted(int(p) for p in os.listdir"
                        "('/proc') if p.isdigit()))")
        return f"The answer is {results[0]}."

    session = loop.testing.ScriptedBackend(respond=respond).open(loop.ModelRef(base="x"))
    env = environment()
    questions = list(expressions)[:4]
    out = run_episodes(session, env, [task(q) for q in questions],
                       loop.Sampling(n=1, temperature=1.0, max_new_tokens=500), settings())
    for question, (episode,) in zip(questions, out):
        value = eval(expressions[question])  # the test's own arithmetic, outside the sandbox
        assert [t.role for t in episode.turns] == ["assistant", "tool"] * 2 + ["assistant"]
        first, who = episode.turns[1], episode.turns[3]
        assert (first.name, first.text, first.error) == ("python", str(value), None)
        assert first.arguments == {"code": f"print({expressions[question]})"}
        uid, pids = who.text.split(" ", 1)
        assert BASE_UID <= int(uid) < BASE_UID + 64 and json.loads(pids)[0] == 1
        assert episode.completion == f"The answer is {value}."
        assert episode.end_reason == "answer" and episode.tools == ["python"]
        assert episode.env_error is None and episode.env_reward is None  # verifiers judge
        # the model's next turn was sampled on a prompt holding the sandbox's output
        later = next(p for p in seen if sum(m["role"] == "tool" for m in p) == 1
                     and next(m["content"] for m in p if m["role"] == "user") == question)
        assert (later[-1]["role"], later[-1]["content"]) == ("tool", str(value))
    assert "python" in out[0][0].prompt[0]["content"]  # the tool's description


HOSTILE = {
    "infinite_loop": ("while True:\n    pass", "ran past the 2 s limit"),
    "write_outside": ("open({canary!r}, 'w').write('owned')\n", "FileNotFoundError"),
    "overwrite_system": ("open('/usr/lib/os-release', 'a').write('x')",
                         ("PermissionError", "Read-only file system")),
    "huge_output": ("print('x' * 5_000_000)", "over the 1024 KiB limit"),
    "output_flood": ("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)",
                     "ran past the 2 s limit"),
    "memory": ("block = bytearray(8 * 2**30)", "MemoryError"),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "BlockingIOError"),
    "kill_all": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')",
                 "ProcessLookupError"),  # nothing else of its own to reach
    "segfault": ("import ctypes\nctypes.string_at(0)",
                 "ended before it finished (killed by SIGSEGV)"),
    "exit": ("import sys\nprint('bye')\nsys.exit(3)", "sys.exit(3)"),
    "syntax": ("def f(:\n    pass", "SyntaxError"),
    "raises": ("print('before')\nraise ValueError('nope')", "ValueError: nope"),
}


def test_hostile_code_is_a_tool_message_with_an_error_and_the_episode_goes_on(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    programs = [code.format(canary=str(canary)) for code, _ in HOSTILE.values()]

    def respond(prompt, k, sampling):
        done = sum(m["role"] == "tool" for m in prompt)
        return call(programs[done]) if done < len(programs) else "The answer is 0."

    session = loop.testing.ScriptedBackend(respond=respond).open(loop.ModelRef(base="x"))
    started = time.monotonic()
    episode = run_episodes(session, environment(), [task("?")],
                           loop.Sampling(n=1, temperature=0.0, max_new_tokens=500),
                           settings(max_turns=len(programs) + 1))[0][0]
    seconds = time.monotonic() - started
    tools = [t for t in episode.turns if t.role == "tool"]
    assert len(tools) == len(HOSTILE)
    for (name, (_, expected)), turn in zip(HOSTILE.items(), tools):
        wanted = (expected,) if isinstance(expected, str) else expected
        assert turn.error is not None and any(w in turn.error for w in wanted), (name, turn.error)
        assert turn.text.startswith("Error: tool python raised PythonError: "), name
        assert len(turn.text) <= 2100, name  # cut to size, even for 5 MB of output
    by_name = dict(zip(HOSTILE, tools))
    assert "before" in by_name["raises"].text and "Traceback" in by_name["raises"].text
    assert "bye" in by_name["exit"].text  # what it printed before it failed
    assert episode.end_reason == "answer" and episode.env_error is None
    assert episode.completion == "The answer is 0."
    assert canary.read_text() == "untouched"
    assert seconds < 60  # two wall-clock kills of 2 s: nothing waits for the infinite loop
    # nothing of the sandboxes is left running (a process that has just died may stay a zombie
    # for a moment on a busy machine until its parent reaps it)
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _uid(p) is not None and BASE_UID <= _uid(p) < BASE_UID + 64]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left


def _uid(proc: Path) -> int | None:
    try:
        status = (proc / "status").read_text()
    except OSError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_output_is_cut_to_output_chars_keeping_head_and_tail():
    env = environment(output_chars=300)
    episode = env.episode(task("?"))
    text = episode.python("print('A' * 200 + 'B' * 5000 + 'C' * 200)")
    assert len(text) <= 300 and text.startswith("A" * 200) and text.endswith("C" * 60)
    assert "characters cut" in text
    assert episode.python("12 * 7") == "84"  # a last bare expression is shown
    assert episode.python("x = 1") == "(no output)"
    assert clip("abc", 10) == "abc"


def test_a_sandbox_that_cannot_start_ends_each_episode_with_an_environment_error():
    env = environment(python="/nonexistent/python3")
    session = loop.testing.ScriptedBackend(completions=[call("print(1)")]).open(
        loop.ModelRef(base="x"))
    out = run_episodes(session, env, [task("a"), task("b")],
                       loop.Sampling(n=2, temperature=1.0), settings())
    for group in out:
        for episode in group:
            assert episode.turns == [] and episode.env_reward is None
            assert "sandbox: the interpreter /nonexistent/python3 does not exist" in \
                episode.env_error



def test_a_run_with_a_sandbox_that_cannot_start_stops_before_anything_is_written(tmp_path):
    """`prepare()` is the environment's start-up check: the run refuses with one line and the
    store gets no run."""
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "loop.db"
    done = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", "arithmetic", "--rounds", "0", "--db", str(db),
         "--set", "backend.name=scripted", "--set", "task.environment.name=python",
         "--set", "task.environment.options.python=/nonexistent/python3"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: environment error: python (plugin ")
    assert "the interpreter /nonexistent/python3 does not exist" in lines[-1]
    assert not db.exists() or sqlite3.connect(db).execute(
        "select count(*) from sqlite_master where name = 'runs'").fetchone()[0] == 0 or \
        sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0

SOLVER = '''
import json, re

import loop
import loop.testing

EXPRESSIONS = {}
for line in open("tasks/gsm8k-sample.jsonl", encoding="utf-8"):
    row = json.loads(line)
    EXPRESSIONS[row["question"]] = re.findall(r"<<([^=>]+)=", row["answer"])[0]


class Solver(loop.testing.ScriptedBackend):
    """Runs the first calculation of each problem's worked solution through the python tool,
    then answers with what the tool printed."""

    name = "solver"

    def respond(self, prompt, sample_index, sampling, options=None):
        results = [m["content"] for m in prompt if m["role"] == "tool"]
        if results:
            return f"The answer is {results[-1]}."
        question = next(m["content"] for m in prompt if m["role"] == "user")
        body = json.dumps({"name": "python",
                           "arguments": {"code": f"print({EXPRESSIONS[question]})"}})
        return f"<tool_call>{body}</tool_call>"


@loop.hookimpl
def register_backends(register):
    register(Solver())
'''

RUN = ["run", "python-tool", "--name", "r", "--rounds", "1", "--plugins-dir", "plugins",
       "--set", "backend.name=solver", "--set", "train.method=noop", "--set", "generate.n=2",
       "--set", "select.prompts_per_round=4"]


def _cli(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    environ.update(LOOP_DB=str(folder / "loop.db"), **env)
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], env=environ, cwd=folder,
                          capture_output=True, text=True, timeout=300)


def _folder(path: Path) -> Path:
    (path / "tasks").mkdir(parents=True)
    (path / "plugins").mkdir()
    shutil.copy(SAMPLE, path / "tasks" / SAMPLE.name)
    (path / "plugins" / "solver.py").write_text(SOLVER)
    return path


def _rows(db: Path) -> dict[str, list]:
    con = sqlite3.connect(db)
    key = "a.round_idx, a.purpose, a.task_id, a.sample_index"
    out = {
        "attempts": con.execute(f"select {key}, a.completion, a.end_reason, a.tools_json, "
                                f"a.token_ids_json from attempts a order by {key}").fetchall(),
        "turns": con.execute(
            f"select {key}, t.idx, t.role, t.text, t.token_ids_json, t.name, t.arguments_json, "
            "t.error from turns t join attempts a on a.id = t.attempt_id "
            f"order by {key}, t.idx").fetchall(),
        "verdicts": con.execute(
            f"select {key}, v.verifier, v.passed from verdicts v join attempts a on "
            f"a.id = v.attempt_id order by {key}, v.verifier").fetchall(),
        "questions": dict(con.execute("select id, prompt_json from tasks").fetchall()),
        "references": dict(con.execute("select id, reference from tasks").fetchall()),
    }
    con.close()
    return out


@pytest.mark.slow
def test_a_run_stores_the_sandbox_results_exactly_and_resumes_a_kill_mid_episode(tmp_path):
    whole = _folder(tmp_path / "whole")
    done = _cli(RUN, whole)
    assert done.returncode == 0, done.stderr
    rows = _rows(whole / "loop.db")
    expressions = first_expressions()
    assert rows["attempts"] and len(rows["turns"]) == 3 * len(rows["attempts"])
    by_attempt: dict[tuple, list] = {}
    for row in rows["turns"]:
        by_attempt.setdefault(row[:4], []).append(row[4:])
    verdicts = {row[:4]: (row[4], row[5]) for row in rows["verdicts"]}
    purposes = set()
    for attempt in rows["attempts"]:
        ident = attempt[:4]
        purposes.add(ident[1])
        question = json.loads(rows["questions"][ident[2]])[-1]["content"]
        value = eval(expressions[question])  # the test's own arithmetic
        code = f"print({expressions[question]})"
        turns = by_attempt[ident]
        assert [(t[0], t[1]) for t in turns] == [(0, "assistant"), (1, "tool"), (2, "assistant")]
        assert (turns[1][2], turns[1][4], json.loads(turns[1][5]), turns[1][6]) == (
            str(value), "python", {"code": code}, None)
        assert turns[2][2] == attempt[4] == f"The answer is {value}."
        assert attempt[5:7] == ("answer", '["python"]')
        # token-exact: the attempt's ids are every turn's, in order
        assert json.loads(attempt[7]) == [i for t in turns for i in json.loads(t[3] or "[]")]
        right = abs(float(value) - float(rows["references"][ident[2]])) < 1e-9
        assert verdicts[ident] == ("math", int(right)), (question, value)
    assert purposes == {"train", "eval"}
    assert {v[1] for v in verdicts.values()} == {0, 1}  # some first steps are the answer

    killed = _folder(tmp_path / "killed")
    dead = _cli(RUN, killed, LOOP_FAILPOINT="generate.in_episode")
    assert dead.returncode == -9, dead.stderr
    resumed = _cli(["resume", "r", "--plugins-dir", "plugins"], killed)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(killed / "loop.db") == rows
