"""Run reports: PNG plots and one self-contained HTML page, read from the store.

`loop report RUN` draws five panels per run: held-out pass@1 (and the sampled pass@k where
`evaluate.samples` drew answers) and train solve rate per round, the reward distribution per
round, mistake kinds opened and resolved per round, the repair rate per
round and tokens/s per stage. The per-round numbers are `loop.summary`'s (what `loop show --json`
prints), so the page and the terminal never disagree; only the two distributions the summary does
not carry are read here: reward values (`rewards` table) and the mistake log's openings and
resolutions per kind (`mistakes`: `first_round`, `resolved_round`).

The page embeds its plots as base64 `data:` URIs and has no scripts or external assets, so it can
be mailed or archived as one file. A panel without data (a run of round 0 only, a run without
refinement, a run that failed early) is still drawn and says "no data" and why, so every report has
the same shape.

matplotlib is imported inside the plotting functions (`loop --help` must stay fast), and figures
are built with its object API (`Figure`, rendered by the Agg canvas), never pyplot: no global
backend is switched and no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop.store import Store
from loop.summary import run_summary

# File stem -> section heading, in page order.
SECTIONS = {
    "pass_rate": "Held-out pass@1 and train solve rate",
    "rewards": "Reward distribution",
    "mistakes": "Mistakes opened and resolved",
    "repairs": "Repairs",
    "throughput": "Tokens per second by stage",
}
NO_DATA = {
    "pass_rate": "no data: no round has been evaluated or trained yet",
    "rewards": "no data: no rewards recorded (round 0 only evaluates; later rounds have not "
               "reached the reward stage)",
    "mistakes": "no data: the mistake log of this run is empty",
    "repairs": "no data: no repairs (attempts with depth > 0) in this run: refinement is off "
               "(refine.depth = 0 or no critics), no first answer failed, or no round trained yet",
    "throughput": "no data: no stage recorded tokens and seconds",
}
MAX_KINDS = 8  # mistake kinds drawn by name; the rest are summed as "other"
FIGSIZE = (8.0, 3.6)
DPI = 100


@dataclass
class ReportData:
    """Everything a report shows, read once from the store."""

    summary: dict  # loop.summary.run_summary(...)
    rewards: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # round->fn->values
    rewards_missing: dict[int, dict[str, int]] = field(default_factory=dict)  # NULL ("n/a") values
    mistakes: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)
    # ^ round -> kind -> {"opened": n, "resolved": n}
    still_open: dict[str, int] = field(default_factory=dict)  # kind -> mistakes never resolved

    @property
    def rounds(self) -> list[dict]:
        return self.summary["rounds"]


def collect(store: Store, run: dict) -> ReportData:
    """Read a run's report data: `run_summary` plus reward values and mistake-log flows."""
    data = ReportData(summary=run_summary(store, run))
    for idx, fn, value in store.db.execute(
            "select a.round_idx, r.reward_fn, r.value from rewards r join attempts a "
            "on a.id = r.attempt_id where a.run_id = ? and a.purpose = 'train'", [run["id"]]):
        if value is None:
            missing = data.rewards_missing.setdefault(idx, {})
            missing[fn] = missing.get(fn, 0) + 1
            data.rewards.setdefault(idx, {}).setdefault(fn, [])
        else:
            data.rewards.setdefault(idx, {}).setdefault(fn, []).append(float(value))
    for kind, first, resolved in store.db.execute(
            "select kind, first_round, resolved_round from mistakes where run_id = ?", [run["id"]]):
        flows = data.mistakes.setdefault(first, {}).setdefault(kind, {"opened": 0, "resolved": 0})
        flows["opened"] += 1
        if resolved is None:
            data.still_open[kind] = data.still_open.get(kind, 0) + 1
        else:
            flows = data.mistakes.setdefault(resolved, {}).setdefault(
                kind, {"opened": 0, "resolved": 0})
            flows["resolved"] += 1
    return data


