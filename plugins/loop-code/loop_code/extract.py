"""Find the program in a model's answer: a fenced block, or bare code."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |class |import |from |async def |@)", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def defines(code: str, name: str) -> bool:
    """Whether `code` defines `name` at its top level (a def, class or assignment)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return bool(re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The program in `answer`, or "" when there is none.

    Fenced blocks tagged python (or untagged) come first: the first one that defines
    `entry_point` if any does, else the first; an unclosed fence (an answer cut off by the token
    limit) runs to the end. Without fences, the answer itself if it parses, else the answer from
    its first line that starts like code (`def`, `class`, `import`, `from`, a decorator)."""
    blocks = [body for tag, body in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        if entry_point:
            for body in blocks:
                if defines(body, entry_point):
                    return body.strip("\n")
        return blocks[0].strip("\n")
    text = answer.strip("\n")
    if not text.strip():
        return ""
    try:
        ast.parse(text)
        return text
    except (SyntaxError, ValueError):
        pass
    match = _CODE_START.search(text)
    return text[match.start():] if match else ""


def program(answer: str, entry_point: str | None, stub: str) -> str:
    """The code to run: the extracted code, after the task's `stub` (the given signature and
    docstring) when the answer does not define the entry point itself: a completion-style
    answer that continues the function body."""
    code = extract_code(answer, entry_point)
    if stub and entry_point and not defines(code, entry_point):
        blocks = [body for tag, body in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
        body = blocks[0] if blocks else answer  # a bare body does not parse on its own
        return stub + body.strip("\n") + "\n"
    return code
