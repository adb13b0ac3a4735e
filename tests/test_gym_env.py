"""The gym-style adapter with a real text game from PyPI: TextArena's GuessTheNumber, its own game
logic, through `environment: {gym: "docs/examples/textarena_games.py:make"}` and the few lines
there that adapt TextArena's API. Offline: the game needs no download at run time."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

textarena = pytest.importorskip("textarena")

from loop.config import LoopConfig  # noqa: E402
from loop.doubles import ScriptedBackend  # noqa: E402
from loop.environments import EnvironmentVerifier, GymEnvironment  # noqa: E402
from loop.episodes import EpisodeSettings, run_episodes  # noqa: E402
from loop.plugin_manager import build_registry, get_plugin_manager  # noqa: E402
from loop.resolve import resolve_components  # noqa: E402
from loop.schema import Attempt, ModelRef, Sampling  # noqa: E402
from loop_math.jsonl import JsonlOptions, JsonlTasks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "textarena_games.py"
GAME = "GuessTheNumber-v0-raw"
LOW, HIGH = 1, 20  # the game's range (TextArena's registration of GuessTheNumber-v0)
SEEDS = [3, 11, 42, 7]


def secret(seed: int) -> int:
    """The number TextArena's game picks for `seed`, read from a game of our own."""
    env = textarena.make(GAME)
    env.reset(num_players=1, seed=seed)
    return env.game_number


def bisect(target: int) -> list[int]:
    """The guesses a halving player makes for `target`: what the game's hints must lead to."""
    low, high, guesses = LOW, HIGH, []
    while True:
        guess = (low + high) // 2
        guesses.append(guess)
        if guess == target:
            return guesses
        low, high = (guess + 1, high) if guess < target else (low, guess - 1)


def player(prompt, k, sampling) -> str:
    """A halving player that knows nothing but the game's messages in its prompt."""
    low, high = LOW, HIGH
    guesses = [int(m["content"].strip("[]")) for m in prompt if m["role"] == "assistant"]
    hints = [m["content"] for m in prompt if m["role"] == "user"][1:]  # after the task's own
    for guess, hint in zip(guesses, hints):
        if "higher" in hint:
            low = guess + 1
        elif "lower" in hint:
            high = guess - 1
    return f"[{(low + high) // 2}]"


def games(tmp_path: Path) -> Path:
    path = tmp_path / "games.jsonl"
    path.write_text("".join(json.dumps({"question": f"Game {seed}: find the number.",
                                        "answer": "1", "seed": seed}) + "\n"
                            for seed in SEEDS))
    return path


def environment_of(tmp_path: Path, **extra) -> GymEnvironment:
    """The environment the config names, resolved as a run resolves it."""
    config = LoopConfig.model_validate({
        "task": {"source": "jsonl", "options": {"path": str(games(tmp_path)), "eval_size": 1},
                 "verifiers": [],
                 "environment": {"gym": f"{EXAMPLE}:make", "options": {"env_id": GAME},
                                 "max_turns": 10, **extra}},
        "backend": "scripted", "train": {"method": "noop"}})
    chosen = resolve_components(config, build_registry(get_plugin_manager())).environment
    assert isinstance(chosen.component, GymEnvironment)
    return chosen.component


def tasks_of(tmp_path: Path):
    loaded = JsonlTasks().load(JsonlOptions(path=str(games(tmp_path)), eval_size=1), seed=0)
    return sorted(loaded.train + loaded.eval, key=lambda t: t.metadata["row"]["seed"])


SETTINGS = EpisodeSettings(max_turns=10, max_tokens=20_000, tool_timeout_s=10,
                           environment="make")


def test_a_scripted_player_wins_each_seeded_game_by_the_games_own_hints(tmp_path):
    env = environment_of(tmp_path)
    tasks = tasks_of(tmp_path)
    session = ScriptedBackend(respond=player).open(ModelRef(base="x"))
    out = run_episodes(session, env, tasks, Sampling(n=1, temperature=0.0, max_new_tokens=20),
                       SETTINGS)
    secrets = [secret(seed) for seed in sorted(SEEDS)]
    assert len(set(secrets)) > 1  # each row's seed is its own game
    assert max(len(bisect(t)) for t in secrets) > 2  # hints to follow
    for seed, target, (episode,) in zip(sorted(SEEDS), secrets, out):
        guesses = bisect(target)
        models = [t for t in episode.turns if t.role == "assistant"]
        assert [t.text for t in models] == [f"[{g}]" for g in guesses]
        hints = [t.text for t in episode.turns if t.role == "user"]
        assert hints == [f"The target number is {'higher' if g < target else 'lower'}."
                         for g in guesses[:-1]]
        assert [t.reward for t in models] == [0.0] * (len(guesses) - 1) + [1.0]
        assert episode.end_reason == "done" and episode.env_reward == 1.0
        assert episode.env_error is None and episode.tools == []
        # the game's own prompt follows the task's question
        assert "You are playing Guess The Number" in episode.prompt[-1]["content"]
        assert episode.prompt[-1]["content"].startswith(f"Game {seed}: find the number.")


