"""What `loop` prints when stdout is not a terminal (CI logs, pipes): plain progress lines in
the order things happened, paths never broken across lines, help texts in whole sentences."""

from __future__ import annotations

import re

from typer.testing import CliRunner

import loop.cli.common
from loop.cli import app, build_app

SCRIPTED = ["--set", "backend.name=scripted",
            "--set", 'backend.options.completions=["The answer is 3."]', "--method", "noop",
            "--set", "select.prompts_per_round=3", "--set", "generate.n=2",
            "--set", "evaluate.problems=5"]


def test_piped_run_prints_one_plain_line_per_stage_and_whole_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.cli.common, "_PM", None)
    folder = tmp_path / ("a-rather-long-folder-name-for-the-store-" * 4)
    folder.mkdir()
    db = folder / "loop.db"
    result = CliRunner().invoke(app, ["run", "arithmetic", "--rounds", "1", "--db", str(db),
                                      *SCRIPTED])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.endswith(f"store {db}") for line in lines), result.output  # one line
    assert "━" not in result.output  # no progress bars dumped into the log
    stages = [line for line in lines if re.match(r"round \d · ", line)]
    assert [line.split(":")[0] for line in stages] == [
        "round 0 · evaluate", "round 0 · verify held-out", "round 1 · generate",
        "round 1 · verify", "round 1 · reward", "round 1 · train", "round 1 · evaluate",
        "round 1 · verify held-out"]
    assert re.fullmatch(r"round 1 · generate: 3/3 prompts, [\d,]+ tok/s, \d+\.\d s", stages[2])
    assert re.fullmatch(r"round 1 · verify: 6/6 attempts, \d+\.\d s", stages[3])
    # each stage's line comes before its round's summary line, not dumped after it
    done = lines.index(next(line for line in lines if line.startswith("round 1 done")))
    assert lines.index(stages[-1]) < done


def test_help_texts_have_no_line_breaks_inside_paragraphs():
    built = build_app()
    for info in built.registered_commands:
        text = info.help or ""
        assert text, info.name
        assert "\n" not in text.replace("\n\n", ""), (info.name, text)
    out = CliRunner().invoke(built, ["--help"], env={"COLUMNS": "220"}).output
    assert re.search(r"│ run +Run a self-improvement loop on TASK: round 0 evaluates the model, "
                     r"then each round samples", out), out
