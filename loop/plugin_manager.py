"""Plugin manager factory and the name registry built from it.

Plugins come from three places, in this order:
1. built-ins inside `loop` itself (`loop.builtin_plugins`, registered as `loop.builtins`: generic pieces with no heavy dependency);
2. installed distributions with an entry point in group "loop" (the first-party `plugins/loop-*`
   distributions are loaded exactly this way). `LOOP_LOAD_PLUGINS` works as in llm: unset loads all,
   "" loads none, "a,b" loads only the named entry points or distributions;
3. loose `.py` files in `--plugins-dir DIR` (env `LOOP_PLUGINS_DIR`), imported by path under a private
   module name: the folder is never put on sys.path, so its file names cannot shadow real modules.

`build_registry(pm)` asks every plugin to register its components and maps each kind's names to
components; a name registered twice is an error that names both plugins.

`LOOP_TRACE_PLUGINS=1` (for plugin authors) prints one `loop-trace:` line to stderr per hook
implementation call, per registered component and (loop.guarded) per component call.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import os
import reprlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy
from pydantic import BaseModel

from loop import hookspecs
from loop.interfaces import Backend, Critic, Environment, TaskSource, Updater, Verifier

ENTRY_POINT_GROUP = "loop"

# kind -> hook name; the kinds a config selects by name.
KINDS: dict[str, str] = {
    "tasks": "register_tasks",
    "backends": "register_backends",
    "verifiers": "register_verifiers",
    "critics": "register_critics",
    "rewards": "register_rewards",
    "updaters": "register_updaters",
    "environments": "register_environments",
}


# kind -> the base class its components must subclass (rewards: any callable, TRL's contract).
BASES: dict[str, type] = {"tasks": TaskSource, "backends": Backend, "verifiers": Verifier,
                          "critics": Critic, "updaters": Updater, "environments": Environment}


class PluginError(Exception):
    """A plugin failed to load or register; the message names the plugin."""


def get_plugin_manager(load_entrypoints: bool = True, plugins_dir: str | Path | None = None,
                       builtins: bool = True) -> pluggy.PluginManager:
    """Build a fresh plugin manager (tests build their own; nothing global is mutated)."""
    pm = TracingPluginManager("loop") if tracing() else pluggy.PluginManager("loop")
    pm.add_hookspecs(hookspecs)
    if builtins:
        from loop import builtin_plugins as builtin_plugin

        pm.register(builtin_plugin, name="loop.builtins")
    if load_entrypoints:
        _load_entrypoints(pm)
    plugins_dir = plugins_dir or os.environ.get("LOOP_PLUGINS_DIR") or None
    if plugins_dir:
        load_plugins_dir(pm, Path(plugins_dir))
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    wanted = os.environ.get("LOOP_LOAD_PLUGINS")
    allowed = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ""
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the CLI down silently
            raise PluginError(f"plugin {ep.name!r} ({dist}) failed to import: {exc}") from exc
        pm.register(module, name=ep.name)
        _DISTRIBUTIONS.setdefault(id(pm), {})[ep.name] = ep.dist.version if ep.dist else None


# plugin-manager id -> {plugin name: version of the distribution it came from}
_DISTRIBUTIONS: dict[int, dict[str, str | None]] = {}


def load_plugins_dir(pm: pluggy.PluginManager, folder: Path) -> list[str]:
    """Import every `*.py` in `folder` by path and register it; return the plugin names."""
    if not folder.is_dir():
        raise PluginError(f"--plugins-dir {folder}: no such folder")
    names = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"file:{path.name}"
        module_name = f"_loop_plugins_dir.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"plugin file {path}: {type(exc).__name__}: {exc}") from exc
        if pm.get_plugin(name) is None:
            pm.register(module, name=name)
        names.append(name)
    return names


@dataclass
class Registered:
    component: Any
    plugin: str


@dataclass
class Registry:
    """Components by kind and name, plus which plugin registered each."""

    kinds: dict[str, dict[str, Registered]] = field(default_factory=dict)

    def names(self, kind: str) -> list[str]:
        return sorted(self.kinds.get(kind, {}))

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.kinds[kind][name].component
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"unknown {kind[:-1]} {name!r} (installed: {known})") from None

    def plugin_of(self, kind: str, name: str) -> str:
        return self.kinds[kind][name].plugin


def _component_name(kind: str, component: Any, name: str | None) -> str:
    if name:
        return name
    if kind == "rewards":
        return getattr(component, "name", None) or getattr(component, "__name__", "")
    return getattr(component, "name", "")


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registry hook, one plugin at a time, so each name knows its plugin."""
    registry = Registry({kind: {} for kind in KINDS})
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            register = _make_register(registry, kind, plugin_name)
            kwargs = {arg: register for arg in impl.argnames}
            try:
                impl.function(**kwargs)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
    return registry


