"""NFT's claim (Chen et al. 2025): on strictly on-policy data its gradient equals GRPO's.

On the tiny model in float64, one batch of stored groups, nothing trained yet (so π_θ = π_old):
the gradient of our NFT loss with ω(r̂) = 1 − r̂ equals, parameter by parameter, the gradient of
TRL's own GRPO loss with unscaled advantages (r − mean) and token-mean aggregation (`bnpo`).
Both trainers see the same batch through the same stored-rollout pipeline, so the comparison
isolates the two losses. A different prompt weight must break the equality (the test can fail).
"""

from __future__ import annotations

import pytest

from loop_trl.datasets import build_groups
from loop_trl.grpo import StoredRollouts, stored_group_trainer, stored_reward
from loop_trl.negative import NFTOptions, _nft_trainer

# Solve rates 1/4, 1/2 and 3/4: unequal rates make the per-prompt weight matter.
ANSWERS = {(12, 35): ["47", "46", "74", "57"], (40, 41): ["81", "18", "80", "81"],
           (23, 11): ["34", "34", "43", "34"]}


def _gradients(model_dir, trainer_cls, groups, tmp_path, **config):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=12, num_generations=4,
                      steps_per_generation=1, temperature=1.0, beta=0.0, report_to="none",
                      use_cpu=True, bf16=False, max_completion_length=8, **config)
    trainer = trainer_cls(model=model, reward_funcs=[stored_reward("binary")], args=args,
                          processing_class=tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": g.prompt} for g in groups]),
                          rollout_func=StoredRollouts(groups, tokenizer, ["binary"]))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions(
        [{"prompt": g.prompt} for g in groups for _ in range(4)])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()
            if p.grad is not None}


def _groups():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_trl_methods import _samples

    return build_groups(_samples(ANSWERS), 4, ["binary"]).groups


@pytest.mark.slow  # two trainers' gradients on the tiny model
@pytest.mark.parametrize("weighting,equal", [("one_minus_rate", True), ("none", False)])
def test_nft_gradient_equals_grpo_gradient_on_policy(tmp_path, tiny_model_dir, weighting, equal):
    import torch

    groups = _groups()
    assert sorted(g.solve_rate for g in groups) == [0.25, 0.5, 0.75]
    grpo = _gradients(tiny_model_dir, stored_group_trainer(), groups, tmp_path / "grpo",
                      loss_type="bnpo", scale_rewards="none")
    nft_cls = _nft_trainer()
    nft_cls.nft_options = NFTOptions(weighting=weighting)
    nft = _gradients(tiny_model_dir, nft_cls, groups, tmp_path / "nft")
    assert grpo.keys() == nft.keys() and len(grpo) > 0
    total = sum(g.abs().sum().item() for g in grpo.values())
    assert total > 0  # a real gradient, not two zeros agreeing
    same = all(torch.allclose(grpo[k], nft[k], rtol=1e-9, atol=1e-12) for k in grpo)
    assert same is equal


@pytest.mark.slow
def test_stored_sampling_logprobs_become_the_ppo_old_logprobs(tmp_path, weak_adder_dir):
    """The hf backend's stored log-probs line up, token for token, with what TRL computes for the
    same completions under the same (untrained) model: so as `old_per_token_logps` they give a
    PPO ratio of 1 on-policy and the true π_θ/π_sample ratio after earlier steps."""
    import torch

    from loop.schema import Attempt, ModelRef, Sample, Sampling, Task
    from loop_hf.backend import HFBackend, HFOptions

    prompts = [[{"role": "user", "content": f"{a}+{b}="}] for a, b in [(12, 35), (40, 41)]]
    session = HFBackend().open(ModelRef(base=str(weak_adder_dir)), HFOptions())
    generations = session.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=6,
                                                     seed=3))
    session.close()
    samples = []
    for prompt, outs in zip(prompts, generations):
        task = Task(source="t", split="train", prompt=prompt, reference="0")
        for i, g in enumerate(outs):
            attempt = Attempt(id=f"{task.id}{i}", run_id="r", round_index=1, task_id=task.id,
                              purpose="train", sample_index=i, messages=[], completion=g.text,
                              token_ids=g.token_ids, logprobs=g.logprobs,
                              finish_reason=g.finish_reason)
            samples.append(Sample(task=task, attempt=attempt, passed=i % 2 == 0,
                                  score=float(i % 2 == 0), reward=float(i % 2 == 0)))
    groups = build_groups(samples, 4, ["reward"]).groups
    assert len(groups) == 2

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    model = AutoModelForCausalLM.from_pretrained(weak_adder_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(weak_adder_dir)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      steps_per_generation=1, temperature=1.0, report_to="none", use_cpu=True,
                      bf16=False, max_completion_length=8)
    trainer = stored_group_trainer()(
        model=model, reward_funcs=[stored_reward("reward")], args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        rollout_func=StoredRollouts(groups, tokenizer, ["reward"]))
    trainer.model.eval()
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(4)])
    assert batch["completion_ids"].shape[0] == 8
    assert batch["loop_passed"].tolist() == [1.0, 0.0] * 4
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        recomputed, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, batch["completion_ids"].size(1))
    live = batch["completion_mask"].bool()
    stored = batch["old_per_token_logps"]
    assert torch.allclose(stored[live], recomputed[live], atol=1e-4)
    # and the stored tokens are exactly the sampled ones, in group order
    first = batch["completion_ids"][0][: int(live[0].sum())].tolist()
    assert first == generations[0][0].token_ids
