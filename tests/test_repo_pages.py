"""The repository stands on its own and the README stays a first page: no file points at a path
that leaves the checkout, and the README is short, free of work notes, and its links resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A relative path that starts with one or more parent-folder steps, and the name after them.
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+)([\w][\w.-]*)")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    return [REPO / name for name in out if not name.startswith("loop/locks/")]


def leaves_the_repo(path: Path, climb: str, name: str) -> bool:
    """Whether `climb + name` written in `path` names nothing inside the checkout, read from the
    file's own folder or from the repository root."""
    for start in (path.parent, REPO):
        target = (start / climb / name).resolve()
        if target.is_relative_to(REPO) and target.exists():
            return False
    return True


def test_no_file_refers_to_a_path_outside_the_repository():
    hits = []
    for path in tracked():
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(REPO)}:{n}: {m.group(0)}" for m in CLIMB.finditer(line)
                     if leaves_the_repo(path, m.group(1), m.group(2))]
    assert hits == []


def test_readme_is_a_first_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"\bissue \d+|#\d+\b", text, re.I)
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # every relative link resolves
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
