"""The code task sources: HumanEval conversion and splits, the JSONL reader (our format and MBPP's),
one-line errors naming file and line, and the shipped easy set."""

import ast
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from loop_code.tasks import (
    DEFAULT_SYSTEM_PROMPT, EASY_PATH, CodeEasyTasks, CodeJsonlOptions, CodeJsonlTasks,
    HumanEvalOptions, HumanEvalTasks, convert_check, infer_entry_point, load_humaneval,
)

METADATA_KEYS = {"tests", "setup", "entry_point", "stub"}
REPO = Path(__file__).resolve().parents[3]


def run_tests(code: str, setup: str, tests: list[str]) -> None:
    """Trusted reference code only: exec in-process, each test in a fresh namespace."""
    for test in tests:
        exec(compile(code + "\n" + setup + "\n" + test, "<test>", "exec"), {})


def eval_ids(taskset):
    return [t.id for t in taskset.eval]


# ----- humaneval -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval():
    return HumanEvalTasks().load(HumanEvalOptions(), seed=0)


def test_humaneval_loads_all_164_in_disjoint_splits(humaneval):
    assert len(humaneval.eval) == 64 and len(humaneval.train) == 100
    # Entry points repeat in HumanEval (two `add`s); the stubs do not.
    assert len({t.metadata["stub"] for t in humaneval.train + humaneval.eval}) == 164
    assert {t.split for t in humaneval.train} == {"train"}
    assert {t.split for t in humaneval.eval} == {"eval"}
    assert not {t.id for t in humaneval.train} & {t.id for t in humaneval.eval}
    assert HumanEvalTasks.name == "humaneval"
    assert HumanEvalTasks.default_verifiers == ["python_tests"]


def test_humaneval_eval_split_is_seeded_and_stable_under_train_size(humaneval):
    source = HumanEvalTasks()
    capped = source.load({"train_size": 10}, seed=0)
    assert eval_ids(capped) == eval_ids(humaneval)
    assert len(capped.train) == 10
    assert [t.id for t in capped.train] == [t.id for t in humaneval.train[:10]]
    assert eval_ids(source.load(None, seed=0)) == eval_ids(humaneval)
    assert set(eval_ids(source.load(None, seed=1))) != set(eval_ids(humaneval))
    assert len(source.load({"eval_size": 20}, seed=0).eval) == 20


def test_humaneval_options_are_validated():
    with pytest.raises(ValidationError):
        HumanEvalOptions(eval_size=164)  # none would be left for training
    with pytest.raises(ValidationError):
        HumanEvalOptions(bogus=1)


def test_humaneval_task_shape(humaneval):
    task = next(t for t in humaneval.train + humaneval.eval
                if t.metadata["entry_point"] == "truncate_number")  # HumanEval/2
    system, user = task.prompt
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    stub = task.metadata["stub"]
    assert stub.startswith("def truncate_number(number: float) -> float:")
    assert user == {"role": "user",
                    "content": f"Complete this Python function:\n```python\n{stub}```"}
    assert task.reference == stub + "    return number % 1.0\n"
    assert task.metadata["solution"] == "    return number % 1.0\n"
    assert set(task.metadata) == METADATA_KEYS | {"solution", "name"}
    assert task.metadata["name"] == "HumanEval/2"
    # The flat check becomes one snippet per assert, `candidate` renamed to the entry point.
    assert task.metadata["tests"] == [
        "assert truncate_number(3.5) == 0.5",
        "assert abs(truncate_number(1.33) - 0.33) < 1e-06",
        "assert abs(truncate_number(123.456) - 0.456) < 1e-06",
    ]
    assert task.metadata["setup"] == "METADATA = {'author': 'jt', 'dataset': 'test'}"


def test_humaneval_reference_passes_every_converted_test():
    """Proves the conversion: the canonical solution passes every snippet, for all 164."""
    problems = load_humaneval()
    per_assert = 0
    for problem in problems:
        assert problem.entry_point and problem.tests
        run_tests(problem.solution, problem.setup, list(problem.tests))
        if not problem.tests[0].startswith("def check"):
            per_assert += 1
            assert all(t.startswith("assert ") and "candidate" not in t for t in problem.tests)
    assert per_assert == 157  # the other 7 have loops, local imports or a print in check


