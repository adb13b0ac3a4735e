"""How runs look in a terminal: live rich progress per stage, and the per-round table."""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

UNITS = {"generate": "prompts", "evaluate": "prompts", "verify": "attempts", "refine": "repairs",
         "evaluate:verify": "attempts", "evaluate-samples": "prompts",
         "evaluate-samples:verify": "attempts", "train": "steps", "reward": "functions"}
# The evaluate stage's inner steps, as the user reads them.
LABELS = {"evaluate:verify": "verify held-out", "evaluate-samples": "sample held-out",
          "evaluate-samples:verify": "verify held-out samples"}


class StageBar:
    """One progress bar; callable as the engine's StageProgress."""

    def __init__(self, progress: Progress, task_id: Any):
        self.progress = progress
        self.task_id = task_id
        self.tokens = 0
        self.started = time.perf_counter()

    def __enter__(self) -> "StageBar":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.progress.stop_task(self.task_id)
        return False

    def __call__(self, *, prompts: int = 0, tokens: int = 0, items: int = 0,
                 total: int | None = None) -> None:
        if total is not None:
            self.progress.update(self.task_id, total=total)
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{self.tokens / elapsed:,.0f} tok/s" if self.tokens else ""
        self.progress.update(self.task_id, advance=prompts + items, rate=rate)


