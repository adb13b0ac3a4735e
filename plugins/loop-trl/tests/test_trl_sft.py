"""The sft updater on the tiny model: dataset rules, a real TRL+LoRA step that changes weights,
continuing an earlier adapter, full fine-tuning, and refusing an empty dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.config import LoopConfig
from loop import SOLUTION_KEY, Attempt, Sample, Task
from loop.updates import EmptyDataset, UpdateContext
from loop_trl.sft import SFTOptions, SFTUpdater


def _samples(answers: list[tuple[int, int, str, bool]]) -> list[Sample]:
    out = []
    for i, (a, b, answer, passed) in enumerate(answers):
        task = Task(source="arithmetic", split="train",
                    prompt=[{"role": "user", "content": f"{a}+{b}="}], reference=str(a + b))
        attempt = Attempt(id=f"a{i}", run_id="r", round_index=1, task_id=task.id,
                          purpose="train", sample_index=i, messages=[], completion=answer)
        out.append(Sample(task=task, attempt=attempt, passed=passed, score=float(passed),
                          reward=float(passed)))
    return out


def _context(tmp_path, model, samples, adapter_in=None, **train) -> UpdateContext:
    config = LoopConfig.model_validate({
        "model": str(model), "train": {"learning_rate": 1e-2, "epochs": 1, "batch_size": 4,
                                       "max_length": 32, **train}})
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    calls = []
    return UpdateContext(run_id="r", round_index=1, samples=samples, base_model=str(model),
                         adapter_in=adapter_in, output_dir=out, config=config,
                         options=SFTOptions(), seed=0,
                         progress=lambda **kw: calls.append(kw))


GOOD = [(12, 35, "47", True), (12, 35, "47", True), (12, 35, " 47 ", True), (40, 41, "81", True),
        (10, 11, "22", False), (57, 23, "80", True)]


def test_dataset_keeps_passing_answers_once_per_prompt(tmp_path, tiny_model_dir):
    rows = SFTUpdater().build_dataset(_context(tmp_path, tiny_model_dir, _samples(GOOD)))
    assert [(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in rows] == [
        ("12+35=", "47"), ("40+41=", "81"), ("57+23=", "80")]
    assert rows[0]["completion"][0]["role"] == "assistant"


def test_empty_dataset_is_refused(tmp_path, tiny_model_dir):
    ctx = _context(tmp_path, tiny_model_dir, _samples([(1, 2, "4", False)]))
    with pytest.raises(EmptyDataset, match="nothing to train on"):
        SFTUpdater().update(ctx)


@pytest.mark.slow  # trains the tiny model
def test_lora_update_changes_weights_and_continues(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    ctx = _context(tmp_path, tiny_model_dir, _samples(GOOD))
    result = SFTUpdater().update(ctx)
    adapter = Path(result.adapter_path)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert result.metrics["dataset_size"] == 3 and result.metrics["steps"] >= 1
    assert result.metrics["grad_norm_mean"] > 0
    assert result.metrics["train_tokens"] > 0

    # The next round continues this adapter (same keys, new values), it does not start over.
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    ctx2 = _context(tmp_path, tiny_model_dir, _samples(GOOD), adapter_in=str(adapter))
    ctx2.output_dir = second_dir
    SFTUpdater().update(ctx2)
    again = load_file(str(second_dir / "adapter_model.safetensors"))
    assert set(again) == set(weights)
    assert any((again[k] - weights[k]).abs().sum() > 0 for k in weights)


@pytest.mark.slow  # trains the tiny model
def test_full_finetuning_writes_a_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ctx = _context(tmp_path, tiny_model_dir, _samples(GOOD), lora={"enabled": False})
    result = SFTUpdater().update(ctx)
    tuned = AutoModelForCausalLM.from_pretrained(result.adapter_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # a whole model folder: its tokenizer is written with it, so anything loads it as it is
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(result.adapter_path).get_vocab() == \
        AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()
    diffs = [(p - q).abs().sum().item() for p, q in zip(tuned.parameters(), base.parameters())]
    assert any(d > 0 for d in diffs)


def test_report_to_reaches_the_trainer_config(tmp_path, tiny_model_dir):
    """`train.report_to` (W&B, TensorBoard, ...) is passed to TRL's config; empty means none."""
    from trl import SFTConfig, SFTTrainer

    from loop_trl.training import train_with_trl

    seen = []

    class Stop(Exception):
        pass

    class Capture(SFTConfig):
        def __post_init__(self):
            super().__post_init__()
            seen.append(self.report_to)
            raise Stop

    rows = SFTUpdater().build_dataset(_context(tmp_path, tiny_model_dir, _samples(
        [(1, 2, "3", True)])))
    for report_to, expected in (([], []), (["tensorboard"], ["tensorboard"])):
        context = _context(tmp_path, tiny_model_dir, _samples([(1, 2, "3", True)]),
                           report_to=report_to)
        with pytest.raises(Stop):
            train_with_trl(context, rows, trainer_cls=SFTTrainer, config_cls=Capture)
    assert seen == [[], ["tensorboard"]]


