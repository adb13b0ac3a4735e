"""`rg:<dataset>` task sources: seeded, disjoint splits; the dataset's config passed through;
bad config is one line; metadata that survives the store."""

from __future__ import annotations

import json

import pytest
import reasoning_gym
from pydantic import ValidationError
from reasoning_gym.utils import SYSTEM_PROMPTS
from typer.testing import CliRunner

from loop import Task
from loop_reasoning_gym import ReasoningGymTasks, gym
from loop_reasoning_gym.names import DATASET_NAMES
from loop_reasoning_gym.tasks import split_seeds

SMALL = {"size": 30, "eval_size": 12}


def load(dataset: str, seed: int = 0, **options):
    return ReasoningGymTasks(dataset).load({**SMALL, **options}, seed)


def questions(tasks: list[Task]) -> list[str]:
    return [t.prompt[-1]["content"] for t in tasks]


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "leg_counting", "spell_backward"])
def test_same_seed_same_tasks_other_seed_other_tasks(dataset):
    first, again, other = load(dataset, 0), load(dataset, 0), load(dataset, 1)
    assert [t.id for t in first.train] == [t.id for t in again.train]
    assert [t.id for t in first.eval] == [t.id for t in again.eval]
    assert set(questions(first.eval)).isdisjoint(questions(other.eval))
    assert first.train[0].source == f"rg:{dataset}" and first.train[0].split == "train"


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "leg_counting", "spell_backward", "lcm"])
def test_splits_never_share_a_question(dataset):
    tasks = load(dataset, 3, size=200, eval_size=50)
    train, held_out = questions(tasks.train), questions(tasks.eval)
    assert set(train).isdisjoint(held_out)
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert {t.id for t in tasks.train}.isdisjoint(t.id for t in tasks.eval)


def test_a_small_space_drops_repeats_and_held_out_questions_from_train():
    # One animal, one of it: a few dozen distinct questions, so repeats and overlaps are certain.
    config = {"min_animals": 1, "max_animals": 1, "min_instances": 1, "max_instances": 1}
    tasks = load("leg_counting", 0, size=200, eval_size=20, config=config)
    train, held_out = questions(tasks.train), questions(tasks.eval)
    assert len(train) < 200 and len(held_out) < 20  # repeats were dropped
    assert set(train).isdisjoint(held_out) and len(set(train)) == len(train)
    # What was generated, for comparison: the split seeds' raw datasets overlap.
    eval_seed, train_seed = split_seeds(0, "leg_counting", 20)
    raw_eval = {e["question"] for e in reasoning_gym.create_dataset(
        "leg_counting", seed=eval_seed, size=20, **config)}
    raw_train = {e["question"] for e in reasoning_gym.create_dataset(
        "leg_counting", seed=train_seed, size=200, **config)}
    assert raw_eval & raw_train and set(train) == raw_train - raw_eval


def test_eval_does_not_depend_on_size_and_grows_by_appending():
    small, large = load("basic_arithmetic", 0, size=10), load("basic_arithmetic", 0, size=80)
    assert [t.id for t in small.eval] == [t.id for t in large.eval]
    more = load("basic_arithmetic", 0, eval_size=20)
    assert [t.id for t in more.eval][:12] == [t.id for t in small.eval]


def test_tasks_are_the_datasets_own_items():
    tasks = load("spell_backward", 5)
    task = tasks.eval[4]
    meta = task.metadata
    item = reasoning_gym.create_dataset("spell_backward", seed=meta["seed"], size=meta["size"],
                                        **meta["config"])[meta["index"]]
    assert task.prompt[-1] == {"role": "user", "content": item["question"]}
    assert task.reference == item["answer"]
    assert meta["entry"] == json.loads(json.dumps(gym.json_safe(item)))
    assert meta["dataset"] == "spell_backward" and meta["name"] == f"eval-{meta['index']}"
    assert (meta["seed"], meta["size"]) == (split_seeds(5, "spell_backward", 12)[0], 12)


def test_config_passes_through_to_the_dataset():
    default = load("leg_counting", 0)
    one_animal = load("leg_counting", 0, config={"min_animals": 1, "max_animals": 1})
    kinds = [len(t.metadata["entry"]["metadata"]["animals"]) for t in one_animal.train]
    assert set(kinds) == {1}
    assert max(len(t.metadata["entry"]["metadata"]["animals"]) for t in default.train) > 1
    assert one_animal.train[0].metadata["config"] == {"min_animals": 1, "max_animals": 1}
    terms = load("basic_arithmetic", 0, config={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                "max_digits": 1})
    assert all(t.metadata["entry"]["metadata"]["num_terms"] == 2 for t in terms.train)
    assert questions(terms.train) != questions(load("basic_arithmetic", 0).train)


