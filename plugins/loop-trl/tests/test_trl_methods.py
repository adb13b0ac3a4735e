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
    """REDI with alpha=0 on a round with only wrong answers has nothing to push: every step's
    gradient norm is 0, and the updater says so instead of publishing an unchanged model."""
    from loop_trl.training import NoLearning

    all_wrong = _samples({(1, 2): ["4", "5", "6", "7"]})
    ctx = _context(tmp_path, tiny_model_dir, REDIUpdater(), REDIOptions(alpha=0.0),
                   samples=all_wrong, max_steps=2)
    with pytest.raises(NoLearning, match="gradient norm was 0 on every one of 2 steps"):
        REDIUpdater().update(ctx)


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
