"""`loop logs` (attempts, like `llm logs`) and `loop mistakes` (the mistake log)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import DB_OPTION, console, fail, open_store, print_json

RUN_ARGUMENT = typer.Argument(None, help="run id, id prefix or name (default: the latest run)")


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
    app.command("mistakes")(mistakes)


def _run_id(store, run: str | None) -> str:
    from loop.store import StoreError

    if run is None:
        runs = store.list_runs()
        if not runs:
            fail("the store has no runs yet (run `loop run TASK` first)")
        return runs[-1]["id"]
    try:
        return store.get_run(run)["id"]
    except StoreError as exc:
        fail(str(exc))


def logs(
    run: Optional[str] = RUN_ARGUMENT,
    query: Optional[str] = typer.Option(None, "-q", "--query",
                                        help="text in the answer, prompt, verifier feedback or "
                                        "mistake kind"),
    mistake: Optional[str] = typer.Option(None, "--mistake", help="only answers with this "
                                          "mistake kind (a verifier's, or a classifying "
                                          "critic's, as in `loop mistakes`)"),
    round_idx: Optional[int] = typer.Option(None, "--round", help="only this round"),
    failed: bool = typer.Option(False, "--failed", help="only answers that failed verification"),
    passed: bool = typer.Option(False, "--passed", help="only answers that passed"),
    task: Optional[str] = typer.Option(None, "--task", help="only this task id (or id prefix)"),
    tree: bool = typer.Option(False, "--tree", help="show refinement chains as trees"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    count: int = typer.Option(10, "-n", "--count", help="how many attempts (0: all)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Attempts of a run with their verdicts and rewards, newest round first."""
    from loop.queries import attempt_logs

    if failed and passed:
        fail("--failed and --passed exclude each other")
    store = open_store(db)
    rows = attempt_logs(store, _run_id(store, run), query=query, round_idx=round_idx,
                        passed=True if passed else (False if failed else None), task_id=task,
                        limit=count or None, with_chains=tree, mistake=mistake)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no attempts match")
        return
    if tree:
        _print_tree(rows)
    else:
        for row in rows:
            _print_attempt(row)


def _headline(row: dict) -> str:
    mark = "[green]passed[/green]" if row["passed"] else "[red]failed[/red]"
    parent = f" · repairs {row['parent_id'][:10]}" if row["parent_id"] else ""
    return (f"[bold]{row['id'][:12]}[/bold] round {row['round']} · {row['purpose']} · task "
            f"{row['task_id'][:10]} · sample {row['sample_index']}{parent} · {mark}")


def _details(row: dict) -> list[str]:
    from rich.markup import escape

    lines = [f"[dim]prompt:[/dim] {escape(row['prompt'])}"]
    if row.get("environment"):  # an episode: every turn, then how it ended
        lines += [_turn_line(i, turn) for i, turn in enumerate(row["turns"])]
        lines.append(f"[dim]episode:[/dim] {escape(row['environment'])}, ended: "
                     f"{escape(str(row.get('end_reason')))}")
    else:
        lines.append(f"[dim]answer:[/dim] {escape(row['completion'].strip())}"
                     + (" [yellow](cut off)[/yellow]" if row["finish_reason"] == "length"
                        else ""))
    for name, v in row["verdicts"].items():
        what = v["mistake"] or v["error_kind"] or ""
        feedback = f": {escape(v['feedback'])}" if v["feedback"] else ""
        lines.append(f"[dim]{escape(name)}:[/dim] score {v['score']:.2f} {escape(what)}{feedback}")
        where = (v.get("details") or {}).get("where")
        if where:  # a verifier that raised: where its code was (--json has the traceback)
            lines.append(f"  [dim]raised at[/dim] {escape(str(where))}")
    for critique in row.get("critiques", []):
        lines.append(f"[dim]critique ({escape(critique['critic'])}, {escape(critique['kind'])}):"
                     f"[/dim] {escape(critique['text'])}")
    if row["rewards"]:
        lines.append("[dim]rewards:[/dim] " + ", ".join(
            f"{escape(k)}={'–' if v is None else f'{v:g}'}" for k, v in row["rewards"].items()))
    return lines