def write_report(store: Store, run: dict, out_dir: Path) -> dict[str, Path]:
    """Write `<stem>.png` for every section and `report.html` into `out_dir` (created if needed;
    files of an earlier report are replaced). Returns {"html": path, stem: png path, ...}."""
    data = collect(store, run)
    pngs = render_plots(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for stem, png in pngs.items():
        written[stem] = out_dir / f"{stem}.png"
        written[stem].write_bytes(png)
    written["html"] = out_dir / "report.html"
    written["html"].write_text(render_html(data, pngs), encoding="utf-8")
    return written


# ----- numbers ----------------------------------------------------------------------------------


def solve_rate(r: dict) -> float | None:
    """Share of the round's training prompts with a verified answer (repairs included)."""
    return r["train"]["solved_prompts"] / r["train"]["prompts"] if r["train"]["prompts"] else None


def sampled_ks(rounds: list[dict]) -> list[str]:
    """The k of the sampled pass@k any round has, in numeric order (as stored: "1", "8")."""
    return sorted({k for r in rounds for k in (r["eval"].get("pass_at_k") or {})}, key=int)


def repair_rate(r: dict) -> float | None:
    """Repairs (attempts with depth > 0) that passed, over repairs."""
    return r["train"]["repaired"] / r["train"]["repairs"] if r["train"]["repairs"] else None


def gain_vs_round_0(pass_at_1: dict[int, float | None]) -> float | None:
    """The last evaluated round's pass@1 minus round 0's (None without both)."""
    evaluated = sorted(i for i, v in pass_at_1.items() if v is not None)
    if 0 not in evaluated or evaluated[-1] == 0:
        return None
    return pass_at_1[evaluated[-1]] - pass_at_1[0]


def _stages(data: ReportData) -> list[str]:
    seen = {s for r in data.rounds for s in r["tokens_per_s"]}
    order = ["generate", "refine", "train", "evaluate"]
    return [s for s in order if s in seen] + sorted(seen - set(order))


def _kinds(data: ReportData) -> list[str]:
    """Mistake kinds, most often opened first."""
    totals: dict[str, int] = {}
    for kinds in data.mistakes.values():
        for kind, flows in kinds.items():
            totals[kind] = totals.get(kind, 0) + flows["opened"] + flows["resolved"]
    return sorted(totals, key=lambda k: (-totals[k], k))


# ----- plots ------------------------------------------------------------------------------------


def render_plots(data: ReportData) -> dict[str, bytes]:
    """One PNG (bytes) per section, in SECTIONS order."""
    draw = {"pass_rate": _plot_pass_rate, "rewards": _plot_rewards, "mistakes": _plot_mistakes,
            "repairs": _plot_repairs, "throughput": _plot_throughput}
    out = {}
    for stem, title in SECTIONS.items():
        fig, ax = _figure()
        if not draw[stem](ax, data):
            _no_data(ax, NO_DATA[stem])
        ax.set_title(title, fontsize=11)
        out[stem] = _png(fig)
    return out


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _no_data(ax, message: str) -> None:
    import textwrap

    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, textwrap.fill(message, 70), ha="center", va="center", fontsize=10,
            color="0.35", transform=ax.transAxes)


def _round_axis(ax, indices: list[int]) -> None:
    ax.set_xlabel("round")
    ax.set_xticks(indices)
    ax.grid(axis="y", alpha=0.3)


def _plot_pass_rate(ax, data: ReportData) -> bool:
    evaluated = [(r["index"], r["eval"]["pass_at_1"]) for r in data.rounds
                 if r["eval"]["pass_at_1"] is not None]
    trained = [(r["index"], solve_rate(r)) for r in data.rounds if solve_rate(r) is not None]
    if not evaluated and not trained:
        return False
    if evaluated:
        ax.plot(*zip(*evaluated), marker="o", label="held-out pass@1 (greedy)")
    for k in sampled_ks(data.rounds):
        points = [(r["index"], r["eval"]["pass_at_k"][k]) for r in data.rounds
                  if k in (r["eval"].get("pass_at_k") or {})]
        ax.plot(*zip(*points), marker="^", linestyle=":", label=f"held-out pass@{k} (sampled)")
    if trained:
        ax.plot(*zip(*trained), marker="s", linestyle="--", label="train solve rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share")
    ax.legend(loc="best", fontsize=8)
    _round_axis(ax, [r["index"] for r in data.rounds])
    return True


