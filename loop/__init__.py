"""loop: a plugin-based self-improvement loop for language models.

`import loop` is the whole plugin API: records, base classes, the hook marker and the helpers a
plugin may reuse all come from here, and a plugin never imports `loop.<submodule>` nor pluggy:

    import loop

    class AlwaysPass(loop.Verifier):
        name = "always_pass"

        def verify(self, task, attempt):
            return loop.Verdict(passed=True, score=1.0)

    @loop.hookimpl
    def register_verifiers(register):
        register(AlwaysPass())

Test doubles for plugin tests are in `loop.testing`.
"""

from loop.chat import ChatFormat, TokenizerChat
from loop.checkpoints import scratch_dir
from loop.environments import FactoryEnvironment, GymEnvironment
from loop.guarded import PluginFailure, call_plugin, safe_verify, safe_verify_batch
from loop.hookspecs import hookimpl
from loop.interfaces import (
    Backend,
    Component,
    Critic,
    CriticContext,
    Environment,
    Episode,
    GenerationSession,
    TaskSource,
    Updater,
    Verifier,
    coerce_options,
)
from loop.models import ModelNotFound, resolve_model
from loop.plugin_manager import PluginError, build_registry, get_plugin_manager
from loop.resolve import Chosen
from loop.reward_verifiers import RewardVerifier, reward_verifier, trl_arguments
from loop.schema import (
    SOLUTION_KEY,
    Attempt,
    Critique,
    Generation,
    Message,
    ModelRef,
    Sample,
    Sampling,
    Step,
    Task,
    TaskSet,
    ToolCall,
    Turn,
    UpdateResult,
    Verdict,
    stable_id,
)
from loop.tool_calls import format_tool_call, parse_tool_calls
from loop.task_files import read_jsonl, split_tasks, unique_by
from loop.updates import EmptyDataset, UpdateContext, fold_verdicts

__version__ = "0.1.0"

__all__ = [
    # records
    "Attempt", "Critique", "Generation", "Message", "ModelRef", "Sample", "Sampling", "Task",
    "TaskSet", "UpdateResult", "Verdict", "stable_id", "Step", "ToolCall", "Turn", "SOLUTION_KEY",
    # base classes
    "Backend", "Component", "Critic", "CriticContext", "GenerationSession", "TaskSource",
    "Updater", "Verifier", "coerce_options", "Environment", "Episode",
    # episodes: environments from outside, token-exact chat formats, tool calls
    "FactoryEnvironment", "GymEnvironment", "ChatFormat", "TokenizerChat", "parse_tool_calls",
    "format_tool_call",
    # plugging in
    "hookimpl", "reward_verifier", "RewardVerifier", "trl_arguments", "Chosen",
    "get_plugin_manager", "build_registry", "PluginError",
    # guarded calls a plugin may reuse
    "call_plugin", "PluginFailure", "safe_verify", "safe_verify_batch",
    # updaters
    "UpdateContext", "EmptyDataset", "fold_verdicts", "scratch_dir",
    # task sources and models
    "read_jsonl", "split_tasks", "unique_by", "resolve_model", "ModelNotFound",
    "__version__",
]
