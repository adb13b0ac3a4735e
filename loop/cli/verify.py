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
from rich.markup import escape
from rich.table import Table

from loop.cli.common import PLUGINS_DIR_OPTION, console, fail

MAX_ANSWER_BYTES = 1 << 20
# The id of the answer `loop verify` judges (error verdicts read "... on attempt loop-verify: ...")
VERIFY_ATTEMPT = "loop-verify"


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    task: str = typer.Argument(..., help="task: tasks/NAME.yaml, a task YAML file, or a "
                               "registered task source"),
    item_id: str = typer.Argument(..., help="the item: its task id (or a unique prefix), its "
                                  "name in the source (e.g. HumanEval/2, easy-001), or text of "
                                  "its prompt that only it has (e.g. '47 + 38'); `loop tasks "
                                  "TASK` lists the items"),
    answer_file: str = typer.Argument(..., help="file holding the answer, as the model would "
                                      "reply; '-' reads stdin"),
    verifier: Optional[str] = typer.Option(None, "--verifier", help="run only this one of the "
                                           "task's verifiers (default: all of them; to try "
                                           "another, add it with --set task.verifiers=[...])"),
    as_json: bool = typer.Option(False, "--json", help="print the verdicts as JSON"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run config YAML"),
    sets: list[str] = typer.Option([], "--set", help="override any config key: KEY=VALUE"),
    plugins_dir: Optional[Path] = PLUGINS_DIR_OPTION,
) -> None:
    """Run a task's verifiers on one answer and print each verdict: passed, score, error kind, mistake, feedback and time taken (and, for a verifier that raised, where and its traceback). Nothing is stored."""
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
    attempt = Attempt(id=VERIFY_ATTEMPT, run_id=VERIFY_ATTEMPT, round_index=0, task_id=item.id,
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
        for name, (v, _) in results.items():
            if v.details.get("traceback"):  # a verifier that raised: where, and its traceback
                console.print(f"[red]{escape(name)} raised[/red] at "
                              f"{escape(str(v.details.get('where') or '?'))}:",
                              highlight=False, soft_wrap=True)
                console.print(escape(str(v.details["traceback"]).rstrip()), highlight=False,
                              soft_wrap=True)
    raise typer.Exit(0 if passed else 1)


def user_text(task) -> str:
    """The item's question: the text of its prompt's last user message."""
    users = [m.get("content", "") for m in task.prompt if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _squeeze(text: str) -> str:
    """`text` without case, with runs of whitespace as one space and no space next to a
    character that is not a letter or digit: "What is 47 + 38 ?" -> "what is 47+38?"."""
    import re

    text = " ".join(text.split()).casefold()
    return re.sub(r" ?([^\w ]) ?", r"\1", text)


def prompt_matches(items: list, text: str) -> list:
    """The items whose prompt's user text is `text` or holds it as a whole piece (case and
    spaces around symbols ignored, so `47 + 38` finds "What is 47+38?" but not "What is 147+38?"): the
    items whose text equals it if there are any, else those that contain it."""
    wanted = _squeeze(text)
    if not wanted:
        return []
    exact = [t for t in items if _squeeze(user_text(t)) == wanted]
    if exact:
        return exact
    found = []
    for t in items:
        have = _squeeze(user_text(t))
        start = have.find(wanted)
        while start >= 0:
            end = start + len(wanted)
            before = have[start - 1] if start else ""
            after = have[end] if end < len(have) else ""
            if not (before.isalnum() and wanted[0].isalnum()) and \
                    not (after.isalnum() and wanted[-1].isalnum()):
                found.append(t)
                break
            start = have.find(wanted, start + 1)
    return found


def find_item(items: list, item_id: str):
    """The task whose id, unique id prefix or metadata name is `item_id`, else the one whose
    prompt text is or holds it (exit 2 when none or several are)."""
    exact = [t for t in items if t.id == item_id or t.metadata.get("name") == item_id]
    if exact:
        return exact[0]
    prefixed = [t for t in items if t.id.startswith(item_id)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        fail(f"item {item_id!r} is ambiguous: {len(prefixed)} task ids start with it", code=2)
    by_prompt = prompt_matches(items, item_id)
    if len(by_prompt) == 1:
        return by_prompt[0]
    if by_prompt:
        fail(f"item {item_id!r} is ambiguous: {len(by_prompt)} items' prompts hold it (`loop "
             f"tasks TASK -q {item_id!r}` lists them with their ids)", code=2)
    fail(f"no item {item_id!r} in this task (give a task id, a unique prefix of one, the "
         "item's name, or text of its prompt; `loop tasks TASK` lists the items)", code=2)


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