def _plot_rewards(ax, data: ReportData) -> bool:
    """A sideways histogram per round (and reward function); the fullest bin spans the round's
    slot, and with few distinct values (binary rewards) each bar is labelled with its share."""
    fns = sorted({fn for by_fn in data.rewards.values() for fn, v in by_fn.items() if v})
    if not fns:
        return False
    values = [v for by_fn in data.rewards.values() for vs in by_fn.values() for v in vs]
    centers, height, bin_of = _reward_bins(values)
    rounds = sorted(data.rewards)
    slot = 0.8 / len(fns)
    for i, fn in enumerate(fns):
        for idx in rounds:
            vs = data.rewards[idx].get(fn)
            if not vs:
                continue
            counts = [0] * len(centers)
            for v in vs:
                counts[bin_of(v)] += 1
            left = idx - 0.4 + slot * i
            bars = ax.barh(centers, [slot * 0.9 * c / max(counts) for c in counts], height=height,
                           left=left, color=f"C{i}", alpha=0.75,
                           label=fn if idx == rounds[0] else None)
            if len(centers) <= 6:  # few distinct values: print each share
                ax.bar_label(bars, labels=[f"{100 * c / len(vs):.0f}%" if c else ""
                                           for c in counts], padding=2, fontsize=7)
            ax.plot([left], [statistics.fmean(vs)], "D", color="black", markersize=4,
                    label="mean" if (i, idx) == (0, rounds[0]) else None)
    ax.set_ylabel("reward")
    ax.legend(loc="best", fontsize=8)
    _round_axis(ax, rounds)
    ax.set_xlim(rounds[0] - 0.5, rounds[-1] + 0.5)
    return True


def _reward_bins(values: list[float]):
    """(bin centres, bar height, value -> bin index): the distinct values when there are at most
    12 of them (binary and graded rewards), else 12 equal bins over the range."""
    distinct = sorted(set(values))
    if len(distinct) <= 12:
        gaps = [b - a for a, b in zip(distinct, distinct[1:])]
        height = 0.4 * min(gaps) if gaps else 0.1 * (abs(distinct[0]) or 1.0)
        position = {v: i for i, v in enumerate(distinct)}
        return distinct, height, position.__getitem__
    lo, hi = distinct[0], distinct[-1]
    step = (hi - lo) / 12
    centers = [lo + step * (i + 0.5) for i in range(12)]
    return centers, step * 0.9, lambda v: min(int((v - lo) / step), 11)


def _plot_mistakes(ax, data: ReportData) -> bool:
    kinds = _kinds(data)
    if not kinds:
        return False
    named = kinds[:MAX_KINDS - 1] if len(kinds) > MAX_KINDS else kinds
    groups = [(kind, [kind]) for kind in named]
    if len(named) < len(kinds):
        groups.append(("other kinds", kinds[len(named):]))
    rounds = sorted({r["index"] for r in data.rounds} | set(data.mistakes))
    opened_base = [0] * len(rounds)
    resolved_base = [0] * len(rounds)
    for i, (label, members) in enumerate(groups):
        opened = [_mistake_count(data, idx, members, "opened") for idx in rounds]
        resolved = [-_mistake_count(data, idx, members, "resolved") for idx in rounds]
        ax.bar(rounds, opened, bottom=opened_base, color=f"C{i}", label=label, width=0.6)
        ax.bar(rounds, resolved, bottom=resolved_base, color=f"C{i}", hatch="//", alpha=0.55,
               width=0.6)
        opened_base = [a + b for a, b in zip(opened_base, opened)]
        resolved_base = [a + b for a, b in zip(resolved_base, resolved)]
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("opened (up) / resolved (down)")
    ax.legend(loc="best", fontsize=8, title="kind", title_fontsize=8)
    _round_axis(ax, rounds)
    return True


def _mistake_count(data: ReportData, idx: int, kinds: list[str], flow: str) -> int:
    return sum(data.mistakes.get(idx, {}).get(k, {}).get(flow, 0) for k in kinds)