def test_a_player_that_breaks_the_rules_loses_by_the_games_own_rules(tmp_path):
    env = environment_of(tmp_path)
    session = ScriptedBackend(completions=["I think it is 7."]).open(ModelRef(base="x"))
    task = tasks_of(tmp_path)[0]
    episode = run_episodes(session, env, [task], Sampling(n=1, temperature=0.0), SETTINGS)[0][0]
    # TextArena allows one invalid move, says why, and ends the game at the second
    assert [t.role for t in episode.turns] == ["assistant", "user", "assistant"]
    assert "invalid move" in episode.turns[1].text.lower()
    assert episode.end_reason == "done" and episode.env_reward == 0.0
    attempt = Attempt(id="a", run_id="r", round_index=0, task_id=task.id, purpose="eval",
                      sample_index=0, messages=[], completion=episode.completion,
                      environment="make", turns=episode.turns, end_reason=episode.end_reason,
                      env_reward=episode.env_reward)
    verdict = EnvironmentVerifier(threshold=1.0).verify(task, attempt)
    assert not verdict.passed and verdict.mistake == "wrong_answer"


PLAYER = '''
import loop
import loop.testing


class Halving(loop.testing.ScriptedBackend):
    name = "halving"

    def respond(self, prompt, sample_index, sampling, options=None):
        low, high = 1, 20
        guesses = [int(m["content"].strip("[]")) for m in prompt if m["role"] == "assistant"]
        hints = [m["content"] for m in prompt if m["role"] == "user"][1:]
        for guess, hint in zip(guesses, hints):
            if "higher" in hint:
                low = guess + 1
            elif "lower" in hint:
                high = guess - 1
        return f"[{(low + high) // 2}]"


@loop.hookimpl
def register_backends(register):
    register(Halving())
'''


@pytest.mark.slow
def test_a_run_plays_the_games_and_stores_their_turns_and_rewards(tmp_path):
    games(tmp_path)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "halving.py").write_text(PLAYER)
    environ = {k: v for k, v in os.environ.items() if k != "LOOP_FAILPOINT"}
    environ["LOOP_DB"] = str(tmp_path / "loop.db")
    args = ["run", "jsonl", "--name", "g", "--rounds", "1", "--plugins-dir", "plugins",
            "--set", "task.options.path=games.jsonl", "--set", "task.options.eval_size=3",
            "--set", "task.options.train_size=1",
            "--set", f"task.environment.gym={EXAMPLE}:make",
            "--set", f"task.environment.options.env_id={GAME}",
            "--set", "task.environment.max_turns=10", "--set", "task.verifiers=[]",
            "--set", "backend.name=halving", "--set", "evaluate.problems=3",
            "--set", "train.method=noop", "--set", "generate.n=2",
            "--set", "select.prompts_per_round=1"]
    done = subprocess.run([sys.executable, "-m", "loop.cli", *args], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(tmp_path / "loop.db")
    rows = con.execute(
        "select t.metadata_json, a.id, a.purpose, a.end_reason, a.env_reward from attempts a "
        "join tasks t on t.id = a.task_id").fetchall()
    # 3 held-out games in rounds 0 and 1, the training game twice (generate.n=2) in round 1
    assert sorted(r[2] for r in rows) == ["eval"] * 6 + ["train"] * 2
    for meta, attempt_id, purpose, end_reason, reward in rows:
        target = secret(json.loads(meta)["row"]["seed"])
        guesses = [int(re.fullmatch(r"\[(\d+)\]", text).group(1)) for (text,) in con.execute(
            "select text from turns where attempt_id = ? and role = 'assistant' order by idx",
            [attempt_id])]
        assert guesses == bisect(target)
        assert (end_reason, reward) == ("done", 1.0)
        verdict = con.execute("select verifier, passed from verdicts where attempt_id = ?",
                              [attempt_id]).fetchall()
        assert verdict == [("environment", 1)]
        # rewards are the training answers': the game's own, under the callable's name
        assert con.execute("select value from rewards where attempt_id = ? and reward_fn = "
                           "'make'", [attempt_id]).fetchall() == ([(1.0,)] if purpose == "train"
                                                                  else [])
    con.close()
