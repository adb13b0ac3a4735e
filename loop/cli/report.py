"""`loop report RUN` (plots and an HTML page) and `loop compare RUN RUN...` (pass@1 side by side,
and the sampled pass@k where runs have it).

Both only read the store. matplotlib is imported when a plot is drawn, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loop.cli.common import DB_OPTION, console, fail, open_store, print_json


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("compare")(compare)


def _get_run(store, ref: str) -> dict:
    from loop.store import StoreError

    try:
        return store.get_run(ref)
    except StoreError as exc:
        fail(str(exc))


def report(
    run: str = typer.Argument(..., help="run id (or a unique prefix of it) or name"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the PNGs and report.html "
                                       "(default: reports/<run name>/)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Plots (PNG) and one self-contained HTML page of a run: held-out pass@1 and train solve
    rate, rewards, mistakes opened/resolved, repair rate and tokens/s, per round."""
    from loop.report import safe_folder_name, write_report

    store = open_store(db)
    row = _get_run(store, run)
    out = out if out is not None else Path("reports") / safe_folder_name(row["name"])
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    try:
        written = write_report(store, row, out)
    except OSError as exc:
        fail(f"cannot write the report to {out}: {exc.strerror or exc}")
    plots = len(written) - 1
    console.print(f"wrote {written['html']} and {plots} plots to {out}", highlight=False)


def compare(
    runs: list[str] = typer.Argument(..., help="two or more runs: ids, id prefixes or names"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw pass@1 per round to this "
                                        "image file (e.g. compare.png)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Held-out pass@1 per round of several runs side by side, and each run's gain over its
    round 0 (the last evaluated round minus round 0); runs with a sampled evaluation
    (evaluate.samples) also get their pass@k per round in a second table."""
    from loop.report import comparison

    if len(runs) < 2:
        fail("give at least two runs to compare (`loop show RUN` shows one)")
    if plot is not None:
        _check_plot_path(plot)
    store = open_store(db)
    rows = [_get_run(store, ref) for ref in runs]
    seen: dict[str, str] = {}
    for ref, row in zip(runs, rows):
        if row["id"] in seen:
            fail(f"{ref!r} and {seen[row['id']]!r} are the same run ({row['name']})")
        seen[row["id"]] = ref
    data = comparison(store, rows)
    if plot is not None:
        from loop.report import plot_comparison

        try:
            plot_comparison(data, plot)
        except OSError as exc:
            fail(f"cannot write {plot}: {exc.strerror or exc}")
    if as_json:
        print_json({"runs": [{**r, "pass_at_1": [{"round": i, "pass_at_1": v}
                                                 for i, v in r["pass_at_1"].items()],
                              "pass_at_k": [{"round": i, **v}
                                            for i, v in r["pass_at_k"].items()]}
                             for r in data], "plot": str(plot) if plot else None})
        return
    console.print(comparison_table(data))
    if any(run["pass_at_k"] for run in data):
        console.print(sampled_comparison_table(data))
    if plot is not None:
        console.print(f"wrote {plot}", highlight=False)


def _check_plot_path(plot: Path) -> None:
    """Fail before any work when the image cannot be written where asked."""
    formats = {"png", "svg", "pdf", "jpg", "jpeg", "webp", "eps", "ps", "tif", "tiff"}
    if plot.is_dir():
        fail(f"--plot {plot} is a folder; give an image file such as {plot / 'compare.png'}")
    if plot.suffix.lstrip(".").lower() not in formats:
        fail(f"--plot {plot}: unknown image format {plot.suffix or '(no suffix)'!r}; use .png, "
             ".svg or .pdf")
    if not plot.parent.is_dir():
        fail(f"--plot {plot}: folder {plot.parent} does not exist")


def comparison_table(data: list[dict]):
    """Rows are rounds, columns runs; the last row is each run's gain over round 0."""
    from rich import box
    from rich.table import Table

    table = Table(title="held-out pass@1 per round", box=box.SIMPLE_HEAD,
                  caption="pass@1: greedy, held-out split · gain: last evaluated round minus "
                          "round 0")
    table.add_column("round", justify="right")
    for run in data:
        table.add_column(f"{run['name']}\n{run['id']}", justify="right")
    for idx in sorted({i for run in data for i in run["pass_at_1"]}):
        table.add_row(str(idx), *(_cell(run["pass_at_1"].get(idx)) for run in data))
    table.add_section()
    table.add_row("gain vs 0", *("–" if run["gain_vs_round_0"] is None
                                 else f"{run['gain_vs_round_0']:+.3f}" for run in data))
    return table


def sampled_comparison_table(data: list[dict]):
    """The sampled held-out pass@k (evaluate.samples): rows are rounds, a column per run and k."""
    from rich import box
    from rich.table import Table

    table = Table(title="held-out pass@k per round (sampled)", box=box.SIMPLE_HEAD,
                  caption="pass@k: unbiased estimate from n sampled answers per held-out "
                          "problem at temperature T (evaluate.samples, evaluate.temperature)")
    table.add_column("round", justify="right")
    columns = []
    for run in data:
        ks = sorted({k for v in run["pass_at_k"].values() for k in v["pass_at_k"]}, key=int)
        drawn = sorted({(v["samples"], v["sample_temperature"])
                        for v in run["pass_at_k"].values()})
        setting = ", ".join(f"n={n} T={t:g}" for n, t in drawn)
        for k in ks:
            table.add_column(f"{run['name']}\npass@{k} ({setting})", justify="right")
            columns.append((run, k))
    rounds = sorted({i for run in data for i in run["pass_at_k"]})
    for idx in rounds:
        table.add_row(str(idx), *(_cell(run["pass_at_k"].get(idx, {}).get("pass_at_k", {})
                                        .get(k)) for run, k in columns))
    return table


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