def _plot_repairs(ax, data: ReportData) -> bool:
    rows = [r for r in data.rounds if r["train"]["repairs"]]
    if not rows:
        return False
    indices = [r["index"] for r in rows]
    rates = [repair_rate(r) for r in rows]
    bars = ax.bar(indices, rates, width=0.6, color="C2")
    labels = [f"{r['train']['repaired']}/{r['train']['repairs']}" for r in rows]
    ax.bar_label(bars, labels=labels, padding=2, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("repairs that passed")
    _round_axis(ax, [r["index"] for r in data.rounds])
    return True


def _plot_throughput(ax, data: ReportData) -> bool:
    stages = _stages(data)
    if not stages:
        return False
    indices = [r["index"] for r in data.rounds]
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        positions = [idx - 0.4 + width * (i + 0.5) for idx in indices]
        values = [r["tokens_per_s"].get(stage, 0.0) for r in data.rounds]
        ax.bar(positions, values, width=width, label=stage, color=f"C{i}")
    ax.set_ylabel("tokens / s")
    ax.legend(loc="best", fontsize=8)
    _round_axis(ax, indices)
    return True


# ----- HTML -------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 9px; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dt { font-weight: bold; } dd { margin: 0; }
.empty { color: #666; font-style: italic; } .error { color: #b00; }
"""


def _fmt(value: Any, style: str = "") -> str:
    if value is None:
        return "–"
    if style == "pct":
        return f"{100 * value:.1f}%"
    if style == "pass":
        return f"{value:.3f}"
    if style == "signed":
        return f"{value:+.3f}"
    if isinstance(value, float):
        return f"{value:.1f}" if style == "1" else f"{value:.3f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]], text_columns: int = 0) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        css = ' class="text"' if i < text_columns or (tag == "th" and i == 0) else ""
        return f"<{tag}{css}>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(data: ReportData) -> dict[str, str]:
    """The per-round numbers under each plot (an "empty" note where there are none)."""
    r0 = {r["index"]: r["eval"]["pass_at_1"] for r in data.rounds}
    ks = sampled_ks(data.rounds)
    pass_rows = [[str(r["index"]), _fmt(r["eval"]["n"] or None),
                  _fmt(r["eval"]["pass_at_1"], "pass"), _fmt(r["eval"]["truncated_share"], "pct"),
                  *[_fmt((r["eval"].get("pass_at_k") or {}).get(k), "pass") for k in ks],
                  *([_fmt(r["eval"].get("samples") or None)] if ks else []),
                  _fmt(r["train"]["prompts"] or None),
                  _fmt(r["train"]["solved_prompts"] if r["train"]["prompts"] else None),
                  _fmt(solve_rate(r), "pct"),
                  _fmt(r["train"]["attempts"] or None),
                  _fmt(r["train"]["passed"] if r["train"]["attempts"] else None),
                  _fmt(r["train"]["truncated_share"], "pct")] for r in data.rounds]
    gain = gain_vs_round_0(r0)
    sampled = [*[f"pass@{k} (sampled)" for k in ks], *(["samples"] if ks else [])]
    tables = {"pass_rate": _table(
        ["round", "held-out n", "pass@1", "eval cut", *sampled, "train prompts", "solved",
         "solve rate", "attempts", "passed", "cut"], pass_rows)
        + f"<p>gain in held-out pass@1 vs round 0: <b>{_fmt(gain, 'signed')}</b></p>"}

    reward_rows = []
    for idx in sorted(data.rewards):
        for fn, values in sorted(data.rewards[idx].items()):
            missing = data.rewards_missing.get(idx, {}).get(fn, 0)
            reward_rows.append([str(idx), fn, str(len(values)),
                                _fmt(statistics.fmean(values) if values else None),
                                _fmt(statistics.pstdev(values) if values else None),
                                _fmt(min(values) if values else None),
                                _fmt(statistics.median(values) if values else None),
                                _fmt(max(values) if values else None), str(missing)])
    tables["rewards"] = _table(["round", "reward function", "n", "mean", "std", "min", "median",
                                "max", "not applicable"], reward_rows, text_columns=2)

    kinds = _kinds(data)
    mistake_rows = [[str(idx), kind, str(data.mistakes[idx][kind]["opened"]),
                     str(data.mistakes[idx][kind]["resolved"])]
                    for idx in sorted(data.mistakes) for kind in kinds
                    if kind in data.mistakes[idx]]
    open_rows = [[kind, str(data.still_open.get(kind, 0))] for kind in kinds]
    tables["mistakes"] = (
        _table(["round", "kind", "opened", "resolved"], mistake_rows, text_columns=2)
        + "<p>still open at the end of the run:</p>"
        + _table(["kind", "open"], open_rows, text_columns=1))

    repair_rows = [[str(r["index"]), str(r["train"]["repairs"]), str(r["train"]["repaired"]),
                    _fmt(repair_rate(r), "pct")] for r in data.rounds if r["train"]["repairs"]]
    tables["repairs"] = _table(["round", "repairs", "passed", "repair rate"], repair_rows)

    stages = _stages(data)
    speed_rows = [[str(r["index"]), *(_fmt(r["tokens_per_s"].get(s), "1") for s in stages),
                   _fmt(sum(r["timings"].values()), "1")] for r in data.rounds]
    tables["throughput"] = _table(["round", *(f"{s} tok/s" for s in stages), "seconds"],
                                  speed_rows)

    has_data = {"pass_rate": any(row[2] != "–" or row[6 + len(sampled)] != "–"
                                 for row in pass_rows),
                "rewards": bool(reward_rows), "mistakes": bool(mistake_rows),
                "repairs": bool(repair_rows), "throughput": bool(stages)}
    return {stem: tables[stem] if has_data[stem] else
            f'<p class="empty">{html.escape(NO_DATA[stem])}</p>' for stem in SECTIONS}


def _rounds_overview(data: ReportData) -> str:
    if not data.rounds:
        return '<p class="empty">no data: no round has started</p>'
    rows = []
    for r in data.rounds:
        update = r["update"] or {}
        rows.append([str(r["index"]), r["stage"] or "(none)", update.get("method", "–"),
                     _fmt(update.get("dataset_size")), str(r["errors"]["verifier"]),
                     str(r["errors"]["reward"]), _fmt(sum(r["timings"].values()), "1")])
    return _table(["round", "stage reached", "update", "dataset", "verifier errors",
                   "reward errors", "seconds"], rows, text_columns=3)


def render_html(data: ReportData, pngs: dict[str, bytes]) -> str:
    """The report page: run facts, a per-round overview, then each section's plot and table."""
    run = data.summary["run"]
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                    for k, v in (("id", run["id"]), ("task", run["task"]), ("model", run["model"]),
                                 ("status", run["status"]), ("created", run["created"]),
                                 ("finished", run["finished"] or "–"),
                                 ("rounds", len(data.rounds))))
    error = (f'<p class="error">error: {html.escape(run["error"])}</p>' if run["error"] else "")
    tables = _tables(data)
    sections = []
    for stem, title in SECTIONS.items():
        uri = "data:image/png;base64," + base64.b64encode(pngs[stem]).decode("ascii")
        sections.append(f'<section id="{stem}"><h2>{html.escape(title)}</h2>'
                        f'<img src="{uri}" alt="{html.escape(title)}">{tables[stem]}</section>')
    name = html.escape(run["name"])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>loop report: {name}</title><style>{STYLE}</style></head><body>"
            f"<h1>loop report: {name}</h1><dl>{facts}</dl>{error}"
            f"<h2>Rounds</h2>{_rounds_overview(data)}{''.join(sections)}"
            f"<footer><p>numbers as <code>loop show {name} --json</code> prints them; "
            "solve rate: training prompts with a verified answer (repairs included); pass@1: "
            "greedy, held-out split; pass@k (sampled): the unbiased estimate from "
            "evaluate.samples answers per held-out problem; repair rate: repairs (depth &gt; 0) "
            "that passed.</p>"
            "</footer></body></html>\n")


