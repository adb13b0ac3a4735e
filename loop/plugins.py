"""Deprecated: moved to loop.plugin_manager; `loop.get_plugin_manager` and `loop.build_registry` are public (see CHANGELOG.md)."""

from loop._moved import moved as _moved

_HOMES = {
    "ENTRY_POINT_GROUP": "loop.plugin_manager",
    "KINDS": "loop.plugin_manager",
    "PluginError": "loop.plugin_manager",
    "get_plugin_manager": "loop.plugin_manager",
    "_load_entrypoints": "loop.plugin_manager",
    "_DISTRIBUTIONS": "loop.plugin_manager",
    "load_plugins_dir": "loop.plugin_manager",
    "Registered": "loop.plugin_manager",
    "Registry": "loop.plugin_manager",
    "_component_name": "loop.plugin_manager",
    "build_registry": "loop.plugin_manager",
    "_make_register": "loop.plugin_manager",
    "plugin_version": "loop.plugin_manager",
    "describe_plugins": "loop.plugin_manager",
    "TRACE_ENV": "loop.plugin_manager",
    "tracing": "loop.plugin_manager",
    "trace": "loop.plugin_manager",
    "_ShortRepr": "loop.plugin_manager",
    "_SHORT": "loop.plugin_manager",
    "short_repr": "loop.plugin_manager",
    "TracingPluginManager": "loop.plugin_manager",
    "_trace_calls": "loop.plugin_manager",
}


def __getattr__(name):
    return _moved(__name__, name, _HOMES)
