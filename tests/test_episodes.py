"""Episodes: tool calls parsed and answered, every bad call a `tool` message with its error,
turns stored and read back exactly, token ids that are exactly what was sampled, the environment's
reward as verdict and reward, and a kill inside the episode loop that a resume repairs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from loop.doubles import ScriptedBackend
from loop.episodes import EpisodeSettings, run_episodes
from loop.failpoints import EPISODE_POINTS
from loop.interfaces import Environment, Episode
from loop.schema import ModelRef, Sampling, Step, Task, ToolCall
from loop.tool_calls import call_tool, parse_tool_calls


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


# ----- parsing and calling ---------------------------------------------------------------------

def test_parse_tool_calls_reads_every_block_and_names_every_malformed_one():
    text = (call("add", a=1, b=2) + " then " + '<tool_call>{"name": "add", "arguments": '
            '"{\\"a\\": 3}"}</tool_call>' + "<tool_call>not json</tool_call>"
            + '<tool_call>{"arguments": {}}</tool_call>'
            + '<tool_call>{"name": "x", "arguments": [1]}</tool_call>'
            + '<tool_call>{"name": "last"}')
    parsed = parse_tool_calls(text)
    assert parsed.calls == [ToolCall(name="add", arguments={"a": 1, "b": 2}),
                            ToolCall(name="add", arguments={"a": 3}),
                            ToolCall(name="last", arguments={})]
    assert [e.split(" (")[0].split(":")[0] for e in parsed.errors] == [
        "malformed tool call", "malformed tool call", "malformed tool call to 'x'"]
    assert parse_tool_calls("The answer is 4.").any is False


def _slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: how long
    """
    import time

    time.sleep(seconds)
    return "woke"


async def _async_double(x: int) -> int:
    """Double.

    Args:
        x: a number
    """
    return 2 * x


def _boom() -> None:
    """Fail."""
    raise RuntimeError("kaput")


def test_call_tool_answers_each_failure_with_its_error():
    tools = {"slow": _slow, "double": _async_double, "boom": _boom}
    ok = call_tool(tools, ToolCall(name="double", arguments={"x": 21}), 5)
    assert (ok.text, ok.error) == ("42", None)
    cases = {
        "unknown tool 'nope'": ToolCall(name="nope"),
        "wrong arguments for double": ToolCall(name="double", arguments={"y": 1}),
        "tool boom raised RuntimeError: kaput": ToolCall(name="boom"),
        "tool slow timed out after 0.2 s": ToolCall(name="slow", arguments={"seconds": 5}),
    }
    for expected, bad in cases.items():
        result = call_tool(tools, bad, 0.2)
        assert result.error is not None and result.error.startswith(expected), result.error
        assert result.text == f"Error: {result.error}"


# ----- the episode loop on the scripted backend ------------------------------------------------

class Counter(Episode):
    """A tool world with state: `add` adds to a running total; the reward is 1 when the final
    answer names the total and the total is the task's reference."""

    def __init__(self, task: Task):
        self.task = task
        self.total = 0
        self.final = ""

    def reset(self) -> str:
        return "Start at 0."

    def tools(self):
        return [self.add]

    def add(self, n: int) -> int:
        """Add to the running total.

        Args:
            n: how much to add
        """
        self.total += n
        return self.total

    def reward(self) -> float:
        return float(str(self.total) == self.task.reference)


class CounterEnv(Environment):
    name = "counter"
    max_turns = 4

    def __init__(self):
        self.made: list[Counter] = []

    def episode(self, task):
        episode = Counter(task)
        self.made.append(episode)
        return episode


def _task(question: str, reference: str) -> Task:
    return Task(source="t", split="train", prompt=[{"role": "user", "content": question}],
                reference=reference)


SETTINGS = EpisodeSettings(max_turns=4, max_tokens=2000, tool_timeout_s=5, environment="counter")


