"""The `reasoning_gym` verifier: reasoning-gym's own extraction and score_answer, on the exact
entry each task was made from, with loop's verdict semantics on top."""

from __future__ import annotations

import json

import pytest
import reasoning_gym
from pydantic import ValidationError
from reasoning_gym.utils import extract_answer

from loop import Attempt, Task
from loop_reasoning_gym import ReasoningGymTasks, ReasoningGymVerifier, gym


def tasks_of(dataset: str, seed: int = 0, **options) -> list[Task]:
    loaded = ReasoningGymTasks(dataset).load({"size": 10, "eval_size": 6, **options}, seed)
    return loaded.eval + loaded.train


def attempt(task: Task, completion: str) -> Attempt:
    return Attempt(id="a1", run_id="r", round_index=1, task_id=task.id, purpose="train",
                   sample_index=0, messages=[*task.prompt, {"role": "assistant",
                                                           "content": completion}],
                   completion=completion)


def from_store(task: Task) -> Task:
    """The task as another process reads it back from the store: metadata through JSON."""
    return Task.model_validate_json(task.model_dump_json())


def original_entry(task: Task) -> tuple:
    meta = task.metadata
    data = reasoning_gym.create_dataset(meta["dataset"], seed=meta["seed"], size=meta["size"],
                                        **meta["config"])
    return data, data[meta["index"]]


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "leg_counting", "spell_backward",
                                     "word_sorting", "arc_1d", "arc_agi"])
def test_the_entrys_own_answer_scores_1_and_a_wrong_one_0(dataset):
    verifier = ReasoningGymVerifier()
    for task in tasks_of(dataset)[:4]:
        right = verifier.verify(task, attempt(task, f"Thinking...\n<answer>{task.reference}"
                                                    "</answer>"))
        assert (right.passed, right.score, right.error_kind, right.mistake) == \
            (True, 1.0, None, None)
        assert right.details["score"] == 1.0 and right.details["dataset"] == dataset
        assert task.reference.strip().startswith(right.details["extracted"].removesuffix("..."))
        wrong = verifier.verify(task, attempt(task, "<answer>certainly not it</answer>"))
        assert (wrong.passed, wrong.score, wrong.error_kind, wrong.mistake) == \
            (False, 0.0, "model", "wrong_answer")
        assert wrong.feedback.startswith("expected ") and "got certainly not it" in wrong.feedback


def test_entries_are_rebuilt_exactly_in_a_fresh_process():
    # arc_agi's score_answer compares tuples of tuples with the entry's metadata; JSON turns them
    # into lists, so scoring the stored JSON entry would fail a right answer. The verifier
    # rebuilds the entry from the recipe instead.
    task = from_store(tasks_of("arc_agi")[0])
    data, item = original_entry(task)
    assert data.score_answer(task.reference, task.metadata["entry"]) < 1.0  # the trap
    gym.forget_entries()
    verdict = ReasoningGymVerifier().verify(task, attempt(task, f"<answer>{task.reference}"
                                                                "</answer>"))
    assert verdict.passed and verdict.score == 1.0


def test_scores_equal_score_answer_on_assorted_replies():
    replies = ["", "no tag at all", "<answer></answer>", "<answer>42</answer>",
               "<answer>1</answer> and later <answer>2</answer>", "<answer> 7 </answer>"]
    verifier = ReasoningGymVerifier()
    for dataset in ("chain_sum", "leg_counting", "countdown", "spell_backward"):
        for task in tasks_of(dataset)[:2]:
            data, item = original_entry(task)
            for reply in replies + [f"<answer>{task.reference} x</answer>"]:
                verdict = verifier.verify(from_store(task), attempt(task, reply))
                expected = data.score_answer(extract_answer(reply), item)
                assert verdict.score == pytest.approx(expected), (dataset, reply)
                assert verdict.passed == (expected >= 1.0)


