"""Environments from outside loop, unchanged, and what turns an episode into verdicts and rewards.

- `FactoryEnvironment`: TRL's `environment_factory` contract as it is. A class with a
  no-argument constructor; `reset(**row) -> str | None` (a returned string is appended to the
  last user message); every public method with a docstring is a tool (its schema from signature
  and docstring, as transformers' `get_json_schema` builds it); optional `get_reward() ->
  float`, called once when the episode ends. Async methods are awaited. One instance per
  episode. Config: `environment: {factory: "path/to/file.py:ClassName"}` or
  `"package.module:ClassName"`.
- `GymEnvironment`: a gym-style text environment, `reset() -> observation` and
  `step(text) -> (observation, reward, done, info)`: every model turn is an action, every
  observation the next user message, the episode's reward the sum of the step rewards. Config:
  `environment: {gym: "package.module:make", options: {...}}`, `make(**options, **row)` (or a
  class) giving a fresh environment per episode.
- `EnvironmentVerifier` (the verdict `environment`: passed when the episode's reward reaches
  `environment.pass_threshold`) and `environment_reward` (the reward under the environment's
  name) make an environment's reward go through the ordinary verify and reward stages.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from loop.interfaces import Environment, Episode, Verifier
from loop.schema import Attempt, Step, Task, Verdict

# Methods of a factory class that are its contract, never tools.
_NOT_TOOLS = {"reset", "get_reward", "close"}


def load_object(spec: str, what: str) -> Any:
    """The object `spec` names: 'path/to/file.py:Name' (a file, relative to the working
    directory) or 'package.module:Name'. Raises ValueError with one line naming `what`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'path/to/file.py:Name' or "
                         "'package.module:Name'")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"{what} {spec!r}: no file {target}")
            name = f"loop_env_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
        else:
            module = importlib.import_module(target)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{what} {spec!r}: importing {target} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: {target} has no {attr!r}") from None


def task_fields(task: Task) -> dict[str, Any]:
    """The fields an outside environment's `reset(**row)` gets: the task's source row when the
    source kept one (`metadata['row']`: every field of a jsonl line), else the question (the
    last user message) and the answer (the reference)."""
    row = task.metadata.get("row")
    if isinstance(row, dict):
        return dict(row)
    question = next((m.get("content", "") for m in reversed(task.prompt)
                     if m.get("role") == "user"), "")
    return {"question": question, "answer": task.reference}


def public_tools(instance: Any) -> list[Callable[..., Any]]:
    """TRL's rule: every public method of the instance's class with a docstring, in definition
    order, except the contract's own methods."""
    tools = []
    for name, member in vars(type(instance)).items():
        if name.startswith("_") or name in _NOT_TOOLS or not callable(member):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.getdoc(member):
            tools.append(getattr(instance, name))
    return tools


class FactoryEpisode(Episode):
    """One instance of a TRL environment_factory class, seen as a loop Episode."""

    def __init__(self, instance: Any, row: dict[str, Any]):
        self.instance = instance
        self.row = row

    def reset(self) -> str | None:
        reset = getattr(self.instance, "reset", None)
        if reset is None:
            return None
        value = _run_maybe_async(reset(**self.row))
        return value if isinstance(value, str) and value else None

    def tools(self) -> list[Callable[..., Any]]:
        return public_tools(self.instance)

    def reward(self) -> float | None:
        get_reward = getattr(self.instance, "get_reward", None)
        if get_reward is None:
            return None
        value = _run_maybe_async(get_reward())
        return None if value is None else float(value)

    def close(self) -> None:
        close = getattr(self.instance, "close", None)
        if callable(close):
            _run_maybe_async(close())


class FactoryEnvironment(Environment):
    """A TRL environment_factory class (see the module docstring); named after the class, as
    TRL names its reward."""

    def __init__(self, cls: type, name: str | None = None):
        if not isinstance(cls, type):
            raise ValueError(f"environment factory {cls!r} is not a class")
        self.cls = cls
        self.name = name or cls.__name__

    def episode(self, task: Task) -> Episode:
        return FactoryEpisode(self.cls(), task_fields(task))


