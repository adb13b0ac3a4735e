"""Resolve the components a config names into plugin objects with validated options.

Runs before anything is written: an unknown name or a bad option is a one-line ConfigError.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from loop.config import ComponentRef, ConfigError, LoopConfig, format_validation_error
from loop.plugin_manager import PluginError, Registry


@dataclass
class Chosen:
    """A component the config chose: its name in the config, the component (a copy carrying
    `self.options`; a reward is the function itself), its validated options (None when it takes
    none) and the name of the plugin that registered it."""

    name: str
    component: Any
    options: BaseModel | None
    plugin: str


@dataclass
class Components:
    task_source: Chosen
    backend: Chosen
    verifiers: list[Chosen]
    rewards: list[Chosen]
    updater: Chosen
    critics: list[Chosen] = field(default_factory=list)
    environment: Chosen | None = None  # episodes; None: single answers

    @property
    def reward_fns(self) -> dict[str, Callable[..., list[float | None]]]:
        return {c.name: c.component for c in self.rewards}


def validate_options(component: Any, raw: dict[str, Any], where: str) -> BaseModel | None:
    """A component's `options:` block validated by its Options model (ConfigError if wrong)."""
    model = getattr(component, "Options", None)
    if model is None:
        if raw:
            raise ConfigError(f"config error: {where}.options: this component takes no options")
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"config error: {where}.options")) from None


def _choose(registry: Registry, kind: str, ref: ComponentRef, where: str) -> Chosen:
    try:
        component = registry.get(kind, ref.name)
    except PluginError as exc:
        raise ConfigError(f"config error: {where}: {exc}") from None
    options = validate_options(component, ref.options, where)
    if kind != "rewards" and options is not None:
        # Components are registered once, as instances; each run gets its own shallow copy that
        # carries the validated options as `self.options`.
        component = copy.copy(component)
        component.options = options
    return Chosen(ref.name, component, options, registry.plugin_of(kind, ref.name))


def resolve_components(config: LoopConfig, registry: Registry) -> Components:
    if not config.task.source:
        raise ConfigError("config error: task.source: no task given (loop run TASK)")
    source = _choose(registry, "tasks", ComponentRef(name=config.task.source,
                                                     options=config.task.options), "task")
    environment = resolve_environment(config, registry)
    env_config = config.task.environment
    # With an environment and no verifiers listed, its reward is the judge.
    env_verdict = env_config is not None and (
        env_config.verdict if env_config.verdict is not None else not config.task.verifiers)
    verifier_refs = config.task.verifiers or ([] if env_verdict else [
        ComponentRef(name=name) for name in source.component.default_verifiers
    ])
    if not verifier_refs and not env_verdict:
        raise ConfigError(f"config error: task.verifiers: task {config.task.source!r} names no "
                          "verifier and has no default")
    verifiers = [_choose(registry, "verifiers", ref, f"task.verifiers.{ref.name}")
                 for ref in verifier_refs]
    rewards = [_choose(registry, "rewards", ref, f"task.rewards.{ref.name}")
               for ref in config.task.rewards]
    if environment is not None:
        from loop.environments import EnvironmentVerifier, environment_reward

        if env_verdict:
            verifiers.append(Chosen("environment",
                                    EnvironmentVerifier(env_config.pass_threshold), None, "loop"))
        if environment.name not in {r.name for r in rewards}:
            # TRL's convention: the environment's reward under its name
            rewards.append(Chosen(environment.name, environment_reward(environment.name), None,
                                  "loop"))
    backend = _choose(registry, "backends", config.backend, "backend")
    updater = _choose(registry, "updaters",
                      ComponentRef(name=config.train.method, options=config.train.options),
                      "train.method")
    critics = [_choose(registry, "critics", ref, f"task.critics.{ref.name}")
               for ref in config.task.critics]
    return Components(source, backend, verifiers, rewards, updater, critics, environment)


def resolve_environment(config: LoopConfig, registry: Registry) -> Chosen | None:
    """The task's environment: a registered one with validated options, or a TRL factory class
    or gym-style callable loaded from its file or module (a one-line ConfigError if it cannot
    be loaded)."""
    ref = config.task.environment
    if ref is None:
        return None
    if ref.name:
        chosen = _choose(registry, "environments",
                         ComponentRef(name=ref.name, options=ref.options), "task.environment")
        return chosen
    from loop.environments import FactoryEnvironment, GymEnvironment, load_object

    try:
        if ref.factory:
            component = FactoryEnvironment(load_object(ref.factory, "environment.factory"))
        else:
            component = GymEnvironment(load_object(ref.gym, "environment.gym"), ref.options,
                                       name=ref.label)
    except ValueError as exc:
        raise ConfigError(f"config error: task.{exc}") from None
    return Chosen(component.name, component, None, "loop")