def test_convert_check_falls_back_to_whole_check_and_drops_constant_asserts():
    flat = ("import math\n\ndef check(candidate):\n    'doc'\n    assert candidate(1) == 2\n"
            "    assert True, 'debugging aid'\n    assert math.isclose(candidate(0), 1)\n")
    setup, tests, per_assert = convert_check(flat, "inc")
    assert per_assert and setup == "import math"
    assert tests == ["assert inc(1) == 2", "assert math.isclose(inc(0), 1)"]

    loopy = "def check(candidate):\n    for i in range(3):\n        assert candidate(i) == i + 1\n"
    setup, tests, per_assert = convert_check(loopy, "inc")
    assert not per_assert and setup == ""
    assert tests == [loopy.rstrip("\n") + "\n\ncheck(inc)"]
    run_tests("def inc(x):\n    return x + 1\n", setup, tests)
    with pytest.raises(AssertionError):
        run_tests("def inc(x):\n    return x\n", setup, tests)


# ----- code-jsonl ------------------------------------------------------------------------------


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode()
                                for line in lines) + b"\n")
    return str(path)


def ours(i, **extra):
    row = {"prompt": f"Return {i} plus x.", "tests": [f"assert plus_{i}(1) == {i + 1}"],
           "entry_point": f"plus_{i}", "solution": f"def plus_{i}(x):\n    return x + {i}\n"}
    row.update(extra)
    return json.dumps(row)


def load(path, seed=0, **options):
    return CodeJsonlTasks().load(CodeJsonlOptions(path=path, **options), seed)


def error_of(path, **options):
    with pytest.raises(ValueError) as info:
        load(path, **options)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_code_jsonl_reads_our_format(tmp_path):
    path = write(tmp_path, [ours(i) for i in range(10)] + [""]
                 + [ours(10, setup="import math", id="x-10")])
    tasks = load(path, eval_size=3)
    assert len(tasks.eval) == 3 and len(tasks.train) == 8
    task = next(t for t in tasks.train + tasks.eval if t.metadata["entry_point"] == "plus_10")
    assert task.source == "code-jsonl"
    assert task.prompt[-1] == {"role": "user",
                               "content": "Return 10 plus x.\nWrite a Python function `plus_10`."}
    assert task.reference == "def plus_10(x):\n    return x + 10\n"
    assert task.metadata == {"tests": ["assert plus_10(1) == 11"], "setup": "import math",
                             "entry_point": "plus_10", "stub": "", "name": "x-10",
                             "solution": "def plus_10(x):\n    return x + 10\n"}
    assert CodeJsonlTasks.default_verifiers == ["python_tests"]


def test_code_jsonl_reads_mbpp_field_names(tmp_path):
    mbpp = {"task_id": 2, "text": "Write a function to find the shared elements of two lists.",
            "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
            "test_list": ["assert set(similar_elements((3, 4), (5, 4))) == set((4,))",
                          "assert similar_elements((1,), (2,)) == ()"],
            "test_setup_code": "", "challenge_test_list": []}
    path = write(tmp_path, [json.dumps(mbpp), ours(1)])
    tasks = load(path, eval_size=1)
    task = next(t for t in tasks.train + tasks.eval
                if t.metadata["entry_point"] == "similar_elements")
    assert task.metadata["tests"] == mbpp["test_list"]
    assert task.metadata["setup"] == "" and task.reference == mbpp["code"]
    assert task.prompt[-1]["content"].endswith("Write a Python function `similar_elements`.")
    run_tests(task.reference, task.metadata["setup"], task.metadata["tests"])


def test_entry_point_inference_skips_builtins_and_prefers_the_solution():
    assert infer_entry_point(["assert sorted(f(1)) == [1]"], None) == "f"
    assert infer_entry_point(["assert helper(g(1)) == 1"], "def g(x): ...") == "g"
    assert infer_entry_point(["assert 1 == 1"], None) is None


def test_code_jsonl_prompt_naming_the_call_is_not_repeated(tmp_path):
    row = json.dumps({"prompt": "Write `f(x)` returning x.", "tests": ["assert f(1) == 1"]})
    tasks = load(write(tmp_path, [row, ours(1)]), eval_size=1)
    task = next(t for t in tasks.train + tasks.eval if t.metadata["entry_point"] == "f")
    assert task.prompt[-1]["content"] == "Write `f(x)` returning x."
    assert task.reference is None and "solution" not in task.metadata
    assert load(write(tmp_path, [row, ours(1)]), eval_size=1,
                system_prompt=None).train[0].prompt[0]["role"] == "user"