def test_unknown_config_key_is_one_line_listing_the_valid_keys():
    with pytest.raises(ValueError) as info:
        load("leg_counting", config={"max_animal": 3})
    message = str(info.value)
    assert "\n" not in message
    assert message == ("unknown config key 'max_animal' for reasoning-gym dataset "
                       "'leg_counting'; valid keys: min_animals, max_animals, min_instances, "
                       "max_instances")


@pytest.mark.parametrize("config, expected", [
    ({"seed": 3}, "config.seed is set by loop (the run's seed); remove it from config"),
    ({"size": 3}, "config.size is set by loop (options.size / options.eval_size); remove it "
                  "from config"),
    ({"min_animals": -2}, "reasoning-gym rejected the config of 'leg_counting': AssertionError: "
                          "min_animals must be positive"),
    ({"min_animals": float("inf")}, "config values must be plain JSON"),
])
def test_bad_config_values_are_one_line(config, expected):
    with pytest.raises(ValueError) as info:
        load("leg_counting", config=config)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_options_are_validated():
    source = ReasoningGymTasks("leg_counting")
    with pytest.raises(ValidationError):
        source.load({"sizes": 3}, 0)
    with pytest.raises(ValidationError):
        source.load({"size": 0}, 0)
    assert source.Options().model_dump() == {"size": 500, "eval_size": 100, "config": {},
                                             "system_prompt": "default"}


def test_system_prompt_is_reasoning_gyms_unless_set():
    default = load("gcd").train[0].prompt
    assert default[0] == {"role": "system", "content": SYSTEM_PROMPTS["default"]}
    assert "<answer>" in default[0]["content"]
    assert load("gcd", system_prompt="direct").train[0].prompt[0]["content"] == \
        SYSTEM_PROMPTS["direct"]
    assert load("gcd", system_prompt="Be brief.").train[0].prompt[0]["content"] == "Be brief."
    bare = load("gcd", system_prompt=None).train[0].prompt
    assert [m["role"] for m in bare] == ["user"]


def test_composite_takes_dataset_specs_as_mappings():
    config = {"datasets": [{"name": "spell_backward", "weight": 1},
                           {"name": "gcd", "weight": 1, "config": {"min_numbers": 2}}]}
    tasks = load("composite", 0, config=config)
    sources = {t.metadata["entry"]["metadata"]["source_dataset"] for t in tasks.train}
    assert sources == {"spell_backward", "gcd"}
    with pytest.raises(ValueError, match="Must specify at least one dataset"):
        load("composite")


def test_unknown_dataset_in_the_installed_version_is_one_line():
    with pytest.raises(ValueError, match=r"^reasoning-gym \S+ has no dataset 'no_such'$"):
        ReasoningGymTasks("no_such").load(SMALL, 0)


def test_bad_config_through_the_cli_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "hf,math,trl,reasoning_gym")
    from loop.cli import app

    db = tmp_path / "store" / "loop.db"
    result = CliRunner().invoke(app, ["run", "rg:leg_counting", "--db", str(db),
                                      "--set", "task.options.config.legs=4"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: task error: rg:leg_counting: unknown config key 'legs' for "
                     "reasoning-gym dataset 'leg_counting'; valid keys: min_animals, "
                     "max_animals, min_instances, max_instances"]
    assert not db.exists()


@pytest.mark.slow
@pytest.mark.parametrize("dataset", [n for n in DATASET_NAMES if n != "composite"])
def test_every_dataset_loads_and_its_stored_tasks_score_as_reasoning_gym_does(dataset, store):
    from reasoning_gym.utils import extract_answer

    from loop.schema import Attempt
    from loop_reasoning_gym import ReasoningGymVerifier

    tasks = ReasoningGymTasks(dataset).load({"size": 2, "eval_size": 1}, 0)
    assert tasks.train and tasks.eval
    store.upsert_tasks(tasks.train + tasks.eval)  # json.dumps of every metadata, as stored
    stored = store.get_tasks(t.id for t in tasks.train + tasks.eval)
    gym.forget_entries()  # the verifier must rebuild each entry from the stored recipe alone
    for task in tasks.train + tasks.eval:
        assert stored[task.id].metadata == task.metadata
        meta = task.metadata
        data = reasoning_gym.create_dataset(dataset, seed=meta["seed"], size=meta["size"])
        item = data[meta["index"]]
        reply = f"<answer>{task.reference}</answer>"
        attempt = Attempt(id="a", run_id="r", round_index=0, task_id=task.id, purpose="eval",
                          sample_index=0, messages=[], completion=reply)
        verdict = ReasoningGymVerifier().verify(stored[task.id], attempt)
        assert verdict.error_kind != "infra", verdict.feedback
        assert verdict.score == pytest.approx(data.score_answer(extract_answer(reply), item))
