"""Every update method trains the tiny model for real: TRL's trainer runs, the adapter's weights
change, the loss falls over a few passes on one fixed batch, the metrics name the dataset, and
an empty dataset is refused with a message that says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.config import LoopConfig
from loop import Attempt, Sample, Task
from loop.updates import EmptyDataset, UpdateContext
from loop_trl.grpo import GRPOOptions, GRPOUpdater
from loop_trl.negative import NFTOptions, NFTUpdater, REDIOptions, REDIUpdater
from loop_trl.preference import DPOOptions, DPOUpdater, KTOOptions, KTOUpdater
from loop_trl.sft import SFTOptions

# Two prompts, four first-try answers each, half of them right: every method has data.
ROUND = {(12, 35): ["47", "46", "47", "57"], (40, 41): ["81", "18", "80", "81"]}


def _samples(answers=ROUND) -> list[Sample]:
    out = []
    for (a, b), texts in answers.items():
        task = Task(source="arithmetic", split="train",
                    prompt=[{"role": "user", "content": f"{a}+{b}="}], reference=str(a + b))
        for i, text in enumerate(texts):
            passed = text == str(a + b)
            attempt = Attempt(id=f"{a}-{b}-{i}", run_id="r", round_index=1, task_id=task.id,
                              purpose="train", sample_index=i, messages=[], completion=text)
            out.append(Sample(task=task, attempt=attempt, passed=passed, score=float(passed),
                              reward=float(passed), rewards={"binary": float(passed)}))
    return out


def _context(tmp_path, model, updater, options, samples=None, **train) -> UpdateContext:
    config = LoopConfig.model_validate({
        "model": str(model), "generate": {"n": 4},
        "train": {"learning_rate": 5e-3, "epochs": 1, "batch_size": 8, "max_length": 32, **train}})
    out = tmp_path / updater.name
    out.mkdir(parents=True, exist_ok=True)
    return UpdateContext(run_id="r", round_index=1, samples=_samples() if samples is None else samples,
                         base_model=str(model), adapter_in=None, output_dir=out, config=config,
                         options=options, seed=0, progress=lambda **kw: None,
                         reward_names=["binary"])


METHODS = [
    (DPOUpdater(), DPOOptions(), "pairs", 4),
    (KTOUpdater(), KTOOptions(), "desirable", 2),
    (GRPOUpdater(), GRPOOptions(), "groups", 2),
    (NFTUpdater(), NFTOptions(), "groups", 2),
    (REDIUpdater(), REDIOptions(), "groups", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("updater,options,count_key,count", METHODS,
                         ids=[m[0].name for m in METHODS])
def test_update_changes_weights_and_loss_falls_on_a_fixed_batch(
        tmp_path, tiny_model_dir, updater, options, count_key, count):
    from safetensors.torch import load_file

    # epochs=6 over one batch (DPO/KTO: 6 passes; group methods: 6 PPO iterations on it)
    ctx = _context(tmp_path, tiny_model_dir, updater, options, epochs=6)
    result = updater.update(ctx)
    metrics = result.metrics
    assert metrics[count_key] == count
    assert metrics["dataset_size"] > 0 and metrics["steps"] >= 6
    assert metrics["grad_norm_mean"] > 0
    assert metrics["loss_last"] < metrics["loss_first"], metrics
    weights = load_file(f"{result.adapter_path}/adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


@pytest.mark.parametrize("updater,options", [(m[0], m[1]) for m in METHODS],
                         ids=[m[0].name for m in METHODS])
def test_empty_dataset_is_refused_with_the_reason(tmp_path, tiny_model_dir, updater, options):
    all_wrong = _samples({(1, 2): ["4", "5", "6", "7"]})
    if updater.name in ("kto", "redi"):  # these learn from failures alone; give them nothing
        all_wrong = []
    ctx = _context(tmp_path, tiny_model_dir, updater, options, samples=all_wrong)
    with pytest.raises(EmptyDataset, match=updater.name):
        updater.update(ctx)


def test_group_methods_need_two_samples_per_prompt(tmp_path, tiny_model_dir):
    ctx = _context(tmp_path, tiny_model_dir, GRPOUpdater(), GRPOOptions())
    ctx.config.generate.n = 1
    with pytest.raises(EmptyDataset, match="at least 2 samples per prompt"):
        GRPOUpdater().update(ctx)


@pytest.mark.slow
def test_dpo_continues_an_adapter_against_its_own_starting_point(tmp_path, tiny_model_dir):
    """Round 2 continues round 1's adapter; its reference is that adapter (a frozen copy), so
    DPO's first loss is log 2 again (policy == reference) rather than the base model's."""
    import math

    first = DPOUpdater().update(_context(tmp_path, tiny_model_dir, DPOUpdater(), DPOOptions(),
                                         epochs=3))
    ctx = _context(tmp_path / "second", tiny_model_dir, DPOUpdater(), DPOOptions())
    ctx.adapter_in = first.adapter_path
    second = DPOUpdater().update(ctx)
    assert second.metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    # only the trained adapter is saved, not TRL's frozen "ref" copy (PEFT would add ref/)
    assert [p.name for p in Path(second.adapter_path).iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_an_update_whose_gradient_is_always_zero_aborts(tmp_path, tiny_model_dir):
    """A loss that does not depend on the weights (here REDI's, times 0) gives a zero gradient
    norm on every step, and the updater says so instead of publishing an unchanged model."""
    from loop_trl.training import NoLearning

    class Frozen(REDIUpdater):
        def trainer_cls(self, options):
            base = super().trainer_cls(options)

            class ZeroLoss(base):
                def _compute_loss(self, model, inputs):
                    return super()._compute_loss(model, inputs) * 0.0

            return ZeroLoss

    ctx = _context(tmp_path, tiny_model_dir, Frozen(), REDIOptions(sft_stage=False), max_steps=2)
    with pytest.raises(NoLearning, match="gradient norm was 0 on every one of 2 steps"):
        Frozen().update(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("updater,options", [(m[0], m[1]) for m in METHODS],
                         ids=[m[0].name for m in METHODS])
def test_full_finetuning_writes_a_changed_model(tmp_path, tiny_model_dir, updater, options):
    from transformers import AutoModelForCausalLM

    ctx = _context(tmp_path, tiny_model_dir, updater, options, max_steps=2,
                   lora={"enabled": False})
    result = updater.update(ctx)
    tuned = AutoModelForCausalLM.from_pretrained(result.adapter_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert any((p - q).abs().sum().item() > 0
               for p, q in zip(tuned.parameters(), base.parameters()))


def test_redi_averages_positives_and_negatives_each_on_its_own():
    import torch

    from loop_trl.negative import redi_loss

    logps = torch.tensor([-1.0, -2.0, -4.0, -4.0, -4.0, -4.0])
    passed = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    # −mean(−1, −2) + 0.5 × mean(−4 × 4): four negatives weigh as much as two positives
    assert redi_loss(logps, passed, 0.5).item() == pytest.approx(1.5 - 2.0)
    assert redi_loss(logps[2:], passed[2:], 0.5).item() == pytest.approx(-2.0)  # no positives


def test_a_method_default_learning_rate_yields_to_a_rate_the_run_chose(tmp_path, tiny_model_dir):
    from loop_trl.training import learning_rate

    def rate(options, **train):
        config = LoopConfig.model_validate({"model": str(tiny_model_dir), "train": train})
        ctx = UpdateContext(run_id="r", round_index=1, samples=[], base_model="m",
                            adapter_in=None, output_dir=tmp_path, config=config,
                            options=options, seed=0)
        return learning_rate(ctx, 5e-5)

    assert rate(KTOOptions()) == 5e-5  # train.learning_rate null (loop's default): the method's
    assert rate(KTOOptions(), learning_rate=1e-3) == 1e-3  # the run chose a rate
    assert rate(KTOOptions(learning_rate=2e-6), learning_rate=1e-3) == 2e-6  # the option wins
    # a stored config names every field (null included), so a resumed run resolves the same rate
    stored = LoopConfig.model_validate_json(LoopConfig().model_dump_json())
    assert "learning_rate" in stored.train.model_fields_set and stored.train.learning_rate is None
    ctx = UpdateContext(run_id="r", round_index=1, samples=[], base_model="m", adapter_in=None,
                        output_dir=tmp_path, config=stored, options=KTOOptions(), seed=0)
    assert learning_rate(ctx, 5e-5) == 5e-5


def test_the_learning_rate_decays_by_round_when_asked(tmp_path, tiny_model_dir):
    from loop_trl.training import learning_rate

    def rate(round_index, options=KTOOptions(), **train):
        config = LoopConfig.model_validate({"model": str(tiny_model_dir), "train": train})
        ctx = UpdateContext(run_id="r", round_index=round_index, samples=[], base_model="m",
                            adapter_in=None, output_dir=tmp_path, config=config,
                            options=options, seed=0)
        return learning_rate(ctx, 5e-5)

    assert [rate(r) for r in (1, 2, 3)] == [5e-5] * 3  # no decay by default
    decayed = [rate(r, learning_rate=1e-3, learning_rate_decay=0.5) for r in (1, 2, 3)]
    assert decayed == pytest.approx([1e-3, 5e-4, 2.5e-4])
    # the decay applies to whichever rate was chosen, a method's own option included
    assert rate(3, KTOOptions(learning_rate=2e-6), learning_rate_decay=0.5) == pytest.approx(5e-7)
    # sft's own decay option wins over the run's
    sft = SFTOptions(learning_rate=1e-3, learning_rate_decay=0.5)
    assert rate(2, sft, learning_rate_decay=0.9) == pytest.approx(5e-4)
    assert rate(2, SFTOptions(), learning_rate_decay=0.9) == pytest.approx(4.5e-5)
    with pytest.raises(ValueError):
        LoopConfig.model_validate({"train": {"learning_rate_decay": 1.5}})


@pytest.mark.slow
def test_kto_trains_on_balanced_sides_at_its_own_rate(tmp_path, tiny_model_dir):
    """Two passing and four failing distinct answers: two failures are kept (one per success,
    each from a prompt that has a success), the weights then equal, the paper's range holds."""
    ctx = _context(tmp_path, tiny_model_dir, KTOUpdater(), KTOOptions(learning_rate=1e-4),
                   max_steps=1)
    metrics = KTOUpdater().update(ctx).metrics
    assert (metrics["desirable"], metrics["undesirable"]) == (2, 2)
    assert metrics["undesirable_left_out"] == 2 and metrics["learning_rate"] == 1e-4
    ratio = (metrics["desirable_weight"] * metrics["desirable"]
             / (metrics["undesirable_weight"] * metrics["undesirable"]))
    assert 1.0 <= ratio <= 4 / 3


@pytest.mark.slow
def test_redi_fine_tunes_on_the_verified_answers_then_continues_with_its_loss(
        tmp_path, tiny_model_dir, monkeypatch):
    """The SFT stage trains SFTTrainer on the round's distinct passing answers for its share of
    the steps; the REDI stage starts from that model: with α = 0 its loss is the positives'
    NLL, so it starts lower than without the SFT stage."""
    import loop_trl.negative as negative
    from trl import SFTTrainer

    from loop_trl.datasets import sft_rows

    calls = []
    original = negative.train_with_trl

    def spy(context, rows, **kwargs):
        calls.append((kwargs["trainer_cls"], rows, context.config.train.max_steps,
                      context.adapter_in))
        return original(context, rows, **kwargs)

    monkeypatch.setattr(negative, "train_with_trl", spy)
    with_sft = REDIUpdater().update(_context(tmp_path / "two", tiny_model_dir, REDIUpdater(),
                                             REDIOptions(alpha=0.0, learning_rate=1e-3),
                                             max_steps=4)).metrics
    assert len(calls) == 1  # the REDI stage trains through GroupUpdater.update
    trainer, rows, steps, adapter_in = calls[0]
    assert trainer is SFTTrainer and steps == 2 and adapter_in is None
    assert rows == sft_rows(_samples()) and with_sft["sft_dataset_size"] == 2
    assert with_sft["sft_steps"] == 2 and with_sft["steps"] == 4 and with_sft["groups"] == 2
    # redi's learning_rate is the REDI stage's; the SFT stage trains at the run's rate, as sft
    assert with_sft["learning_rate"] == 1e-3 and with_sft["sft_learning_rate"] == 5e-3
    alone = REDIUpdater().update(_context(tmp_path / "one", tiny_model_dir, REDIUpdater(),
                                          REDIOptions(alpha=0.0, sft_stage=False),
                                          max_steps=2)).metrics
    assert "sft_steps" not in alone and alone["steps"] == 2
    assert with_sft["loss_first"] < alone["loss_first"] - 0.1, (with_sft, alone)


@pytest.mark.slow
def test_redi_leaves_out_groups_where_nothing_passed(tmp_path, tiny_model_dir):
    samples = _samples({**ROUND, (1, 2): ["4", "5", "6", "7"]})
    ctx = _context(tmp_path, tiny_model_dir, REDIUpdater(), REDIOptions(), samples=samples,
                   max_steps=2)
    metrics = REDIUpdater().update(ctx).metrics
    assert metrics["groups"] == 2 and metrics["groups_skipped_equal_rewards"] == 1
    with pytest.raises(EmptyDataset, match="redi: no usable group"):
        REDIUpdater().update(_context(tmp_path / "none", tiny_model_dir, REDIUpdater(),
                                      REDIOptions(), samples=_samples({(1, 2): ["4", "5"] * 2})))