# ----- comparing runs ---------------------------------------------------------------------------


def comparison(store: Store, runs: list[dict]) -> list[dict]:
    """Per run: name, id, status, {round: held-out pass@1} (None where not evaluated), the gain
    of its last evaluated round over round 0, and `pass_at_k`: {round: {"samples",
    "sample_temperature", "pass_at_k": {"k": value}}} for the rounds with a sampled evaluation."""
    from loop.summary import sampled_eval

    out = []
    for run in runs:
        evaluations = store.evaluations(run["id"])
        indices = sorted({r["idx"] for r in store.rounds(run["id"])} | set(evaluations))
        pass_at_1 = {i: evaluations[i]["pass_at_1"] if i in evaluations else None
                     for i in indices}
        sampled = {i: sampled_eval(evaluations.get(i)) for i in indices}
        out.append({"id": run["id"], "name": run["name"], "status": run["status"],
                    "pass_at_1": pass_at_1, "gain_vs_round_0": gain_vs_round_0(pass_at_1),
                    "pass_at_k": {i: v for i, v in sampled.items() if v["pass_at_k"]}})
    return out


def plot_comparison(runs: list[dict], path: Path) -> None:
    """Held-out pass@1 per round, one line per run, written to `path` (format from its suffix)."""
    fig, ax = _figure()
    drawn = False
    for run in runs:
        points = [(i, v) for i, v in sorted(run["pass_at_1"].items()) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=run["name"])
            drawn = True
    if drawn:
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("held-out pass@1")
        ax.legend(loc="best", fontsize=8)
        _round_axis(ax, sorted({i for run in runs for i in run["pass_at_1"]}))
    else:
        _no_data(ax, "no data: none of these runs has an evaluated round")
    ax.set_title("Held-out pass@1 per round", fontsize=11)
    fig.savefig(path)


def safe_folder_name(name: str) -> str:
    """A run name as one path component (names are free text)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "run"
