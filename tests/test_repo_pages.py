"""The repository stands on its own and the README stays a first page: no file points at paths
outside the checkout, and the README is short and free of work notes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"\.\./shared|shared/reference|shared/DESIGN|(?<![\w/])DESIGN\.md")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    return [REPO / name for name in out if not name.startswith("loop/locks/")]


def test_no_file_refers_to_a_path_outside_the_repository():
    hits = []
    for path in tracked():
        if path.resolve() == Path(__file__).resolve() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                 if OUTSIDE.search(line)]
    assert hits == []


def test_readme_is_a_first_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"\bissue \d+|#\d+\b", text, re.I)
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # every relative link resolves
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