def test_code_jsonl_splits_and_eval_path(tmp_path):
    path = write(tmp_path, [ours(i) for i in range(20)] + [ours(3)])  # a duplicate prompt
    full, capped = load(path, eval_size=5), load(path, eval_size=5, train_size=4)
    assert len(full.train) == 15 and len(capped.train) == 4
    assert eval_ids(full) == eval_ids(capped)
    eval_path = write(tmp_path, [ours(i) for i in range(15, 25)], name="held.jsonl")
    tasks = load(path, eval_path=eval_path, eval_size=4)
    train_names = {t.metadata["entry_point"] for t in tasks.train}
    assert len(tasks.eval) == 4 and train_names == {f"plus_{i}" for i in range(15)}
    assert "6 distinct problems" in error_of(write(tmp_path, [ours(i) for i in range(6)]))


@pytest.mark.parametrize("line, expected", [
    (b"{not json", "invalid JSON"),
    (json.dumps({"tests": ["assert f() == 1"]}).encode(), "missing field 'prompt' or 'text'"),
    (json.dumps({"prompt": "  ", "tests": ["assert f() == 1"]}).encode(), "'prompt' is empty"),
    (json.dumps({"prompt": "p"}).encode(), "missing field 'tests' or 'test_list'"),
    (json.dumps({"prompt": "p", "tests": []}).encode(), "'tests' is empty"),
    (json.dumps({"prompt": "p", "test_list": "assert f() == 1"}).encode(), "must be a list"),
    (json.dumps({"prompt": "p", "tests": ["assert f() == 1", 3]}).encode(),
     "test 2 in 'tests' must be a string"),
    (json.dumps({"prompt": "p", "tests": ["assert f( == 1"]}).encode(), "not valid Python"),
    (json.dumps({"prompt": "p", "tests": ["assert f() == 1"], "entry_point": "1x"}).encode(),
     "'entry_point' must be a Python name"),
    (json.dumps({"prompt": "p", "tests": ["assert f() == 1"], "code": 5}).encode(),
     "'code' must be a string"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe", "not valid UTF-8"),
])
def test_code_jsonl_bad_rows_name_file_and_line(tmp_path, line, expected):
    path = write(tmp_path, [ours(1), b"", line])
    message = error_of(path, eval_size=1)
    assert message.startswith(f"{path} line 3: ") and expected in message


def test_code_jsonl_bad_files(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    assert error_of(missing) == f"{missing}: no such file"
    assert "empty file" in error_of(write(tmp_path, [b"", b"  "]))
    assert "is a directory" in error_of(str(tmp_path))
    with pytest.raises(ValidationError):
        CodeJsonlOptions(path="x.jsonl", question_field="q")


# ----- code-easy -------------------------------------------------------------------------------


def easy_rows():
    return [json.loads(line) for line in EASY_PATH.read_text().splitlines() if line.strip()]


def test_code_easy_loads_and_splits():
    tasks = CodeEasyTasks().load(None, seed=0)
    total = len(easy_rows())
    assert len(tasks.eval) == 40 and len(tasks.train) == total - 40
    assert {t.source for t in tasks.train + tasks.eval} == {"code-easy"}
    again = CodeEasyTasks().load({"train_size": 5}, seed=0)
    assert eval_ids(again) == eval_ids(tasks) and len(again.train) == 5
    assert CodeEasyTasks.default_verifiers == ["python_tests"]


def test_code_easy_rows_are_sound():
    rows = easy_rows()
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["entry_point"] for r in rows}) == len(rows)
    for row in rows:
        assert f"`{row['entry_point']}(" in row["prompt"]
        assert len(row["tests"]) == 3
        for test in row["tests"]:
            # The verifier evaluates expected values outside the sandbox with literal_eval.
            compare = ast.parse(test).body[0].test
            assert isinstance(compare.ops[0], ast.Eq) and len(compare.ops) == 1
            assert compare.left.func.id == row["entry_point"]
            ast.literal_eval(compare.comparators[0])
        run_tests(row["solution"], "", row["tests"])


def test_task_file_matches_the_source_options():
    yaml = pytest.importorskip("yaml")
    path = REPO / "tasks" / "code.yaml"
    if not path.is_file():
        pytest.skip("not inside the loop checkout")
    data = yaml.safe_load(path.read_text())
    assert set(data) == {"source", "options", "verifiers", "rewards"}
    assert data["source"] == "code-easy" and data["verifiers"] == ["python_tests"]
    assert data["rewards"] == ["tests_passed"]
    assert len(CodeEasyTasks().load(data["options"], 0).eval) == 40