def test_tool_episode_turns_follow_the_environment_state_and_rewards_differ_per_row():
    def respond(prompt, k, sampling):
        results = [m["content"] for m in prompt if m["role"] == "tool"]
        if not results:
            return call("add", n=5)
        if len(results) == 1:
            return call("add", n=2)
        return f"The total is {results[-1]}."

    session = ScriptedBackend(respond=respond).open(ModelRef(base="x"))
    env = CounterEnv()
    tasks = [_task("Reach 7.", "7"), _task("Reach 9.", "9")]
    out = run_episodes(session, env, tasks, Sampling(n=1, temperature=1.0, max_new_tokens=200),
                       SETTINGS)
    first, second = out[0][0], out[1][0]
    assert [(t.role, t.text) for t in first.turns] == [
        ("assistant", call("add", n=5)), ("tool", "5"), ("assistant", call("add", n=2)),
        ("tool", "7"), ("assistant", "The total is 7.")]
    assert first.turns[0].tool_calls == [ToolCall(name="add", arguments={"n": 5})]
    assert first.turns[1].name == "add" and first.turns[1].arguments == {"n": 5}
    assert first.end_reason == "answer" and first.tools == ["add"]
    assert (first.env_reward, second.env_reward) == (1.0, 0.0)  # 7 == 7, 7 != 9
    assert first.completion == "The total is 7."
    assert first.prompt[-1]["content"].endswith("Start at 0.")  # the reset text
    assert "<tool_call>" in first.prompt[0]["content"]  # the fallback tool description
    assert [e.total for e in env.made] == [7, 7]  # one fresh world per episode
    # token-exact: the prompt's ids and every turn's ids spell the whole ChatML conversation
    text = "".join(chr(i) for i in first.prompt_ids + [i for t in first.turns
                                                        for i in t.token_ids])
    assert text.endswith("<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\n"
                         "The total is 7.")
    assert [t.trained for t in first.turns] == [True, False, True, False, True]
    assert all(len(t.logprobs) == len(t.token_ids) for t in first.turns if t.trained)


def test_every_bad_call_becomes_a_tool_message_with_its_error_and_the_episode_goes_on():
    bad = [call("nope"), call("add", m=1), '<tool_call>{oops</tool_call>', call("add", n="x"),
           "done"]

    def respond(prompt, k, sampling):
        return bad[sum(m["role"] == "assistant" for m in prompt)]

    session = ScriptedBackend(respond=respond).open(ModelRef(base="x"))
    settings = EpisodeSettings(max_turns=8, max_tokens=5000, tool_timeout_s=5,
                               environment="counter")
    result = run_episodes(session, CounterEnv(), [_task("Reach 1.", "1")],
                          Sampling(n=1, temperature=0.0, max_new_tokens=200), settings)[0][0]
    tools = [t for t in result.turns if t.role == "tool"]
    assert [t.error.split(" (")[0].split(":")[0] for t in tools] == [
        "unknown tool 'nope'", "wrong arguments for add", "malformed tool call",
        "tool add raised TypeError"]
    assert all(t.text.startswith("Error: ") for t in tools)
    assert result.end_reason == "answer" and result.completion == "done"
    assert result.env_reward == 0.0 and result.env_error is None


class Guess(Episode):
    """A text world: the model guesses a number, the environment says higher or lower."""

    def __init__(self, secret: int):
        self.secret = secret

    def reset(self):
        return "Guess my number between 1 and 9."

    def respond(self, text):
        guess = int(text.strip())
        if guess == self.secret:
            return Step(observation="right", reward=1.0, done=True)
        return Step(observation="higher" if guess < self.secret else "lower", reward=-0.1)

    def reward(self):
        return 1.0


class GuessEnv(Environment):
    name = "guess"

    def episode(self, task):
        return Guess(int(task.reference))


def test_text_episode_ends_when_the_environment_says_done_or_at_max_turns():
    def respond(prompt, k, sampling):
        lows = [m for m in prompt if m["role"] == "user" and m["content"] == "higher"]
        return str(3 + 2 * len(lows))

    session = ScriptedBackend(respond=respond).open(ModelRef(base="x"))
    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=10)
    done, cut = (r[0] for r in run_episodes(
        session, GuessEnv(), [_task("play", "7"), _task("play", "99")], sampling,
        EpisodeSettings(max_turns=3, max_tokens=500, tool_timeout_s=5, environment="guess")))
    assert [(t.role, t.text, t.reward) for t in done.turns] == [
        ("assistant", "3", -0.1), ("user", "higher", None), ("assistant", "5", -0.1),
        ("user", "higher", None), ("assistant", "7", 1.0)]
    assert done.end_reason == "done"
    assert cut.end_reason == "max_turns" and len([t for t in cut.turns
                                                  if t.role == "assistant"]) == 3


class Broken(Environment):
    name = "broken"

    def episode(self, task):
        class Fails(Episode):
            def reset(self):
                raise OSError("no world today")
        return Fails()