def _turn_line(index: int, turn: dict) -> str:
    """One turn of an episode: the model's text (and the calls it made), a tool's result or
    error, an observation."""
    from rich.markup import escape

    text = escape(" ".join(turn["content"].split())[:300])
    reward = f" [dim](reward {turn['reward']:g})[/dim]" if turn.get("reward") is not None else ""
    if turn["role"] == "assistant":
        calls = ", ".join(f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['arguments'].items())})"
                          for c in turn["tool_calls"])
        called = f" [cyan]→ {escape(calls)}[/cyan]" if calls else ""
        return f"[dim]{index}. model:[/dim] {text}{called}{reward}"
    if turn["role"] == "tool":
        mark = "[red]error[/red] " if turn.get("error") else ""
        return f"[dim]{index}. tool {escape(str(turn.get('name') or '?'))}:[/dim] {mark}{text}"
    return f"[dim]{index}. environment:[/dim] {text}{reward}"


def _print_attempt(row: dict) -> None:
    console.print(_headline(row), highlight=False)
    for line in _details(row):
        console.print("  " + line, highlight=False)
    console.print()


def _print_tree(rows: list[dict]) -> None:
    from rich.tree import Tree

    by_parent: dict[str | None, list[dict]] = {}
    ids = {r["id"] for r in rows}
    for row in rows:
        parent = row["parent_id"] if row["parent_id"] in ids else None
        by_parent.setdefault(parent, []).append(row)

    def add(node, row):
        branch = node.add("\n".join([_headline(row), *_details(row)]))
        for child in by_parent.get(row["id"], []):
            add(branch, child)

    for root in by_parent.get(None, []):
        tree = Tree("\n".join([_headline(root), *_details(root)]))
        for child in by_parent.get(root["id"], []):
            add(tree, child)
        console.print(tree, highlight=False)
        console.print()


def mistakes(
    run: Optional[str] = RUN_ARGUMENT,
    open_only: bool = typer.Option(False, "--open", help="only mistakes not resolved yet"),
    recurring: bool = typer.Option(False, "--recurring", help="only mistakes seen in 2+ rounds"),
    kind: Optional[str] = typer.Option(None, "--kind", help="only this mistake kind"),
    query: Optional[str] = typer.Option(None, "-q", "--query",
                                        help="text in the feedback, kind or prompt"),
    count: int = typer.Option(50, "-n", "--count", help="how many mistakes, most frequent "
                              "first (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """The run's mistake log: one row per (task, kind), with the rounds it was seen and resolved."""
    from loop.queries import mistake_count, mistake_rows

    store = open_store(db)
    run_id = _run_id(store, run)
    filters = dict(open_only=open_only, recurring=recurring, kind=kind, query=query)
    rows = mistake_rows(store, run_id, limit=count or None, **filters)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=_mistakes_title(rows, mistake_count(store, run_id, **filters), filters))
    for column in ("task", "prompt", "kind", "rounds", "seen", "resolved", "last feedback"):
        table.add_column(column, overflow="fold")
    for r in rows:
        rounds = str(r["first_round"]) if r["first_round"] == r["last_round"] else \
            f"{r['first_round']}–{r['last_round']}"
        resolved = "open" if r["resolved_round"] is None else f"round {r['resolved_round']}"
        table.add_row(r["task_id"][:10], r["prompt"][:60], r["kind"], rounds,
                      str(r["occurrences"]), resolved, (r["last_feedback"] or "")[:80])
    console.print(table)


def _mistakes_title(rows: list[dict], total: dict[str, int], filters: dict) -> str:
    """What the table shows, counted honestly: `the 3 most frequent of 16 open mistakes of kind
    wrong_answer` when -n cut the list, else `16 mistakes, 4 open`."""
    what = " ".join(filter(None, ["recurring" if filters["recurring"] else "",
                                  "open" if filters["open_only"] else ""]))
    noun = f"{what} mistake{'' if total['rows'] == 1 else 's'}".strip()
    which = "".join([f" of kind {filters['kind']}" if filters["kind"] else "",
                     f" matching {filters['query']!r}" if filters["query"] else ""])
    still_open = "" if filters["open_only"] else f", {total['open']} open"
    if len(rows) < total["rows"]:
        shown_open = "" if filters["open_only"] else \
            f" ({sum(r['resolved_round'] is None for r in rows)} open)"
        return (f"the {len(rows)} most frequent{shown_open} of {total['rows']} {noun}{which}"
                f"{still_open}")
    return f"{total['rows']} {noun}{which}{still_open}"
