"""`loop verify TASK ITEM_ID ANSWER_FILE`: run a task's verifiers on one answer, print the verdicts.

For plugin authors trying a verifier, and for anyone asking "why did this answer fail?". Nothing
is written to the store. Exit status: 0 when every verifier passed the answer, 1 when one did
not, 2 for bad input (unknown task or item, unreadable file, a verifier that cannot start).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loop.cli.common import PLUGINS_DIR_OPTION, console, fail

MAX_ANSWER_BYTES = 1 << 20


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    task: str = typer.Argument(..., help="task: tasks/NAME.yaml, a task YAML file, or a "
                               "registered task source"),
    item_id: str = typer.Argument(..., help="the item: its task id (or a unique prefix), or its "
                                  "name in the source (e.g. HumanEval/2, easy-001)"),
    answer_file: str = typer.Argument(..., help="file holding the answer, as the model would "
                                      "reply; '-' reads stdin"),
    verifier: Optional[str] = typer.Option(None, "--verifier", help="run only this verifier "
                                           "(default: every verifier of the task)"),
    as_json: bool = typer.Option(False, "--json", help="print the verdicts as JSON"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run config YAML"),
    sets: list[str] = typer.Option([], "--set", help="override any config key: KEY=VALUE"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """Run a task's verifiers on one answer and print each verdict: passed, score, error kind,
    mistake, feedback and time taken. Nothing is stored."""
    from loop.cli.run import resolve_task
    from loop.guarded import safe_verify
    from loop.runs import RunError, prepare_verifiers
    from loop.schema import Attempt

    plan = resolve_task(task, config, {}, sets, plugins_dir)
    cfg, components, tasks = plan.config, plan.components, plan.tasks
    chosen = components.verifiers
    if verifier is not None:
        chosen = [c for c in chosen if c.name == verifier]
        if not chosen:
            names = ", ".join(c.name for c in components.verifiers)
            fail(f"task {cfg.task.source} has no verifier {verifier!r} (it has: {names}; "
                 "add it to task.verifiers with --set to try another)", code=2)
        components.verifiers = chosen
    item = find_item(tasks.train + tasks.eval, item_id)
    answer = read_answer(answer_file)
    try:
        prepare_verifiers(components)
    except RunError as exc:
        fail(str(exc), code=exc.code)
    attempt = Attempt(id="verify", run_id="verify", round_index=0, task_id=item.id,
                      purpose=item.split, sample_index=0, messages=[*item.prompt,
                      {"role": "assistant", "content": answer}], completion=answer)
    results = {}
    for one in chosen:
        started = time.perf_counter()
        verdict = safe_verify(one, item, attempt, cfg.verify.timeout_s)
        results[one.name] = (verdict, time.perf_counter() - started)
    passed = all(v.passed for v, _ in results.values())
    if as_json:
        print(json.dumps({"task": item.id, "name": item.metadata.get("name"), "passed": passed,
                          "verdicts": {name: {**v.model_dump(mode="json"), "seconds": round(s, 4)}
                                       for name, (v, s) in results.items()}}, indent=2))
    else:
        table = Table(title=f"{cfg.task.source} {item.metadata.get('name') or item.id}")
        for column in ("verifier", "passed", "score", "error kind", "mistake", "seconds",
                       "feedback"):
            table.add_column(column, overflow="fold")
        for name, (v, s) in results.items():
            table.add_row(name, "yes" if v.passed else "no", f"{v.score:.3f}",
                          v.error_kind or "", v.mistake or "", f"{s:.3f}", v.feedback)
        console.print(table)
    raise typer.Exit(0 if passed else 1)


def find_item(items: list, item_id: str):
    """The task whose id, unique id prefix or metadata name is `item_id` (exit 2 otherwise)."""
    exact = [t for t in items if t.id == item_id or t.metadata.get("name") == item_id]
    if exact:
        return exact[0]
    prefixed = [t for t in items if t.id.startswith(item_id)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        fail(f"item {item_id!r} is ambiguous: {len(prefixed)} task ids start with it", code=2)
    fail(f"no item {item_id!r} in this task (give a task id, a unique prefix of one, or the "
         "item's name)", code=2)


def read_answer(answer_file: str) -> str:
    """The answer's text (UTF-8, undecodable bytes replaced), at most 1 MiB (exit 2 otherwise)."""
    try:
        data = sys.stdin.buffer.read(MAX_ANSWER_BYTES + 1) if answer_file == "-" \
            else Path(answer_file).read_bytes()
    except OSError as exc:
        fail(f"{answer_file}: cannot read: {exc.strerror or exc}", code=2)
    if len(data) > MAX_ANSWER_BYTES:
        fail(f"{answer_file}: larger than {MAX_ANSWER_BYTES} bytes; not an answer", code=2)
    return data.decode("utf-8", errors="replace")