def test_an_environment_that_fails_ends_its_episode_with_env_error_not_a_crash():
    session = ScriptedBackend(completions=["x"]).open(ModelRef(base="x"))
    result = run_episodes(session, Broken(), [_task("q", "1")],
                          Sampling(n=2, temperature=1.0), SETTINGS)[0]
    assert len(result) == 2
    assert all(r.turns == [] and r.env_reward is None for r in result)
    assert result[0].env_error == "the environment's reset() raised OSError: no world today"


def test_the_token_budget_ends_an_episode():
    session = ScriptedBackend(completions=[call("add", n=1)]).open(ModelRef(base="x"))
    settings = EpisodeSettings(max_turns=50, max_tokens=300, tool_timeout_s=5,
                               environment="counter")
    result = run_episodes(session, CounterEnv(), [_task("q", "1")],
                          Sampling(n=1, temperature=0.0, max_new_tokens=100), settings)[0][0]
    assert result.end_reason == "budget"
    assert sum(len(t.token_ids) for t in result.turns) <= 300 + 100


def test_chat_template_continuation_is_token_exact_for_the_default_model():
    """The ids built turn by turn (prompt, sampled ids with the end-of-turn token, the tool
    message's carrier) decode to exactly the template's rendering of the whole conversation."""
    transformers = pytest.importorskip("transformers")
    import loop
    from loop.chat import TokenizerChat
    from loop.config import DEFAULT_MODEL

    tokenizer = transformers.AutoTokenizer.from_pretrained(loop.resolve_model(DEFAULT_MODEL))
    chat = TokenizerChat(tokenizer)
    prompt = [{"role": "user", "content": "What is 123*45?"}]
    sampled = tokenizer(call("multiply", a=123, b=45), add_special_tokens=False).input_ids
    sampled.append(tokenizer.eos_token_id)
    ids = (chat.prompt_ids(prompt) + sampled
           + chat.continuation_ids([{"role": "tool", "content": "5535"}]))
    whole = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": call("multiply", a=123, b=45)},
         {"role": "tool", "content": "5535"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids) == whole


# ----- a run: stored turns, the environment's verdict and reward, resume -------------------------

FACTORY = '''
class Multiply:
    """A TRL environment_factory class, unchanged."""

    def reset(self, question=None, answer=None, **row):
        self.answer = answer
        self.result = None
        return "Use the calculator."

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        self.result = a * b
        return a * b

    def get_reward(self):
        return 1.0 if str(self.result) == str(self.answer) else 0.0
'''

RUN = ["run", "arithmetic", "--rounds", "1", "--set", "backend.name=scripted",
       "--set", "train.method=noop", "--set", "task.environment.factory=env.py:Multiply",
       "--set", "task.verifiers=[]", "--set", "select.prompts_per_round=6",
       "--set", "evaluate.problems=5", "--set", "generate.n=2",
       # the scripted backend's tokens are bytes: the tool call needs more than the task's 48
       "--set", "generate.max_new_tokens=128",
       "--set", 'backend.options.completions=["' + call("multiply", a=3, b=4).replace('"', '\\"')
       + '", "The answer is 12."]']


