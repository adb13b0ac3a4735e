"""Real `loop run`s on the test doubles, for read-side tests (report, compare, datasette, export,
tensorboard, scaffolded plugins): the `parity` scripted backend and the `noop` update method, so
a run of several rounds takes a second and every figure it stores follows from a rule the test
can apply itself.

The `parity` backend answers 2-digit additions ("12+35=") by this rule (`right`): the answer to
sample k of a first turn is right when a + g is even and k is not 1, where g is the round of the
checkpoint it samples from (0 for the base model); a wrong answer is a+b+1 for even k and "none"
for odd k. Every later turn (a repair after a critique) is right. So round 0's held-out pass@1 is
the share of even first operands, round 1's (sampling from round 1's checkpoint) that of odd ones,
round 2's that of even ones again: the held-out problems with an odd first operand regress from
round 1 to round 2.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

PARITY_PLUGIN = '''
"""The `parity` scripted backend of tests/scripted_runs.py."""
import re

import loop
from loop.testing import ScriptedBackend, ScriptedSession


def generation(adapter):
    """The round of the checkpoint sampled from (0: the base model)."""
    if not adapter:
        return 0
    found = re.findall(r"round-(\\d+)", str(adapter))
    return int(found[-1]) if found else 1


def reply(question, turn, k, g):
    a, b = map(int, re.search(r"(\\d+)\\s*\\+\\s*(\\d+)", question).groups())
    if turn > 0 or ((a + g) % 2 == 0 and k != 1):
        return str(a + b)
    return str(a + b + 1) if k % 2 == 0 else "none"


class Parity(ScriptedBackend):
    name = "parity"

    def open(self, model, options=None):
        g = generation(model.adapter)

        def respond(prompt, k, sampling):
            question = next(m["content"] for m in prompt if m["role"] == "user")
            turn = sum(m["role"] == "assistant" for m in prompt)
            return reply(question, turn, k, g)

        session = ScriptedSession(respond, model)
        self.sessions.append(session)
        return session


@loop.hookimpl
def register_backends(register):
    register(Parity())
'''

# `loop run` settings that put a run on the doubles: the parity backend, the noop update method.
PARITY_SETTINGS = ["--model", "scripted-parity", "--set", "backend.name=parity",
                   "--method", "noop"]


def right(question: str, k: int, g: int, turn: int = 0) -> bool:
    """Whether the parity backend answers sample `k` of `question` right (the oracle)."""
    a = int(re.search(r"(\d+)\s*\+", question).group(1))
    return turn > 0 or ((a + g) % 2 == 0 and k != 1)


def write_parity_plugin(folder: Path) -> Path:
    """Write the `parity` backend as a loose plugin file into `folder` (for --plugins-dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parity.py").write_text(PARITY_PLUGIN)
    return folder


def _cli_environment(mp: pytest.MonkeyPatch, folder: Path, plugins: str,
                     env: dict[str, str] | None) -> None:
    """An in-process `loop` command's surroundings: LOOP_LOAD_PLUGINS=`plugins`, no plugins
    folder and no LOOP_ settings from outside, `env` set, a fresh plugin manager, cwd `folder`."""
    import loop.cli.common

    mp.setenv("LOOP_LOAD_PLUGINS", plugins)
    mp.delenv("LOOP_PLUGINS_DIR", raising=False)
    for key in [k for k in os.environ if k.startswith("LOOP_") and "__" in k]:
        mp.delenv(key)
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    mp.setattr(loop.cli.common, "_PM", None)
    mp.chdir(folder)


def scripted_run(folder: Path, args: list[str], plugins: str = "math",
                 env: dict[str, str] | None = None) -> str:
    """`loop run ARGS --plugins-dir FOLDER/plugins` in this process, on the parity backend, with
    the environment conftest's isolated_env gives a test (usable from a module-scoped fixture);
    returns its output. `plugins`: LOOP_LOAD_PLUGINS."""
    from loop.cli import app

    plugins_dir = write_parity_plugin(folder / "plugins")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        _cli_environment(mp, folder, plugins, env)
        result = CliRunner().invoke(app, ["run", *map(str, args), *PARITY_SETTINGS,
                                          "--plugins-dir", str(plugins_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def cli_with_plugin(folder: Path, filename: str, source: str, args: list[str],
                    env: dict[str, str] | None = None):
    """`loop ARGS` in this process with `source` written as the loose plugin FOLDER/plugins/
    `filename` (`run` gets `--plugins-dir` for it), the math plugin loaded, no LOOP_ settings
    from outside and `env` set; returns the CliRunner result."""
    from loop.cli import app

    plugins = folder / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / filename).write_text(source)
    with pytest.MonkeyPatch.context() as mp:
        _cli_environment(mp, folder, "math", env)
        return CliRunner().invoke(app, [*args, "--plugins-dir", str(plugins)]
                                  if args[0] in ("run", "resume") else list(args))


def question_of(prompt_json: str) -> str:
    return next(m["content"] for m in json.loads(prompt_json) if m["role"] == "user")


def expected_counts(db: Path, run_name: str) -> dict[int, dict]:
    """Per round, what the parity rule says the run's verdicts must be, from the prompts the
    run asked (its first-turn attempts' tasks) and nothing it answered: held-out n and passed,
    train prompts, attempts, passed, solved prompts (a first-turn sample or a repair passed),
    repairs (every one passes)."""
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "select a.round_idx, a.purpose, a.sample_index, a.depth, a.task_id, t.prompt_json "
        "from attempts a join tasks t on t.id = a.task_id join runs r on r.id = a.run_id "
        "where r.name = ?", [run_name]).fetchall()
    conn.close()
    out: dict[int, dict] = {}
    for idx, purpose, k, depth, task_id, prompt_json in rows:
        c = out.setdefault(idx, {"eval_n": 0, "eval_passed": 0, "attempts": 0, "passed": 0,
                                 "prompts": set(), "solved": set(), "repairs": 0})
        # round idx evaluates the checkpoint it published (round idx) and trains on samples of
        # the previous round's checkpoint (round idx - 1)
        ok = right(question_of(prompt_json), k, idx if purpose == "eval" else idx - 1,
                   turn=depth)
        if purpose == "eval":
            c["eval_n"] += 1
            c["eval_passed"] += ok
            continue
        c["attempts"] += 1
        c["passed"] += ok
        c["prompts"].add(task_id)
        if ok:
            c["solved"].add(task_id)
        c["repairs"] += depth > 0
    for c in out.values():
        c["prompts"], c["solved"] = len(c["prompts"]), len(c["solved"])
    return out