class PlainStage:
    """A stage's progress without a bar: counts what is done, prints one line when it ends."""

    def __init__(self, console: Console, label: str, unit: str, total: int | None):
        self.console, self.label, self.unit, self.total = console, label, unit, total
        self.done = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def __enter__(self) -> "PlainStage":
        return self

    def __exit__(self, *exc: Any) -> bool:
        seconds = time.perf_counter() - self.started
        rate = f", {self.tokens / seconds:,.0f} tok/s" if self.tokens and seconds > 0 else ""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        self.console.print(f"{self.label}: {count} {self.unit}{rate}, {seconds:.1f} s"
                           .replace("  ", " "), highlight=False, soft_wrap=True)
        return False

    def __call__(self, *, prompts: int = 0, tokens: int = 0, items: int = 0,
                 total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done += prompts + items
        self.tokens += tokens


class _NoBars:
    """What `RichReporter.progress` is without a terminal: nothing to start or stop."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class RichReporter:
    """Draws a bar per stage (counts, tokens/s, elapsed) and a line per finished round. When the
    console is not a terminal (a pipe, a CI log, a file), no bars: one plain line per finished
    stage with its count and seconds, in the order things happened."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = console.is_terminal
        self.progress: Any = Progress(
            TextColumn("[bold]{task.description:<26}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("[cyan]{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) if self.bars else _NoBars()

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.progress.stop()
        return False

    def stage(self, round_idx: int, stage: str, total: int | None) -> StageBar | PlainStage:
        label = LABELS.get(stage, stage)
        unit = UNITS.get(stage.split()[0], "")
        if not self.bars:
            return PlainStage(self.console, f"round {round_idx} · {label}", unit, total)
        task_id = self.progress.add_task(f"round {round_idx} · {label}", total=total,
                                         unit=unit, rate="")
        return StageBar(self.progress, task_id)

    def round_done(self, summary: dict) -> None:
        self.console.print(round_line(summary), highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        # soft_wrap: a long line (a path, an attempt id) is never broken in the middle
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False,
                           soft_wrap=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def round_line(summary: dict) -> str:
    train, ev = summary["train"], summary["eval"]
    parts = [f"[bold]round {summary['index']} done[/bold]:"]
    if train["attempts"]:
        parts.append(f"train solved {train['solved_prompts']}/{train['prompts']} prompts, "
                     f"{train['passed']}/{train['attempts']} attempts passed;")
    if ev["n"]:
        parts.append(f"held-out pass@1 [bold]{ev['pass_at_1']:.3f}[/bold] on {ev['n']} "
                     f"(cut off {_pct(ev['truncated_share'])});")
    if ev.get("pass_at_k"):
        figures = ", ".join(f"pass@{k} {v:.3f}" for k, v in ev["pass_at_k"].items())
        parts.append(f"sampled ({ev['samples']} at T={ev['sample_temperature']:g}): {figures};")
    errors = summary.get("errors", {})
    if errors.get("verifier") or errors.get("reward"):
        parts.append(f"[red]plugin errors: {errors['verifier']} verdicts (see `loop logs`), "
                     f"{errors['reward']} rewards a reward function failed to give[/red];")
    parts.append(f"{sum(summary['timings'].values()):.0f} s")
    return " ".join(parts)


def rounds_table(data: dict) -> Table:
    """The per-round table of `loop run` (at the end) and `loop show`."""
    run = data["run"]
    table = Table(title=f"run {run['name']} ({run['id']}) · {run['task']} · {run['status']}",
                  box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="solved: train prompts with a verified answer (repairs included) · "
                          "repaired: repairs that passed / repairs · pass@1: greedy, held-out "
                          "split · cut: answers stopped by the token limit · errors: plugin "
                          "failures (verdicts + rewards; `loop show` breaks them down)")
    refined = any(r["train"].get("repairs") for r in data["rounds"])
    ks, samples = sampled_columns(data["rounds"])
    if ks:
        table.caption += (" · pass@k n=N: unbiased estimate from N sampled answers per "
                          "held-out problem (evaluate.samples)")
    episodes = any(r.get("episodes") for r in data["rounds"])
    if episodes:
        table.caption += (" · tool use: held-out episodes with a tool call that worked · "
                          "turns: mean model turns per held-out episode")
    columns = ["round", "solved", "passed", *(["repaired"] if refined else []), "cut", "pass@1",
               *[f"pass@{k}\nn={samples}" for k in ks],
               *(["tool use", "turns"] if episodes else []),
               "eval cut", "eval len", "errors", "tok/s", "train s", "total s"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in data["rounds"]:
        train, ev = r["train"], r["eval"]
        errors = r.get("errors", {})
        solve = _pct(train["solved_prompts"] / train["prompts"]) if train["prompts"] else "–"
        passed = _pct(train["passed"] / train["attempts"]) if train["attempts"] else "–"
        repaired = [f"{train['repaired']}/{train['repairs']}" if train.get("repairs") else "–"]
        table.add_row(
            str(r["index"]), solve, passed, *(repaired if refined else []),
            _pct(train["truncated_share"]),
            f"{ev['pass_at_1']:.3f}" if ev["pass_at_1"] is not None else "–",
            *[_pass_cell((ev.get("pass_at_k") or {}).get(k)) for k in ks],
            *(_episode_cells(r.get("episodes", {}).get("evaluate")) if episodes else []),
            _pct(ev["truncated_share"]),
            f"{ev['mean_completion_tokens']:.1f}" if ev["mean_completion_tokens"] else "–",
            str(errors.get("verifier", 0) + errors.get("reward", 0)),
            f"{r['tokens_per_s'].get('generate', r['tokens_per_s'].get('evaluate', 0)):.0f}",
            f"{r['timings'].get('train', 0):.0f}",
            f"{sum(r['timings'].values()):.0f}",
        )
    return table


def _episode_cells(stats: dict | None) -> list[str]:
    if not stats or not stats.get("count"):
        return ["–", "–"]
    return [_pct(stats["tool_call_share"]), f"{stats['mean_turns']:.1f}"]


def sampled_columns(rounds: list[dict]) -> tuple[list[str], str]:
    """The k of every sampled pass@k the rounds have (as stored: "1", "8", ...; numeric order)
    and the samples per problem ("8"; "4/8" when rounds differ)."""
    ks = sorted({k for r in rounds for k in (r["eval"].get("pass_at_k") or {})}, key=int)
    drawn = sorted({r["eval"]["samples"] for r in rounds if r["eval"].get("samples")})
    return ks, "/".join(str(n) for n in drawn)


def _pass_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def checks_table(data: dict) -> Table:
    """`loop show`'s per-round checks: each verifier's pass rate (train answers; held-out in a
    round without them, round 0), each reward function's mean, and the plugin errors: verdicts
    that are plugin failures, reward values a function failed to give, and NULL rewards."""
    rounds = data["rounds"]
    verifiers = list(dict.fromkeys(n for r in rounds for n in r.get("verifiers", {})))
    rewards = list(dict.fromkeys(n for r in rounds for n in r.get("rewards", {})))
    table = Table(title="checks per round", box=box.SIMPLE_HEAD, pad_edge=False, caption=(
        "✓ NAME: share of the round's train answers that verifier passed (round 0: held-out) · "
        "mean NAME: the reward's mean, NULLs left out · verdict errors: infra/timeout verdicts "
        "(`loop logs --failed` shows where) · reward errors: values a reward function failed "
        "to give (raised, wrong length, not a number) · NULL rewards: all of them, including "
        "the \"not applicable\" a reward gives on an infra verdict, which is no error"))
    for column in ["round", *[f"✓ {v}" for v in verifiers], *[f"mean {n}" for n in rewards],
                   "verdict errors", "reward errors", "NULL rewards"]:
        table.add_column(column, justify="right")
    for r in rounds:
        errors = r.get("errors", {})
        by_function = errors.get("reward_by_function") or {}
        failed = ", ".join(f"{n} {c}" for n, c in by_function.items()) or "0"
        table.add_row(str(r["index"]),
                      *[_verifier_cell(r.get("verifiers", {}).get(v)) for v in verifiers],
                      *[_mean_cell(r.get("rewards", {}).get(n)) for n in rewards],
                      str(errors.get("verifier", 0)), failed, str(errors.get("null_rewards", 0)))
    return table


def _verifier_cell(rates: dict | None) -> str:
    if not rates:
        return "–"
    rate = rates["train_pass_rate"] if rates["train_n"] else rates["eval_pass_rate"]
    return _pct(rate)


def _mean_cell(reward: dict | None) -> str:
    return "–" if not reward or reward["mean"] is None else f"{reward['mean']:.3f}"


def time_table(data: dict) -> Table:
    """`loop show`'s breakdown of each round's wall time (loop.timing): per stage its seconds and,
    in brackets, the part outside the model and the verifiers; then loop's overhead in all."""
    rounds = data["rounds"]
    main = [s for s in ("generate", "verify", "refine", "train", "evaluate")
            if any(r["time"]["stages"].get(s, {}).get("seconds", 0) >= 0.05 for r in rounds)]
    total = data["time"]
    share = total["overhead_share"]
    table = Table(title="where the time went (s)", box=box.SIMPLE_HEAD, pad_edge=False, caption=(
        "stage: seconds (overhead: not in the model or the verifiers: model loading, data "
        "building, store writes, plugin calls) · other: select, reward, mistakes · between: "
        "commits and summaries between stages · *: no model time reported, counted as work\n"
        f"run: {total['wall_seconds']:.1f} s, {total['outside_rounds_seconds']:.1f} s outside "
        f"rounds; overhead {total['overhead_seconds']:.1f} s = "
        + ("–" if share is None else f"{100 * share:.1f}%") + " of the run"))
    for column in ["round", *main, "other", "between", "overhead", "wall"]:
        table.add_column(column, justify="right", no_wrap=True)
    for r in rounds:
        time = r["time"]
        stages = time["stages"]
        cells = [_stage_cell(stages.get(name)) for name in main]
        other = [stages[name] for name in ("select", "reward", "mistakes") if name in stages]
        cells.append(_stage_cell({
            "seconds": sum(s["seconds"] for s in other),
            "overhead_seconds": sum(s["overhead_seconds"] for s in other),
            "reported": True}) if other else "–")
        table.add_row(str(r["index"]), *cells, f"{time['between_stages_seconds']:.1f}",
                      f"{time['overhead_seconds']:.1f} ({_pct(time['overhead_share'])})",
                      f"{time['wall_seconds']:.1f}")
    return table


def _stage_cell(stage: dict | None) -> str:
    if stage is None:
        return "–"
    return (f"{stage['seconds']:.1f} ({stage['overhead_seconds']:.1f})"
            + ("" if stage["reported"] else "*"))
