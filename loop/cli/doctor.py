"""`loop doctor`: installed versions, devices, and how they compare with what we test."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import console, err_console, fail, print_json


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    python: Optional[Path] = typer.Option(None, "--python", help="check another interpreter's "
                                          "environment instead (e.g. the vllm backend's worker "
                                          "venv: .venv-vllm/bin/python)"),
) -> None:
    """Print the versions of python, torch, transformers, trl, peft, vllm, accelerate and
    datasets, and the devices; warn (one line each) about anything outside the combinations we
    test. Exits 1 only when a required package is missing."""
    from loop.doctor import DoctorError, check, collect, report

    try:
        env = collect(str(python) if python is not None else None)
    except DoctorError as exc:
        fail(str(exc), code=2)
    findings = check(env)
    data = report(env, findings)
    if as_json:
        print_json(data)
    else:
        _print(data)
    if not data["ok"]:
        raise typer.Exit(1)


def _print(data: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"python {data['python']} ({escape(data['interpreter'])}); checked against the "
                  f"[bold]{data['combination']['name']}[/bold] combination: "
                  f"{data['combination']['where']}", highlight=False)
    table = Table(box=None, pad_edge=False)
    for column in ("package", "version", "tested range", ""):
        table.add_column(column)
    for name, facts in data["packages"].items():
        version = facts["version"]
        if version is None:
            mark = "[red]missing[/red]" if facts["required"] else "[dim]not installed[/dim]"
        elif facts["in_range"] is False:
            mark = "[yellow]outside[/yellow]"
        else:
            mark = "[green]ok[/green]" if facts["in_range"] else ""
        shown = version or "-"
        if facts["distribution"] and facts["distribution"] != name:
            shown += f" ({facts['distribution']})"
        table.add_row(name, shown, facts["tested_range"] or "-", mark)
    console.print(table)
    devices = data["devices"]
    if devices["cuda"]:
        for d in devices["cuda"]:
            console.print(f"cuda:{d['index']} {d['name']}, {d['memory_gib']} GiB, compute "
                          f"capability {d['capability']} (CUDA {data['torch_cuda']})",
                          highlight=False)
    cpu = devices["cpu"]
    memory = f", {cpu['memory_gib']} GiB memory" if "memory_gib" in cpu else ""
    console.print(f"cpu: {cpu.get('usable_cores')} of {cpu.get('cores')} cores usable"
                  f"{memory} ({cpu.get('machine')})", highlight=False)
    for finding in data["findings"]:
        colour = "red" if finding["level"] == "error" else "yellow"
        level = finding["level"]
        err_console.print(f"[{colour}]{level}:[/{colour}] {escape(finding['message'])}",
                          highlight=False, soft_wrap=True)