def test_no_answer_tag_is_a_format_mistake_scored_by_the_dataset():
    task = tasks_of("countdown")[0]
    data, item = original_entry(task)
    verdict = ReasoningGymVerifier().verify(task, attempt(task, "I think it's 12."))
    assert (verdict.passed, verdict.error_kind, verdict.mistake) == (False, "model", "format")
    assert verdict.score == pytest.approx(data.score_answer(None, item))  # countdown: 0.01
    assert verdict.details["extracted"] is None
    assert verdict.feedback == "no <answer>...</answer> in the reply: put the final answer " \
                               "inside <answer></answer>"


def test_threshold_passes_partial_credit():
    task = tasks_of("leg_counting")[0]
    reply = f"<answer>{task.reference} legs</answer>"  # the base score_answer: len(ref)/len(ans)
    strict = ReasoningGymVerifier().verify(task, attempt(task, reply))
    lenient = ReasoningGymVerifier({"threshold": 0.2}).verify(task, attempt(task, reply))
    assert 0.2 < strict.score < 1.0 and not strict.passed and strict.mistake == "wrong_answer"
    assert lenient.passed and lenient.score == strict.score and lenient.error_kind is None
    with pytest.raises(ValidationError):
        ReasoningGymVerifier({"threshold": 0})
    with pytest.raises(ValidationError):
        ReasoningGymVerifier({"treshold": 0.5})


def test_another_tag():
    task = tasks_of("gcd")[0]
    verifier = ReasoningGymVerifier({"tag": "final"})
    assert verifier.verify(task, attempt(task, f"<final>{task.reference}</final>")).passed
    missed = verifier.verify(task, attempt(task, f"<answer>{task.reference}</answer>"))
    assert missed.mistake == "format" and "<final>" in missed.feedback


def test_score_answer_raising_is_infra_not_a_model_error():
    # prime_factorization's score_answer calls int() on every factor of the answer.
    task = tasks_of("prime_factorization")[0]
    verdict = ReasoningGymVerifier().verify(task, attempt(task, "<answer>two</answer>"))
    assert (verdict.passed, verdict.error_kind) == (False, "infra")
    assert verdict.feedback.startswith("prime_factorization.score_answer raised ValueError: ")
    assert verdict.details == {"extracted": "two"}


def test_a_score_outside_0_1_is_infra(monkeypatch):
    task = tasks_of("gcd")[0]
    data, _ = gym.entry(gym.Recipe.of("gcd", {}, task.metadata["seed"], task.metadata["size"]),
                        0)
    monkeypatch.setattr(type(data), "score_answer", lambda self, answer, entry: 1.5)
    verdict = ReasoningGymVerifier().verify(task, attempt(task, "<answer>1</answer>"))
    assert verdict.error_kind == "infra" and "returned 1.5, not a number in [0, 1]" in \
        verdict.feedback


def test_a_task_without_a_recipe_or_with_another_question_is_infra():
    verifier = ReasoningGymVerifier()
    plain = Task(source="arithmetic", split="train", prompt=[{"role": "user", "content": "1+1"}],
                 reference="2", metadata={"a": 1})
    verdict = verifier.verify(plain, attempt(plain, "<answer>2</answer>"))
    assert verdict.error_kind == "infra" and "no reasoning-gym recipe" in verdict.feedback

    task = tasks_of("gcd")[0]
    meta = json.loads(json.dumps(task.metadata))
    meta["entry"]["question"] = "What is 1+1?"  # e.g. a store written by another version
    changed = task.model_copy(update={"metadata": meta})
    verdict = verifier.verify(changed, attempt(changed, f"<answer>{task.reference}</answer>"))
    assert verdict.error_kind == "infra" and "different question" in verdict.feedback

    meta = json.loads(json.dumps(task.metadata))
    meta["dataset"] = "no_such"
    gone = task.model_copy(update={"metadata": meta})
    verdict = verifier.verify(gone, attempt(gone, "<answer>1</answer>"))
    assert verdict.error_kind == "infra" and "has no dataset 'no_such'" in verdict.feedback


def test_a_long_answer_is_clipped_in_feedback_and_details():
    task = tasks_of("gcd")[0]
    verdict = ReasoningGymVerifier().verify(task, attempt(task, f"<answer>{'9' * 5000}</answer>"))
    assert verdict.mistake == "wrong_answer"
    assert len(verdict.details["extracted"]) == 200 and len(verdict.feedback) < 500