def _cli(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    environ.update(LOOP_DB=str(folder / "loop.db"), **env)
    (folder / "env.py").write_text(FACTORY)
    return subprocess.run([sys.executable, "-m", "loop.cli", *args], env=environ, cwd=folder,
                          capture_output=True, text=True, timeout=300)


def _rows(db: Path) -> dict[str, list]:
    """Every episode row, keyed by what identifies it apart from the run's own id."""
    con = sqlite3.connect(db)
    key = "a.round_idx, a.purpose, a.task_id, a.sample_index"
    out = {
        "attempts": con.execute(
            f"select {key}, a.completion, a.token_ids_json, a.prompt_ids_json, a.env_reward, "
            f"a.end_reason, a.tools_json from attempts a order by {key}").fetchall(),
        "turns": con.execute(
            f"select {key}, t.idx, t.role, t.text, t.token_ids_json, t.logprobs_f32, t.trained, "
            "t.tool_calls_json, t.name, t.arguments_json, t.error, t.reward from turns t join "
            f"attempts a on a.id = t.attempt_id order by {key}, t.idx").fetchall(),
        "verdicts": con.execute(
            f"select {key}, v.verifier, v.passed, v.mistake from verdicts v join attempts a on "
            f"a.id = v.attempt_id order by {key}, v.verifier").fetchall(),
        "rewards": con.execute(
            f"select {key}, r.reward_fn, r.value from rewards r join attempts a on "
            f"a.id = r.attempt_id order by {key}, r.reward_fn").fetchall(),
    }
    con.close()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    whole = tmp_path_factory.mktemp("whole")
    done = _cli(RUN + ["--name", "r"], whole)
    assert done.returncode == 0, done.stderr
    return whole, _rows(whole / "loop.db")


@pytest.mark.slow
def test_a_run_stores_every_turn_and_judges_by_the_environment(uninterrupted):
    whole, rows = uninterrupted
    assert rows["attempts"] and all(a[8] == "answer" and a[9] == '["multiply"]'
                                    for a in rows["attempts"])
    # three turns per episode: the call, its result 12, the answer
    assert len(rows["turns"]) == 3 * len(rows["attempts"])
    assert {v[4] for v in rows["verdicts"]} == {"environment"}
    con = sqlite3.connect(whole / "loop.db")
    # the environment's reward under the class's name (TRL's convention), 1 only where 3*4 is
    # the task's answer; the verdict agrees with it
    pairs = con.execute("select r.value, v.passed from rewards r join verdicts v on "
                        "v.attempt_id = r.attempt_id where r.reward_fn = 'Multiply'").fetchall()
    assert pairs and all(value == passed for value, passed in pairs)
    results = con.execute("select distinct text from turns where role = 'tool'").fetchall()
    assert results == [("12",)]
    con.close()
    # `loop logs --json` gives each attempt its turns
    logs = _cli(["logs", "r", "--json", "-n", "1"], whole)
    assert logs.returncode == 0, logs.stderr
    entry = json.loads(logs.stdout)[0]
    assert [t["role"] for t in entry["turns"]] == ["assistant", "tool", "assistant"]
    assert entry["turns"][0]["tool_calls"] == [{"name": "multiply",
                                                "arguments": {"a": 3, "b": 4}}]
    assert entry["turns"][1] == {"role": "tool", "name": "multiply", "content": "12",
                                 "error": None}
    assert "Multiply" in entry["rewards"]


# Every episode fail point, a later pass of each (after an episode's second turn; in round 1,
# with round 0's episodes stored), and the stage boundaries around episode rows.
EPISODE_CASES = [*EPISODE_POINTS, "generate.in_episode:2", "evaluate.in_episode:3",
                 "generate.before_commit", "verify.in_batch", "evaluate.before_commit:2"]


@pytest.mark.slow
@pytest.mark.parametrize("point", EPISODE_CASES)
def test_a_kill_inside_the_episode_loop_then_resume_gives_the_same_rows(point, uninterrupted,
                                                                         tmp_path):
    dead = _cli(RUN + ["--name", "r"], tmp_path, LOOP_FAILPOINT=point)
    assert dead.returncode == -9, (point, dead.returncode, dead.stderr[-2000:])
    resumed = _cli(["resume", "r"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(tmp_path / "loop.db") == uninterrupted[1]


def test_a_registered_environment_is_chosen_by_name_and_a_non_environment_is_refused():
    import loop
    from loop.config import ConfigError, LoopConfig
    from loop.plugin_manager import PluginError
    from loop.resolve import resolve_components

    class Plugin:
        @loop.hookimpl
        def register_environments(register):
            register(CounterEnv())

    pm = loop.get_plugin_manager()
    pm.register(Plugin, name="counter-plugin")
    registry = loop.build_registry(pm)
    config = LoopConfig.model_validate({"task": {"source": "arithmetic",
                                                 "environment": {"name": "counter"}},
                                        "backend": "scripted"})
    components = resolve_components(config, registry)
    assert isinstance(components.environment.component, CounterEnv)
    assert components.environment.plugin == "counter-plugin"
    # no verifiers listed: the environment's reward judges, and is a reward under its name
    assert [v.name for v in components.verifiers] == ["environment"]
    assert [r.name for r in components.rewards] == ["binary", "counter"]
    with pytest.raises(ConfigError, match="unknown environment 'nope'"):
        resolve_components(config.model_copy(update={"task": config.task.model_copy(update={
            "environment": config.task.environment.model_copy(update={"name": "nope"})})}),
            registry)

    class Wrong:
        @loop.hookimpl
        def register_environments(register):
            register(object())

    pm.register(Wrong, name="wrong")
    with pytest.raises(PluginError, match="not a loop.Environment"):
        loop.build_registry(pm)