def _make_register(registry: Registry, kind: str, plugin_name: str) -> Callable[..., None]:
    def register(component: Any, name: str | None = None) -> None:
        key = _component_name(kind, component, name)
        base = BASES.get(kind)
        if base is not None and not isinstance(component, base):
            raise PluginError(f"plugin {plugin_name!r} registered {key or component!r} as a "
                              f"{kind[:-1]}, but it is not a loop.{base.__name__} (subclass it)")
        if base is None and not callable(component):
            raise PluginError(f"plugin {plugin_name!r} registered reward {key or component!r}, "
                              "which is not callable")
        if not key:
            raise PluginError(f"plugin {plugin_name!r} registered a {kind[:-1]} without a name")
        existing = registry.kinds[kind].get(key)
        if existing is not None:
            raise PluginError(
                f"duplicate {kind[:-1]} name {key!r}: registered by plugin {existing.plugin!r} "
                f"and by plugin {plugin_name!r}"
            )
        registry.kinds[kind][key] = Registered(component, plugin_name)
        if tracing():
            what = component if inspect.isroutine(component) else type(component)
            trace(f"hook {KINDS[kind]} [{plugin_name}] registered {kind[:-1]} {key!r}: "
                  f"{what.__module__}.{what.__qualname__}")

    return register


def plugin_version(pm: pluggy.PluginManager, name: str) -> str | None:
    """The version of the distribution a plugin was loaded from (None for loose files)."""
    if name == "loop.builtins":
        import loop

        return loop.__version__
    return _DISTRIBUTIONS.get(id(pm), {}).get(name)


def describe_plugins(pm: pluggy.PluginManager, registry: Registry) -> list[dict[str, Any]]:
    """What `loop plugins --json` prints: name, version, hooks and registered names per kind."""
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        registers = {
            kind: sorted(n for n, reg in registry.kinds[kind].items() if reg.plugin == name)
            for kind in KINDS
        }
        out.append({"name": name, "version": plugin_version(pm, name), "hooks": hooks,
                    **registers})
    return out


# ----- tracing (LOOP_TRACE_PLUGINS) -------------------------------------------------------------

TRACE_ENV = "LOOP_TRACE_PLUGINS"


def tracing() -> bool:
    """Whether LOOP_TRACE_PLUGINS asks for traces ("", "0", "false", "no", "off": no)."""
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def trace(line: str) -> None:
    """One trace line on stderr, prefixed so it can be grepped out of a run's output."""
    sys.stderr.write(f"loop-trace: {line}\n")
    sys.stderr.flush()


class _ShortRepr(reprlib.Repr):
    def repr_instance(self, obj: object, level: int) -> str:
        if isinstance(obj, BaseModel):  # records: only the fields that differ from the defaults
            fields = obj.model_dump(exclude_defaults=True)
            inner = ", ".join(f"{k}={self.repr1(v, level - 1)}" for k, v in fields.items())
            return f"{type(obj).__name__}({inner})"
        return super().repr_instance(obj, level)


_SHORT = _ShortRepr()
_SHORT.maxstring = 60
_SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 3
_SHORT.maxlevel = 3


def short_repr(value: object, limit: int = 160) -> str:
    """A repr short enough for one trace line; lists say how many items they hold."""
    if inspect.isroutine(value):
        return f"<function {getattr(value, '__name__', '?')}>"
    text = _SHORT.repr(value)
    if isinstance(value, (list, tuple)) and len(value) > 1:
        text = f"{len(value)} items {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class TracingPluginManager(pluggy.PluginManager):
    """A plugin manager whose hook implementations each print a trace line when called.

    pluggy's own `add_hookcall_monitoring` and `enable_tracing` only see calls made through
    `pm.hook.NAME(...)`, but loop calls the registry hooks (to know which plugin registered each
    name) and the round observers (so a failing observer is reported and skipped) implementation
    by implementation. Wrapping each implementation where it is registered catches every path.
    """

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            for caller in self.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not inspect.isgeneratorfunction(impl.function):
                        _trace_calls(caller.name, impl)  # wrappers (generators) are left alone
        return registered


def _trace_calls(hook_name: str, impl: pluggy.HookImpl) -> None:
    function = impl.function

    @functools.wraps(function)
    def traced(*args: object, **kwargs: object) -> object:
        shown = ", ".join(f"{k}={short_repr(v, 60)}"
                          for k, v in {**dict(zip(impl.argnames, args)), **kwargs}.items())
        started = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:
            trace(f"hook {hook_name} [{impl.plugin_name}] ({shown}) "
                  f"{time.perf_counter() - started:.3f}s raised {type(exc).__name__}: "
                  f"{short_repr(str(exc), 120)}")
            raise
        trace(f"hook {hook_name} [{impl.plugin_name}] ({shown}) "
              f"{time.perf_counter() - started:.3f}s -> {short_repr(result)}")
        return result

    # HookImpl.function is typed Final but is a plain slot; pluggy and loop both call through it.
    impl.function = traced  # type: ignore[misc]