@pytest.mark.slow  # trains the tiny model
def test_padding_free_batches_train_the_same_loss_as_padded_ones(tmp_path, tiny_model_dir):
    """`options: {padding_free: true}` flattens a batch into one sequence; the examples must stay
    apart (position ids): the losses of every step equal those of padded batches. If attention
    leaked across examples, or labels slid, the losses would differ."""
    varied = [(12, 35, "47", True), (40, 41, "the sum is 81", True),
              (57, 23, "57 plus 23 makes 80", True), (30, 31, "61", True),
              (11, 11, "eleven and eleven: 22", True), (20, 25, "45", True),
              (33, 44, "77 is the answer", True), (10, 15, "25", True)]
    losses = {}
    for padding_free in (False, True):
        out = tmp_path / f"pf-{padding_free}"
        out.mkdir()
        ctx = _context(out, tiny_model_dir, _samples(varied), epochs=2, max_length=256)
        ctx.options = SFTOptions(padding_free=padding_free)
        result = SFTUpdater().update(ctx)
        assert result.metrics["steps"] == 4
        losses[padding_free] = (result.metrics["loss_first"], result.metrics["loss_last"],
                                result.metrics["train_loss"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[False][0] != pytest.approx(losses[False][1], rel=1e-3)  # it did learn



def test_shortest_first_keeps_each_prompts_shortest_passing_answers(tmp_path, tiny_model_dir):
    """`shortest_first` with `max_per_prompt` keeps the shortest verified answers of a prompt
    (a final-answer verifier also passes rambles that end right); without it the sampled order
    decides, and failed answers are never kept either way."""
    samples = _samples([(12, 35, "To add them, take 12, then 35, which gives 47", True),
                        (12, 35, "47", True), (12, 35, "4", False),
                        (30, 31, "30 + 31 = 61", True), (30, 31, "61", True)])
    for sample in samples:  # the hf backend's ids: one per character here
        sample.attempt.token_ids = list(range(len(sample.attempt.completion)))

    def kept(**options) -> list[str]:
        ctx = _context(tmp_path, tiny_model_dir, samples)
        ctx.options = SFTOptions(max_per_prompt=1, **options)
        return [row["completion"][0]["content"] for row in SFTUpdater().build_dataset(ctx)]

    assert kept(shortest_first=True) == ["47", "61"]
    assert kept() == ["To add them, take 12, then 35, which gives 47", "30 + 31 = 61"]


def test_references_add_the_solution_of_each_prompt_no_sample_solved(tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    """`references: unsolved` trains on the worked solution of a prompt whose samples all failed
    (and only there), so a round nothing passed still has data; `never`, the default, does not.
    The update's metrics count the reference rows."""
    import loop_trl.sft as sft

    samples = _samples([(12, 35, "47", True), (12, 35, "46", False),
                        (30, 31, "60", False), (30, 31, "62", False)])
    solutions = {"12+35=": "12 + 35 = 47", "30+31=": "30 + 31 = 61"}
    for sample in samples:
        sample.task.metadata[SOLUTION_KEY] = solutions[sample.task.prompt[0]["content"]]

    def kept(rows_of, **options) -> list[str]:
        ctx = _context(tmp_path, tiny_model_dir, rows_of)
        ctx.options = SFTOptions(**options)
        return [row["completion"][0]["content"] for row in SFTUpdater().build_dataset(ctx)]

    assert kept(samples) == ["47"]
    assert kept(samples, references="unsolved") == ["47", "30 + 31 = 61"]
    assert kept(samples[2:], references="unsolved") == ["30 + 31 = 61"]
    monkeypatch.setattr(sft, "train_with_trl", lambda context, rows, **kwargs: {"steps": 1})
    ctx = _context(tmp_path, tiny_model_dir, samples)
    ctx.options = SFTOptions(references="unsolved")
    assert SFTUpdater().update(ctx).metrics["reference_rows"] == 1
    ctx.options = SFTOptions()
    assert "reference_rows" not in SFTUpdater().update(ctx).metrics


def test_padding_free_is_the_default_exactly_when_every_example_fits(tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    """Unset, `padding_free` is on when the round's longest example fits train.max_length (then
    the loss is the same as padded: nothing would be cut) and off otherwise; an explicit value
    wins. Lengths are counted as SFTTrainer tokenizes the rows."""
    import loop_trl.sft as sft
    from loop_trl.sft import row_lengths
    from loop_trl.training import load_tokenizer

    seen = []

    def capture(context, rows, *, config_kwargs, **kwargs):
        seen.append(config_kwargs)
        return {"steps": 1}

    monkeypatch.setattr(sft, "train_with_trl", capture)
    samples = _samples(GOOD)
    lengths = row_lengths(SFTUpdater().build_dataset(_context(tmp_path, tiny_model_dir, samples)),
                          load_tokenizer(_context(tmp_path, tiny_model_dir, samples)))
    longest = max(lengths)
    for max_length, option, on in [(longest, None, True), (longest - 1, None, False),
                                   (longest - 1, True, True), (longest, False, False)]:
        ctx = _context(tmp_path, tiny_model_dir, samples, max_length=max_length)
        ctx.options = SFTOptions(padding_free=option)
        metrics = SFTUpdater().update(ctx).metrics
        assert metrics["padding_free"] is on and seen[-1].get("padding_free", False) is on
        assert ("max_length" in seen[-1]) is on  # padding-free: TRL must not cut (it would not)


@pytest.mark.slow  # builds SFTTrainer's dataset on the tiny model
def test_row_lengths_are_the_lengths_sfttrainer_tokenizes(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from loop_trl.sft import row_lengths
    from loop_trl.training import load_policy

    ctx = _context(tmp_path, tiny_model_dir, _samples(GOOD))
    rows = SFTUpdater().build_dataset(ctx)
    model, tokenizer, _ = load_policy(ctx)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(
        rows), args=SFTConfig(output_dir=str(tmp_path / "t"), max_length=None, report_to=[],
                              completion_only_loss=True, use_cpu=True))
    assert row_lengths(rows, tokenizer) == [len(ids) for ids in trainer.train_dataset["input_ids"]]


def test_sft_trains_at_its_own_rate_unless_the_run_or_its_option_sets_one(tmp_path,
                                                                          tiny_model_dir,
                                                                          monkeypatch):
    """train.learning_rate unset: sft's own 5e-4; a run's rate wins over it, the option over
    both (loop_trl.training.learning_rate, given sft's default)."""
    import loop_trl.sft as sft
    from loop_trl.training import learning_rate

    rates = []

    def capture(context, rows, *, default_learning_rate, **kwargs):
        rates.append(learning_rate(context, default_learning_rate))
        return {"steps": 1}

    monkeypatch.setattr(sft, "train_with_trl", capture)
    for run_rate, option in [(None, None), (1e-3, None), (1e-3, 3e-5)]:
        ctx = _context(tmp_path, tiny_model_dir, _samples(GOOD), learning_rate=run_rate)
        ctx.options = SFTOptions(learning_rate=option)
        SFTUpdater().update(ctx)
    assert rates == [5e-4, 1e-3, 3e-5]
