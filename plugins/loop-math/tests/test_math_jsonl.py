"""The jsonl task source: GSM8K parsing, splits, and one-line errors naming file and line."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from loop_math.jsonl import DEFAULT_SYSTEM_PROMPT, JsonlOptions, JsonlTasks, reference_of

SOURCE = JsonlTasks()
SAMPLE = Path(__file__).resolve().parents[3] / "tasks" / "gsm8k-sample.jsonl"


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode()
                                for line in lines) + b"\n")
    return str(path)


def row(question, answer):
    return json.dumps({"question": question, "answer": answer})


def rows(n, start=0):
    return [row(f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(start, n)]


def load(path, seed=0, **options):
    return SOURCE.load(JsonlOptions(path=path, **options), seed)


def error_of(path, **options):
    with pytest.raises(ValueError) as info:
        load(path, **options)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("answer, reference", [
    ("Step one.\n#### 72", "72"),
    ("So 1,000 + 200 = 1,200\n#### 1,200", "1200"),
    ("#### -5 ", "-5"),
    ("a #### 1 #### 2", "2"),
    ("42", "42"),
    ("  3/4 ", "3/4"),
])
def test_reference_is_the_text_after_the_last_marker(answer, reference):
    assert reference_of(answer) == reference


def test_sample_file_loads_into_disjoint_splits():
    ts = load(str(SAMPLE), eval_size=4)
    assert len(ts.eval) == 4 and len(ts.train) == 8
    questions = lambda tasks: {t.prompt[-1]["content"] for t in tasks}  # noqa: E731
    assert not questions(ts.train) & questions(ts.eval)
    by_question = {t.prompt[-1]["content"]: t for t in ts.train + ts.eval}
    pencils = by_question["A box holds 6 pencils. How many pencils are in 9 boxes?"]
    assert pencils.reference == "54" and pencils.source == "jsonl"
    assert pencils.prompt[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert pencils.metadata["line"] == 2 and pencils.metadata["solution"].endswith("#### 54")
    chalk = [t for t in ts.train + ts.eval if "chalk" in t.prompt[-1]["content"]]
    assert chalk[0].reference == "1200"  # "#### 1,200"


def test_sample_references_are_graded_correct_by_the_math_verifier():
    from loop_math.verifier import MathVerifier

    ts = load(str(SAMPLE), eval_size=2)
    verifier = MathVerifier()
    for task in ts.train + ts.eval:
        assert verifier.check(task.metadata["solution"].replace("####", "The answer is"),
                              task.reference).passed, task.reference


def test_split_is_seeded_and_eval_does_not_depend_on_train_size(tmp_path):
    path = write(tmp_path, rows(30))
    a, b = load(path, seed=1, eval_size=5), load(path, seed=1, eval_size=5, train_size=3)
    assert [t.id for t in a.eval] == [t.id for t in b.eval]
    assert len(b.train) == 3 and [t.id for t in b.train] == [t.id for t in a.train[:3]]
    assert [t.id for t in load(path, seed=2, eval_size=5).eval] != [t.id for t in a.eval]
    assert len(a.train) == 25


def test_repeated_questions_are_kept_once_so_splits_stay_disjoint(tmp_path):
    path = write(tmp_path, rows(6) + rows(6))
    for seed in range(10):
        ts = load(path, seed=seed, eval_size=3)
        assert len(ts.train) + len(ts.eval) == 6
        assert not {t.id for t in ts.train} & {t.id for t in ts.eval}


def test_eval_path_is_held_out_and_removed_from_train(tmp_path):
    path = write(tmp_path, rows(10), "train.jsonl")
    eval_path = write(tmp_path, rows(12, start=8), "test.jsonl")  # overlaps rows 8 and 9
    ts = load(path, eval_path=eval_path, eval_size=3)
    assert len(ts.eval) == 3 and len(ts.train) == 8
    train_questions = {t.prompt[-1]["content"] for t in ts.train}
    assert "What is 8 + 1?" not in train_questions and "What is 9 + 1?" not in train_questions


def test_custom_fields_numeric_answer_and_no_system_prompt(tmp_path):
    path = write(tmp_path, [json.dumps({"q": f"Q{i}?", "a": i}) for i in range(4)])
    ts = load(path, eval_size=1, question_field="q", answer_field="a", system_prompt=None)
    task = (ts.train + ts.eval)[0]
    assert task.prompt == [{"role": "user", "content": task.prompt[0]["content"]}]
    assert task.reference == task.prompt[0]["content"][1:-1]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = write(tmp_path, [rows(1)[0], "", "   ", "{not json"])
    assert error_of(path).endswith("line 4: invalid JSON (Expecting property name enclosed "
                                   "in double quotes)")


@pytest.mark.parametrize("lines, expected", [
    ([row("q", "#### 1"), "{\"question\": \"q2\", \"answer\": "], "line 2: invalid JSON"),
    ([row("q", "#### 1"), json.dumps({"question": "q2"})], "line 2: missing field 'answer'"),
    ([json.dumps({"answer": "#### 1"})], "line 1: missing field 'question'"),
    ([json.dumps([1, 2])], "line 1: expected a JSON object, got list"),
    ([json.dumps({"question": ["x"], "answer": "1"})], "line 1: field 'question' must be a string"),
    ([json.dumps({"question": "q", "answer": True})], "line 1: field 'answer' must be a string"),
    ([json.dumps({"question": " ", "answer": "1"})], "line 1: field 'question' is empty"),
    ([json.dumps({"question": "q", "answer": "text ####  "})], "line 1: empty answer"),
    ([b"\xff\xfe{}"], "line 1: not valid UTF-8"),
    (["[" * 100_000], "line 1: invalid JSON"),
    ([json.dumps({"question": "q" * 200_000, "answer": "1"})],
     "line 1: field 'question' is longer"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, lines, expected):
    path = write(tmp_path, lines)
    message = error_of(path)
    assert message.startswith(path) and expected in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert error_of(str(path)) == f"{path}: empty file (no JSON rows)"


def test_missing_file_and_directory(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    assert error_of(missing) == f"{missing}: no such file"
    assert "is a directory" in error_of(str(tmp_path))
    path = write(tmp_path, rows(5))
    assert error_of(path, eval_path=missing) == f"{missing}: no such file"


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, [b"\xef\xbb\xbf" + rows(1)[0].encode()] + rows(3, start=1))
    assert len(load(path, eval_size=1).train) == 2


def test_too_few_rows_for_eval_size(tmp_path):
    path = write(tmp_path, rows(3))
    message = error_of(path, eval_size=3)
    assert "3 distinct problems" in message and "eval_size=3" in message


def test_every_eval_row_also_in_train_file_is_an_error(tmp_path):
    path = write(tmp_path, rows(3))
    assert "every problem is also in" in error_of(path, eval_path=path)


@pytest.mark.parametrize("options", [
    {}, {"path": ""}, {"path": "x", "eval_size": 0}, {"path": "x", "train_size": 0},
    {"path": "x", "bogus": 1}, {"path": "x", "question_field": "a", "answer_field": "a"},
])
def test_bad_options_are_rejected(options):
    with pytest.raises(ValidationError):
        JsonlOptions(**options)


def test_every_option_is_described_and_defaults():
    assert all(f.description for f in JsonlOptions.model_fields.values())
    assert JsonlTasks.name == "jsonl" and JsonlTasks.default_verifiers == ["math"]
    opts = JsonlOptions(path="x")
    assert (opts.eval_size, opts.question_field, opts.answer_field) == (200, "question", "answer")
