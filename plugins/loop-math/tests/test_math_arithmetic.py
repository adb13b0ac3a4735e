"""The arithmetic task source: determinism, disjoint splits, stable eval, option validation."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from loop_math.arithmetic import ArithmeticOptions, ArithmeticTasks

SOURCE = ArithmeticTasks()


def triples(tasks):
    return [(t.metadata["a"], t.metadata["op"], t.metadata["b"]) for t in tasks]


def load(seed=0, **options):
    return SOURCE.load(ArithmeticOptions(**options), seed)


def test_defaults_give_two_digit_addition_with_exact_references():
    ts = load(seed=1)
    assert len(ts.train) == 2000 and len(ts.eval) == 200
    for task in ts.train + ts.eval:
        a, op, b = task.metadata["a"], task.metadata["op"], task.metadata["b"]
        assert 10 <= a <= 99 and 10 <= b <= 99 and op == "+"
        assert task.reference == str(a + b)
        assert task.metadata["solution"] == f"{a} + {b} = {a + b}"
        assert task.source == "arithmetic"
        assert task.prompt == [
            {"role": "system", "content": "Answer with only the number."},
            {"role": "user", "content": f"What is {a}+{b}?"},
        ]
    assert {t.split for t in ts.train} == {"train"} and {t.split for t in ts.eval} == {"eval"}


def test_splits_are_disjoint_and_distinct():
    ts = load(seed=3, operations=["+", "-", "*"], train_size=5000, eval_size=500)
    train, held = triples(ts.train), triples(ts.eval)
    assert len(set(train)) == len(train) and len(set(held)) == len(held)
    assert not set(train) & set(held)
    assert not {t.id for t in ts.train} & {t.id for t in ts.eval}


def test_same_seed_same_tasks_other_seed_other_tasks():
    first, again, other = load(seed=7), load(seed=7), load(seed=8)
    assert [t.id for t in first.train] == [t.id for t in again.train]
    assert [t.id for t in first.eval] == [t.id for t in again.eval]
    assert triples(first.eval) != triples(other.eval)


@pytest.mark.parametrize("digits", [1, 2, 4])  # 4 digits takes the rejection-sampling path
def test_eval_split_does_not_depend_on_train_size(digits):
    small = load(seed=5, digits=digits, train_size=10, eval_size=30)
    large = load(seed=5, digits=digits, train_size=40, eval_size=30)
    assert [t.id for t in small.eval] == [t.id for t in large.eval]
    assert not set(triples(large.train)) & set(triples(large.eval))


def test_operand_ranges_follow_digits():
    for digits, lo, hi in [(1, 1, 9), (3, 100, 999)]:
        ts = load(digits=digits, train_size=60, eval_size=20)
        values = [v for a, _, b in triples(ts.train + ts.eval) for v in (a, b)]
        assert all(lo <= v <= hi for v in values)


def test_subtraction_and_multiplication_references():
    ts = load(seed=2, operations=["-", "*"], train_size=200, eval_size=20)
    for task in ts.train:
        a, op, b = task.metadata["a"], task.metadata["op"], task.metadata["b"]
        assert task.reference == str(a - b if op == "-" else a * b)
        assert task.metadata["solution"] == f"{a} {op} {b} = {task.reference}"
    assert {t.metadata["op"] for t in ts.train} == {"-", "*"}


def test_whole_space_can_be_used_and_one_more_is_an_error():
    ts = load(digits=1, train_size=71, eval_size=10)  # 9 x 9 = 81 problems
    assert len(set(triples(ts.train + ts.eval))) == 81
    with pytest.raises(ValueError) as info:
        load(digits=1, train_size=72, eval_size=10)
    message = str(info.value)
    assert "\n" not in message and "81" in message and "82" in message


def test_custom_prompt_and_no_system_prompt():
    ts = load(prompt="Compute {a} {op} {b}.", system_prompt=None, train_size=5, eval_size=5)
    task = ts.train[0]
    a, b = task.metadata["a"], task.metadata["b"]
    assert task.prompt == [{"role": "user", "content": f"Compute {a} + {b}."}]


def test_options_may_come_as_a_dict():
    ts = SOURCE.load({"digits": 1, "train_size": 5, "eval_size": 5}, 0)
    assert len(ts.train) == 5 and ts.train[0].metadata["a"] < 10


@pytest.mark.parametrize("options, field", [
    ({"digits": 0}, "digits"),
    ({"digits": 7}, "digits"),
    ({"operations": ["/"]}, "operations"),
    ({"operations": []}, "operations"),
    ({"operations": ["+", "+"]}, "operations"),
    ({"train_size": 0}, "train_size"),
    ({"eval_size": -1}, "eval_size"),
    ({"prompt": "What is {a}?"}, "prompt"),
    ({"prompt": "What is {a}{op}{c}?"}, "prompt"),
    ({"prompt": "What is {a.real}{b}?"}, "prompt"),
    ({"prompt": "What is {a{op}{b}?"}, "prompt"),
    ({"digitz": 2}, "digitz"),
])
def test_bad_options_are_rejected_naming_the_field(options, field):
    with pytest.raises(ValidationError) as info:
        ArithmeticOptions(**options)
    assert field in str(info.value)


def test_op_is_required_in_prompt_only_with_several_operations():
    ArithmeticOptions(prompt="What is {a} plus {b}?")  # one operation: fine
    with pytest.raises(ValidationError, match=r"\{op\}"):
        ArithmeticOptions(prompt="What is {a} and {b}?", operations=["+", "*"])


def test_every_option_is_described():
    assert all(f.description for f in ArithmeticOptions.model_fields.values())


def test_default_verifiers_and_name():
    assert ArithmeticTasks.name == "arithmetic"
    assert ArithmeticTasks.default_verifiers == ["math"]
    assert ArithmeticTasks.Options is ArithmeticOptions


def test_task_file_matches_the_source_options():
    yaml = pytest.importorskip("yaml")
    path = Path(__file__).resolve().parents[3] / "tasks" / "arithmetic.yaml"
    if not path.is_file():
        pytest.skip("not inside the loop checkout")
    data = yaml.safe_load(path.read_text())
    assert set(data) == {"source", "options", "verifiers", "rewards", "run"}
    assert data["source"] == "arithmetic" and data["verifiers"] == ["math"]
    assert data["rewards"] == ["binary"]
    ts = SOURCE.load(ArithmeticOptions(**data["options"]), 0)
    assert (len(ts.train), len(ts.eval)) == (2000, 200)
