"""The seams: every way a plugin extends `loop`.

Registry hooks receive a `register` callback (as in simonw/llm); the config then selects
components **by name**, and two plugins registering the same name is an error naming both.
Hooks are always called with keyword arguments; arguments may be added later, never renamed or
removed, so a plugin may declare only the arguments it uses.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("loop")
hookimpl = HookimplMarker("loop")


@hookspec
def register_tasks(register):
    """Register task sources: `register(source)`, a `loop.TaskSource` whose `load(options, seed)`
    returns a TaskSet of disjoint train and eval tasks."""


@hookspec
def register_backends(register):
    """Register generation backends: `register(backend)`, a `loop.Backend` that turns prompts into
    completions. A backend never writes to the store."""


@hookspec
def register_verifiers(register):
    """Register verifiers: `register(verifier)`, a `loop.Verifier` with `verify(task, attempt) ->
    Verdict`. It must not raise for a bad answer: return `Verdict(passed=False, ...)` instead.
    Optional: `verify_batch(items)` to judge chunks of (task, attempt) pairs at once (e.g. in
    parallel workers), and `prepare()`, called before a run starts or resumes, which raises to
    stop it with a one-line reason (e.g. a sandbox that does not isolate)."""


@hookspec
def register_critics(register):
    """Register critics: `register(critic)`, a `loop.Critic` with `critique(task, attempt, verdicts)
    -> Critique | None` (or `critique_batch(items, context)` to batch a model's generation).
    Critics see the task without its reference (or a reference solution in its metadata) unless
    the task sets `hints: true`; a critic that raises is reported and contributes nothing to that
    round's repairs."""


@hookspec
def register_rewards(register):
    """Register reward functions with TRL's contract: `register(fn, name=None)` where
    `fn(prompts, completions, **kwargs) -> list[float | None]` (None: not applicable to that sample).
    kwargs include `tasks`, `attempts`, `verdicts` (one dict verifier -> Verdict per sample) and
    `reference`. The name defaults to `fn.__name__`."""


@hookspec
def register_environments(register):
    """Register environments for multi-turn episodes: `register(environment)`, a
    `loop.Environment` whose `episode(task)` returns a fresh `loop.Episode` (tools, or a text
    world that answers each model turn, and a reward). Chosen by the task config's
    `environment:`."""


@hookspec
def register_updaters(register):
    """Register update methods: `register(updater)`, a `loop.Updater` with `update(context) ->
    UpdateResult(adapter_path, metrics)`; `context` is a `loop.UpdateContext`."""


@hookspec
def register_commands(app):
    """Add Typer commands or sub-apps to the root `loop` app, e.g. `loop mycommand`."""


@hookspec
def prepare_db(db):
    """Called after the core migrations on every open of a store (a `sqlite_utils.Database`).
    Plugins that keep tables of their own apply their own `Migrations("loop-<plugin>")` here."""


@hookspec
def round_started(run_id, round_index, config):
    """Observe the start of a round. Return value ignored."""


@hookspec
def round_finished(run_id, round_index, summary):
    """Observe a finished round; `summary` is the dict `loop show --json` prints for it."""