class GymEpisode(Episode):
    """One gym-style text environment: `reset() -> observation`, `step(text) -> (observation,
    reward, done, info)` (gymnasium's five-tuple with `truncated` is accepted too)."""

    def __init__(self, env: Any):
        self.env = env
        self.total: float | None = None

    def reset(self) -> str | None:
        value = self.env.reset()
        if isinstance(value, tuple):  # gymnasium: (observation, info)
            value = value[0]
        return None if value is None else str(value)

    def respond(self, text: str) -> Step:
        result = self.env.step(text)
        if len(result) == 5:  # gymnasium: observation, reward, terminated, truncated, info
            observation, reward, terminated, truncated, _ = result
            done = bool(terminated or truncated)
        else:
            observation, reward, done, _ = result
        reward = None if reward is None else float(reward)
        if reward is not None:
            self.total = (self.total or 0.0) + reward
        return Step(observation=None if observation is None else str(observation),
                    reward=reward, done=bool(done))

    def reward(self) -> float | None:
        return self.total

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()


class GymEnvironment(Environment):
    """Gym-style text environments made by `make(**options, **fields)` per episode. `fields`:
    the task's (see `task_fields`), passed only as far as `make` accepts them."""

    def __init__(self, make: Callable[..., Any], options: dict[str, Any] | None = None,
                 name: str | None = None):
        if not callable(make):
            raise ValueError(f"gym environment {make!r} is not callable")
        self.make = make
        self.make_options = dict(options or {})
        self.name = name or getattr(make, "__name__", "gym")

    def episode(self, task: Task) -> Episode:
        kwargs = dict(self.make_options)
        params = _parameters(self.make)
        fields = task_fields(task)
        if params is None:  # **kwargs: every field
            kwargs.update({k: v for k, v in fields.items() if k not in kwargs})
        else:
            kwargs.update({k: v for k, v in fields.items() if k in params and k not in kwargs})
        return GymEpisode(self.make(**kwargs))


def _parameters(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword names `fn` takes; None when it takes **kwargs (or cannot be inspected)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _run_maybe_async(value: Any) -> Any:
    if inspect.isawaitable(value):
        import asyncio

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


class EnvironmentVerifier(Verifier):
    """The verdict `environment`: an episode passes when the environment's reward is at least
    `threshold`. Failures are named for the mistake log: `max_turns`, `budget` (the episode ran
    out of turns or tokens), `tool_error` (a tool call went wrong), `no_tool_call` (a tool
    environment the model never called), else `wrong_answer`. An episode that could not be run
    (the environment itself failed) or gave no reward is an `infra` verdict."""

    name = "environment"

    def __init__(self, threshold: float = 1.0):
        self.threshold = threshold

    def verify(self, task: Task, attempt: Attempt) -> Verdict:
        if not attempt.is_episode:
            return Verdict(passed=False, error_kind="infra",
                           feedback="not an episode: the environment judged nothing")
        if attempt.env_error is not None:
            return Verdict(passed=False, error_kind="infra", feedback=attempt.env_error)
        if attempt.env_reward is None:
            return Verdict(passed=False, error_kind="infra",
                           feedback="the environment gave no reward for this episode")
        reward = attempt.env_reward
        if reward >= self.threshold:
            return Verdict(passed=True, score=1.0, feedback=f"environment reward {reward:g}",
                           details={"reward": reward})
        return Verdict(passed=False, score=0.0, mistake=episode_mistake(attempt),
                       feedback=f"environment reward {reward:g} (needs {self.threshold:g})",
                       details={"reward": reward})


def episode_mistake(attempt: Attempt) -> str:
    """The mistake-log kind of a failed episode (see EnvironmentVerifier)."""
    if attempt.end_reason in ("max_turns", "budget"):
        return attempt.end_reason
    if any(t.role == "tool" and t.error for t in attempt.turns):
        return "tool_error"
    called = any(t.tool_calls for t in attempt.turns if t.role == "assistant")
    if attempt.tools and not called:
        return "no_tool_call"
    return "wrong_answer"


def environment_reward(name: str) -> Callable[..., list[float | None]]:
    """The reward function `name` (TRL's contract): each episode's environment reward, None for
    an answer that is not an episode or got none."""

    def reward(prompts=None, completions=None, attempts=None, **kwargs) -> list[float | None]:
        return [a.env_reward if a.is_episode else None for a in attempts or []]

    reward.__name__ = name
    return reward
