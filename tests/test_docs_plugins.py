"""docs/plugins.md keeps up with loop/hookspecs.py (datasette's rule), every hook has a test, and
the examples in the docs are real plugins that load and do what the text says."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loop import hookspecs
from loop.plugin_manager import build_registry, get_plugin_manager

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
HEADING = re.compile(r"^#{2,4} `?(?P<name>[a-z_]+)(?P<signature>\(.*\))`?\s*$", re.M)
EXAMPLE = re.compile(r"```python\n# file: (?P<file>\w+\.py)\n(?P<code>.*?)```", re.S)


def hooks() -> dict[str, str]:
    """Hook name -> its signature as inspect.signature prints it, e.g. "(register)"."""
    return {name: str(inspect.signature(fn)) for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, "loop_spec")}


def documented() -> dict[str, str]:
    return {m["name"]: m["signature"] for m in HEADING.finditer(DOCS.read_text())}


def test_the_hook_list_is_the_real_one():
    assert set(hooks()) == {"register_tasks", "register_backends", "register_verifiers",
                            "register_critics", "register_rewards", "register_updaters",
                            "register_environments",
                            "register_commands", "prepare_db", "round_started",
                            "round_finished"}


@pytest.mark.parametrize("name", sorted(hooks()))
def test_every_hook_has_a_section_with_its_exact_signature(name):
    sections = documented()
    assert name in sections, f"docs/plugins.md has no section for hook {name}"
    assert sections[name] == hooks()[name], (
        f"docs/plugins.md documents {name}{sections[name]}, hookspecs says {name}{hooks()[name]}")


def test_no_section_documents_a_hook_that_does_not_exist():
    assert set(documented()) <= set(hooks())


def _test_sources() -> dict[Path, str]:
    files = [*(REPO / "tests").glob("test_*.py"), *(REPO / "plugins").glob("*/tests/test_*.py")]
    return {p: p.read_text() for p in files if p.resolve() != Path(__file__).resolve()}


@pytest.mark.parametrize("name", sorted(hooks()))
def test_every_hook_has_a_test(name):
    """A test implements the hook (`@...hookimpl` then `def NAME(`, in code or in plugin source
    kept in a string) or calls it through the plugin manager (`.hook.NAME(`)."""
    implemented = re.compile(r"@(?:loop\.)?hookimpl\b[^\n]*(?:\n|\\n)\s*def " + name + r"\(")
    called = re.compile(r"\.hook\." + name + r"\(")
    users = [path.relative_to(REPO) for path, text in _test_sources().items()
             if implemented.search(text) or called.search(text)]
    assert users, f"no test implements or calls hook {name}"


# ----- the examples are real plugins -------------------------------------------------------------

def examples() -> dict[str, str]:
    return {m["file"]: m["code"] for m in EXAMPLE.finditer(DOCS.read_text())}


@pytest.fixture
def docs_plugins(tmp_path):
    """The docs' `# file: NAME.py` examples as a --plugins-dir, loaded beside the first-party
    plugins; returns (plugin manager, registry, {file: module})."""
    folder = tmp_path / "docs-plugins"
    folder.mkdir()
    for name, code in examples().items():
        (folder / name).write_text(code)
    pm = get_plugin_manager(plugins_dir=folder)
    modules = {name: pm.get_plugin(f"file:{name}") for name in examples()}
    return pm, build_registry(pm), modules


def test_every_example_registers_what_the_docs_select(docs_plugins):
    _, registry, _ = docs_plugins
    expected = {
        "tasks": {"capitals": "capitals.py"},
        "backends": {"canned": "canned.py"},
        "verifiers": {"contains_reference": "contains_reference.py",
                      "python_syntax": "python_syntax.py", "word_overlap": "overlap.py"},
        "critics": {"cutoff": "cutoff_critic.py", "reread": "cutoff_critic.py"},
        "rewards": {"concise": "concise.py"},
        "updaters": {"best_only": "best_only.py"},
    }
    for kind, names in expected.items():
        for name, file in names.items():
            assert registry.plugin_of(kind, name) == f"file:{file}"
    # every command in the docs that selects a name selects one that exists
    text = DOCS.read_text()
    for kind, key in (("verifiers", "verifiers"), ("critics", "critics"), ("rewards", "rewards")):
        for chosen in re.findall(rf"task\.{key}=\[([\w-]+)\]", text):
            if chosen not in ("my-check", "NAME"):  # the scaffold's, and a placeholder
                assert chosen in registry.names(kind), chosen
    for chosen in re.findall(r"--method (\w+)", text):
        assert chosen in registry.names("updaters"), chosen


def _task(reference="4", content="What is 2+2?"):
    from loop.schema import Task

    return Task(source="t", split="train", reference=reference,
                prompt=[{"role": "user", "content": content}])


def _attempt(task, text, finish_reason="stop"):
    from loop.schema import Attempt

    return Attempt(id=f"a-{text}", run_id="r", round_index=1, task_id=task.id, purpose="train",
                   sample_index=0, messages=[], completion=text, finish_reason=finish_reason)


def test_task_and_backend_examples_work_through_a_config(docs_plugins):
    from loop.resolve import resolve_components
    from loop.config import build_config
    from loop.schema import Sampling

    _, registry, _ = docs_plugins
    config = build_config("capitals", sets=["task.options.eval_share=0.5", "backend.name=canned",
                                            "backend.options={answers: {hi: hello}}"])
    components = resolve_components(config, registry)
    source = components.task_source
    tasks = source.component.load(source.options, config.seed)
    assert len(tasks.eval) == 4 and len(tasks.train) == 4
    assert not {t.id for t in tasks.eval} & {t.id for t in tasks.train}
    assert [v.name for v in components.verifiers] == ["exact_match"]
    backend = components.backend
    session = backend.component.open(None, backend.options)
    seen = []
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "?"}]]
    out = session.generate(prompts, Sampling(n=2), progress=lambda **kw: seen.append(kw))
    assert [[g.text for g in gens] for gens in out] == [["hello", "hello"],
                                                        ["I don't know.", "I don't know."]]
    assert seen == [{"prompts": 1}, {"prompts": 1}]


def test_verifier_examples_through_the_engine(docs_plugins):
    from loop.resolve import Chosen
    from loop.guarded import safe_verify_batch

    _, registry, _ = docs_plugins

    def judge(name, items):
        component = registry.get("verifiers", name)
        if hasattr(component, "prepare"):
            component.prepare()
        return safe_verify_batch(Chosen(name, component, None, "docs"), items, 30.0)

    task = _task()
    verdicts = judge("contains_reference", [(task, _attempt(task, "it is 4")),
                                            (task, _attempt(task, "5"))])
    assert [(v.passed, v.error_kind) for v in verdicts] == [(True, None), (False, "model")]

    code = _task(reference=None)
    verdicts = judge("python_syntax", [(code, _attempt(code, "def f():\n    return 1\n")),
                                       (code, _attempt(code, "def f(:")),
                                       (code, _attempt(code, "(" * 10000))])
    assert verdicts[0].passed
    assert verdicts[1].mistake == "syntax_error" and "SyntaxError" in verdicts[1].feedback
    assert not verdicts[2].passed and verdicts[2].error_kind == "model"

    words = _task(reference="the red fox")
    verdicts = judge("word_overlap", [(words, _attempt(words, "The fox")),
                                      (words, _attempt(words, "a dog"))])
    assert [(v.passed, round(v.score, 3)) for v in verdicts] == [(True, 0.667), (False, 0.0)]


def test_prepare_of_the_batching_verifier_stops_a_bad_interpreter(docs_plugins):
    _, registry, _ = docs_plugins
    verifier = registry.get("verifiers", "python_syntax")
    verifier.options = verifier.Options(python="/nonexistent/python")
    with pytest.raises(OSError):
        verifier.prepare()


def test_critic_examples(docs_plugins):
    from loop.schema import Verdict

    _, registry, _ = docs_plugins
    task = _task()
    cutoff = registry.get("critics", "cutoff")
    assert cutoff.critique(task, _attempt(task, "Let me think", "length"), {}).kind == "truncated"
    critique = cutoff.critique(task, _attempt(task, "5"), {"math": Verdict(
        passed=False, error_kind="model", mistake="off_by_one", feedback="got 5")})
    assert (critique.kind, critique.text) == ("off_by_one", "got 5")
    assert cutoff.critique(task, _attempt(task, "4"), {"math": Verdict(passed=True)}) is None

    class Context:
        def generate(self, prompts, max_new_tokens=256):
            assert all("Answer: " in p[0]["content"] for p in prompts)
            return ["You added wrong.", "  "]

    reread = registry.get("critics", "reread")
    items = [(task, _attempt(task, "5"), {}), (task, _attempt(task, "6"), {})]
    results = reread.critique_batch(items, Context())
    assert results[0].text == "You added wrong." and results[1] is None


def test_reward_example(docs_plugins):
    from loop.schema import Verdict

    _, registry, _ = docs_plugins
    concise = registry.get("rewards", "concise")
    ok, wrong, broken = (Verdict(passed=True, score=1.0), Verdict(passed=False),
                         Verdict(passed=False, error_kind="infra"))
    completions = [[{"role": "assistant", "content": text}]
                   for text in ("4", " ".join(["word"] * 60), "5", "4")]
    values = concise(prompts=[[]] * 4, completions=completions,
                     verdicts=[{"m": ok}, {"m": ok}, {"m": wrong}, {"m": broken}])
    assert values == [1.0, 0.5, 0.0, None]


def test_updater_example_chooses_each_prompts_best_answer(docs_plugins):
    from types import SimpleNamespace

    from loop.schema import Sample
    from loop.updates import EmptyDataset

    _, registry, _ = docs_plugins
    updater = registry.get("updaters", "best_only")
    task, other = _task(), _task(content="What is 3+3?")

    def sample(t, text, reward):
        return Sample(task=t, attempt=_attempt(t, text), passed=bool(reward), score=0.0,
                      reward=reward)

    context = SimpleNamespace(options=updater.Options(min_reward=0.5), samples=[
        sample(task, "4", 0.6), sample(task, "four", 0.9), sample(other, "7", 0.2),
        sample(other, "6", None)])
    rows = updater.build_dataset(context)
    assert [r["completion"][0]["content"] for r in rows] == ["four"]
    context.samples = context.samples[2:]
    with pytest.raises(EmptyDataset):
        updater.update(context)


def test_command_example_adds_a_working_command(docs_plugins, tmp_path):
    from loop.store import Store, open_db

    pm, _, modules = docs_plugins
    db = tmp_path / "s.db"
    store = Store(open_db(db))
    store.db["runs"].insert({"id": "run-1", "name": "n"})
    store.db["tasks"].insert({"id": "t1"})
    for i, resolved in enumerate([None, None, 2]):
        store.db["mistakes"].insert({"id": f"m{i}", "run_id": "run-1", "task_id": "t1",
                                     "kind": f"k{i}", "resolved_round": resolved})
    app = typer.Typer()
    app.callback()(lambda: None)
    modules["open_mistakes.py"].register_commands(app=app)
    result = CliRunner().invoke(app, ["open-mistakes", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert result.output == "run-1\t2\n"


def test_prepare_db_and_observer_examples(docs_plugins, tmp_path, monkeypatch):
    from loop.rounds import RoundEngine
    from loop.store import open_db

    pm, _, modules = docs_plugins
    db = open_db(tmp_path / "s.db", pm)
    assert db["notes"].columns_dict == {"id": int, "run_id": str, "round_idx": int, "text": str}
    open_db(tmp_path / "s.db", pm)  # again: the migration ran once and is not repeated

    log = tmp_path / "rounds.jsonl"
    monkeypatch.setattr(modules["round_log.py"], "LOG", str(log))
    warnings = []
    engine = RoundEngine(store=None, config=None, components=None, run_id="run-1",
                         run_dir=tmp_path, pm=pm)
    engine.reporter = type("R", (), {"warn": lambda self, m: warnings.append(m)})()
    engine._notify("round_started", run_id="run-1", round_index=1, config=None)
    engine._notify("round_finished", run_id="run-1", round_index=1,
                   summary={"eval": {"pass_at_1": 0.25}})
    assert not warnings
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["run"] == "run-1" and record["round"] == 1 and record["pass_at_1"] == 0.25
    assert record["seconds"] >= 0
