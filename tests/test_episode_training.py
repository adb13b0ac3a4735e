"""Every TRL updater trains on episodes token-exactly.

The episodes are built the way the episode loop builds them with a real tokenizer's chat
template (loop.TokenizerChat): the prompt rendered once, each model turn's ids as sampled, and
for each tool result the template's carrier tokens. The template trims assistant messages and
the sampled turns have leading or trailing spaces, so re-rendering an episode through the
template gives other ids than the stored ones (checked): an updater that re-tokenised would
fail here. For sft, dpo, kto and grpo the test captures the first batch TRL's trainer computes
its loss on and compares, turn by turn, its token ids and loss mask with the stored prompt
ids, turn ids and `loss_mask()`; nft and redi (grpo's rollouts, their own loss) are checked on
the mask their loss uses. Episodes sampled without token ids are refused with the cause and
the fix.
"""

from __future__ import annotations

import pytest

import loop
from loop.config import LoopConfig
from loop.updates import UpdateContext
from loop_trl.datasets import episodes_truncated
from loop_trl.grpo import GRPOOptions, GRPOUpdater
from loop_trl.negative import NFTOptions, NFTUpdater, REDIOptions, REDIUpdater
from loop_trl.preference import DPOOptions, DPOUpdater, KTOOptions, KTOUpdater
from loop_trl.sft import SFTOptions, SFTUpdater

# ChatML-like, on the tiny model's character tokenizer (which has no newline): an assistant
# message is trimmed, as many real templates do; every message ends with EOS and "|".
TEMPLATE = ("{% for m in messages %}{{ m['role'][0] | upper }}:"
            "{% if m['role'] == 'assistant' %}{{ m['content'] | trim }}"
            "{% else %}{{ m['content'] }}{% endif %}{{ eos_token }}|{% endfor %}"
            "{% if add_generation_prompt %}A:{% endif %}")

# task (question, reference) -> four episodes: model turns, the tool result after each but the
# last, and whether the episode passed. Sampled text keeps its spaces (the template trims).
EPISODES = {
    ("Reach 7.", "7"): [
        ([" add(5)", " add(2) ", "It is 7."], ["5", "7"], True),
        ([" add(7)", "7 "], ["7"], True),
        (["It is 9."], [], False),
        ([" add(3)", "It is 3."], ["3"], False),
    ],
    ("Reach 9.", "9"): [
        ([" add(9)", "Done: 9"], ["9"], True),
        ([" add(4)", " add(4)", "It is 8."], ["4", "8"], False),
        ([" add(4)", " add(5)", "9 "], ["4", "9"], True),
        ([" 10"], [], False),
    ],
}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """(model folder, its tokenizer): the tiny random Llama with TEMPLATE as its chat template."""
    from transformers import AutoTokenizer

    from tiny_model import random_tiny_model

    folder = random_tiny_model(tmp_path_factory.mktemp("chat") / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder, AutoTokenizer.from_pretrained(folder)


def _episode(chat, tokenizer, task, k, texts, results, token_ids=True):
    """The stored Attempt of one episode, as the engine builds it (loop.rounds)."""
    prompt = [{"role": "user", "content": task.prompt[0]["content"] + " Start at 0."}]  # reset
    turns = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        turns.append(loop.Turn(role="assistant", text=text, token_ids=ids, trained=True,
                               logprobs=[-0.1 * (i + 1) - 0.01 * j for j in range(len(ids))]))
        if i < len(results):
            message = {"role": "tool", "content": results[i], "name": "add"}
            turns.append(loop.Turn(
                role="tool", text=results[i], name="add",
                token_ids=chat.continuation_ids([message]) if token_ids else []))
    prompt_ids = chat.prompt_ids(prompt) if token_ids else []
    messages = [*prompt, *({"role": t.role, "content": t.text} for t in turns)]
    attempt = loop.Attempt(
        id=f"{task.id[:6]}-{k}", run_id="r", round_index=1, task_id=task.id, purpose="train",
        sample_index=k, messages=messages, completion=texts[-1],
        token_ids=[i for t in turns for i in t.token_ids], prompt_ids=prompt_ids,
        prompt_tokens=len(prompt_ids),
        completion_tokens=sum(len(t.token_ids) for t in turns if t.trained),
        logprobs=[lp for t in turns
                  for lp in (t.logprobs if t.trained else [0.0] * len(t.token_ids))],
        turns=turns, environment="counter", tools=["add"], end_reason="answer")
    return attempt


def _samples(chat_model, token_ids=True) -> list[loop.Sample]:
    folder, tokenizer = chat_model
    chat = loop.TokenizerChat(tokenizer)
    samples = []
    for (question, reference), episodes in EPISODES.items():
        task = loop.Task(source="counter", split="train",
                         prompt=[{"role": "user", "content": question}], reference=reference)
        for k, (texts, results, passed) in enumerate(episodes):
            attempt = _episode(chat, tokenizer, task, k, texts, results, token_ids)
            attempt.env_reward = float(passed)
            samples.append(loop.Sample(task=task, attempt=attempt, passed=passed,
                                       score=float(passed), reward=float(passed),
                                       rewards={"counter": float(passed)}))
    return samples


def _context(tmp_path, chat_model, updater, options, samples) -> UpdateContext:
    config = LoopConfig.model_validate({
        "model": str(chat_model[0]), "generate": {"n": 4},
        "train": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "max_length": 512,
                  "max_steps": 1}})
    out = tmp_path / updater.name
    out.mkdir(parents=True, exist_ok=True)
    return UpdateContext(run_id="r", round_index=1, samples=samples,
                         base_model=str(chat_model[0]), adapter_in=None, output_dir=out,
                         config=config, options=options, seed=0, progress=lambda **kw: None,
                         reward_names=["counter"])


@pytest.fixture
def first_batch(monkeypatch):
    """capture(trainer_cls) -> a list that receives every batch `trainer_cls.compute_loss` is
    called with (tensors copied to the CPU), the call itself unchanged."""
    import torch

    def capture(cls):
        batches = []
        original = cls.compute_loss

        def compute_loss(self, model, inputs, *args, **kwargs):
            batches.append({k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                            for k, v in inputs.items()})
            return original(self, model, inputs, *args, **kwargs)

        monkeypatch.setattr(cls, "compute_loss", compute_loss)
        return batches

    return capture


def _row(ids, keep, mask) -> tuple[list[int], list[int]]:
    """A padded row's tokens where `keep` is 1, and its mask there."""
    keep = keep.bool()
    return ids[keep].tolist(), mask[keep].int().tolist()


def _match(ids: list[int], samples) -> loop.Sample:
    """The one sample whose stored prompt and turn ids are exactly `ids`."""
    found = [s for s in samples if s.attempt.prompt_ids + s.attempt.token_ids == ids]
    assert len(found) == 1, "the trainer's sequence is no stored episode"
    return found[0]


def _check_turns(ids: list[int], mask: list[int], attempt: loop.Attempt) -> None:
    """Turn by turn: the prompt's ids (never trained), then each turn's ids, trained exactly
    where the turn is the model's."""
    cut = len(attempt.prompt_ids)
    assert ids[:cut] == attempt.prompt_ids and mask[:cut] == [0] * cut
    at = cut
    for turn in attempt.turns:
        n = len(turn.token_ids)
        assert ids[at:at + n] == turn.token_ids, turn.role
        assert mask[at:at + n] == [int(turn.trained)] * n, turn.role
        at += n
    assert at == len(ids) and mask[cut:] == attempt.loss_mask()


def test_the_episodes_are_not_what_re_rendering_would_give(chat_model):
    """The premise of the tests below: the stored ids are the chat template's (prompt, tool
    carriers), yet re-rendering a whole episode gives other ids for most episodes."""
    _, tokenizer = chat_model
    samples = _samples(chat_model)
    differ = 0
    for sample in samples:
        attempt = sample.attempt
        text = tokenizer.decode(attempt.prompt_ids + attempt.token_ids)
        assert text.startswith(tokenizer.apply_chat_template(
            attempt.messages[:1], tokenize=False, add_generation_prompt=True))
        rendered = tokenizer.apply_chat_template(attempt.messages, tokenize=False)
        differ += rendered != text + "|"
        assert 0 in attempt.loss_mask() or len(attempt.turns) == 1
        assert len(attempt.prompt_ids) + len(attempt.token_ids) < 128  # the tiny model's limit
    assert differ >= 6


def _examples(batch) -> list[tuple[list[int], list[int], list[int]]]:
    """(ids, loss mask, labels) of every example of a collated batch: a padded batch's rows
    where the attention mask is 1, or a padding-free batch's one row cut where its position ids
    start again at 0."""
    if "attention_mask" in batch:
        out = []
        for i in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][i].bool()
            labels = batch["labels"][i][keep]
            out.append((batch["input_ids"][i][keep].tolist(), (labels != -100).int().tolist(),
                        labels.tolist()))
        return out
    assert batch["input_ids"].shape[0] == 1  # flattened
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0]
    return [(ids[a:b], [int(t != -100) for t in labels[a:b]], labels[a:b])
            for a, b in zip(starts, starts[1:] + [len(ids)])]


@pytest.mark.parametrize("padding_free", [False, None], ids=["padded", "default"])
def test_sft_trains_on_the_stored_ids_of_the_passing_episodes(tmp_path, chat_model, first_batch,
                                                             padding_free):
    """Padded, or padding-free (the default here: every episode fits train.max_length), the
    trainer's examples are the stored episodes, trained exactly on the model's turns."""
    from trl import SFTTrainer

    samples = _samples(chat_model)
    # a refinement's single-turn repair cannot join a token-exact dataset: left out
    repair = samples[2].model_copy(deep=True)
    repair.attempt = repair.attempt.model_copy(update={
        "id": "repair", "environment": None, "turns": [], "prompt_ids": [], "depth": 1,
        "parent_id": samples[2].attempt.id, "completion": "It is 7.", "token_ids": []})
    repair.passed = True
    batches = first_batch(SFTTrainer)
    ctx = _context(tmp_path, chat_model, SFTUpdater(), SFTOptions(padding_free=padding_free),
                   samples + [repair])
    result = SFTUpdater().update(ctx)
    assert result.metrics["dataset_size"] == 4 and result.metrics["steps"] == 1
    assert result.metrics["padding_free"] is (padding_free is None)
    assert result.metrics["episodes_truncated"] == 0
    lengths = [len(s.attempt.prompt_ids) + len(s.attempt.token_ids) for s in samples if s.passed]
    assert episodes_truncated(SFTUpdater().build_dataset(ctx), 40) == sum(n > 40 for n in lengths)
    assert ("attention_mask" in batches[0]) is (padding_free is False)
    seen = []
    for ids, mask, labels in _examples(batches[0]):
        sample = _match(ids, samples)
        _check_turns(ids, mask, sample.attempt)
        assert [t for t in labels if t != -100] == [t for t, m in zip(ids, mask) if m]
        seen.append(sample.attempt.id)
    assert sorted(seen) == sorted(s.attempt.id for s in samples if s.passed)


def test_dpo_pairs_episodes_of_one_task_on_their_stored_ids(tmp_path, chat_model, first_batch):
    from trl import DPOTrainer

    samples = _samples(chat_model)
    batches = first_batch(DPOTrainer)
    result = DPOUpdater().update(_context(tmp_path, chat_model, DPOUpdater(), DPOOptions(),
                                          samples))
    assert result.metrics["pairs"] == 4 and result.metrics["steps"] == 1
    batch = batches[0]
    pairs = batch["input_ids"].shape[0] // 2
    assert pairs == 4
    seen = set()
    for i in range(pairs):
        chosen, rejected = [
            _row(batch["input_ids"][r], batch["attention_mask"][r], batch["completion_mask"][r])
            for r in (i, i + pairs)]
        good, bad = _match(chosen[0], samples), _match(rejected[0], samples)
        _check_turns(*chosen, good.attempt)
        _check_turns(*rejected, bad.attempt)
        assert good.passed and not bad.passed and good.task.id == bad.task.id
        seen.add((good.attempt.id, bad.attempt.id))
    assert len(seen) == 4


def test_kto_trains_on_labelled_episodes_and_their_kl_rows(tmp_path, chat_model, first_batch):
    from trl import KTOTrainer

    samples = _samples(chat_model)
    batches = first_batch(KTOTrainer)
    result = KTOUpdater().update(_context(tmp_path, chat_model, KTOUpdater(), KTOOptions(),
                                          samples))
    assert (result.metrics["desirable"], result.metrics["undesirable"]) == (4, 4)
    batch = batches[0]
    rows = batch["input_ids"].shape[0]
    assert rows == 8
    matched = []
    for i in range(rows):
        ids, mask = _row(batch["input_ids"][i], batch["attention_mask"][i],
                         batch["completion_mask"][i])
        sample = _match(ids, samples)
        _check_turns(ids, mask, sample.attempt)
        assert bool(batch["label"][i]) == sample.passed
        matched.append(sample)
    assert {s.attempt.id for s in matched} == {s.attempt.id for s in samples}
    # KL rows: row i's prompt with row i-1's turns, masked as that episode's
    for i in range(rows):
        ids, mask = _row(batch["KL_input_ids"][i], batch["KL_attention_mask"][i],
                         batch["KL_completion_mask"][i])
        own, other = matched[i].attempt, matched[i - 1].attempt
        cut = len(own.prompt_ids)
        assert ids[:cut] == own.prompt_ids and ids[cut:] == other.token_ids
        assert mask == [0] * cut + other.loss_mask()


def _check_rollouts(batch, samples, mask_key="tool_mask"):
    """Each row of a GRPO batch: TRL's prompt is the stored prompt, its completion the stored
    turns, its loss mask (completion_mask × tool_mask) the episode's, and the old log-probs on
    the model's tokens the stored sampling ones."""
    rows = batch["completion_ids"].shape[0]
    for i in range(rows):
        prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
        live = batch["completion_mask"][i].bool()
        completion = batch["completion_ids"][i][live].tolist()
        trained = (batch["completion_mask"][i] * batch[mask_key][i])[live].int().tolist()
        sample = _match(prompt + completion, samples)
        assert prompt == sample.attempt.prompt_ids
        _check_turns(prompt + completion, [0] * len(prompt) + trained, sample.attempt)
        if "old_per_token_logps" in batch:
            old = batch["old_per_token_logps"][i][live].tolist()
            stored = sample.attempt.logprobs
            assert [o for o, m in zip(old, trained) if m] == pytest.approx(
                [s for s, m in zip(stored, trained) if m], abs=1e-6)
    return rows


def test_grpo_rollouts_are_the_stored_episodes_with_env_mask(tmp_path, chat_model, first_batch):
    from trl import GRPOTrainer

    samples = _samples(chat_model)
    batches = first_batch(GRPOTrainer)
    options = GRPOOptions(behaviour_logprobs=True)
    result = GRPOUpdater().update(_context(tmp_path, chat_model, GRPOUpdater(), options, samples))
    assert result.metrics["groups"] == 2 and result.metrics["behaviour_logprobs"] is True
    batch = batches[0]
    assert "tool_mask" in batch and "old_per_token_logps" in batch
    assert _check_rollouts(batch, samples) == 8


@pytest.mark.parametrize("options", [GRPOOptions(), None], ids=["default-options", "no-options"])
def test_grpo_by_default_takes_trls_old_policy_not_the_stored_logprobs(tmp_path, chat_model,
                                                                       first_batch, options):
    """Stored log-probs far from the model's (-5 per token) never reach the default loss: its
    ratio is against the policy at the step (TRL's own), not the sampling policy."""
    from trl import GRPOTrainer

    samples = _samples(chat_model)
    for sample in samples:
        sample.attempt.logprobs = [-5.0] * len(sample.attempt.logprobs)
    batches = first_batch(GRPOTrainer)
    result = GRPOUpdater().update(_context(tmp_path, chat_model, GRPOUpdater(), options, samples))
    assert result.metrics["behaviour_logprobs"] is False
    batch = batches[0]
    assert batch.get("old_per_token_logps") is None or not (
        batch["old_per_token_logps"] == -5.0).any()
    assert batch["completion_ids"].shape[0] == 8


@pytest.mark.parametrize("updater,options", [(NFTUpdater(), NFTOptions()),
                                             (REDIUpdater(), REDIOptions())],
                         ids=["nft", "redi"])
def test_nft_and_redi_losses_run_over_the_model_tokens_only(tmp_path, chat_model, monkeypatch,
                                                            updater, options):
    """Their rollouts carry env_mask (TRL's tool_mask) and their own losses use it."""
    import loop_trl.negative as negative

    seen = []
    original = negative._token_logps

    def token_logps(trainer, model, inputs):
        logps, mask = original(trainer, model, inputs)
        seen.append({**{k: v.detach().cpu() for k, v in inputs.items()
                        if k in ("prompt_ids", "prompt_mask", "completion_ids",
                                 "completion_mask", "tool_mask")},
                     "loss_mask": mask.detach().cpu()})
        return logps, mask

    monkeypatch.setattr(negative, "_token_logps", token_logps)
    samples = _samples(chat_model)
    updater.update(_context(tmp_path, chat_model, updater, options, samples))
    batch = seen[0]
    assert "tool_mask" in batch
    assert _check_rollouts(batch, samples, mask_key="loss_mask") == 8


UPDATERS = [(SFTUpdater(), SFTOptions()), (DPOUpdater(), DPOOptions()),
            (KTOUpdater(), KTOOptions()), (GRPOUpdater(), GRPOOptions()),
            (NFTUpdater(), NFTOptions()), (REDIUpdater(), REDIOptions())]


@pytest.mark.parametrize("updater,options", UPDATERS, ids=[u.name for u, _ in UPDATERS])
def test_episodes_without_token_ids_are_refused_with_the_cause_and_the_fix(
        tmp_path, chat_model, updater, options):
    """A backend with no chat format stores episodes without prompt ids or the environment's
    tokens: no updater may train on them by re-tokenising."""
    samples = _samples(chat_model, token_ids=False)
    ctx = _context(tmp_path, chat_model, updater, options, samples)
    with pytest.raises(ValueError, match=rf"^{updater.name}: .*without token ids.*hf, vllm"):
        updater.update(ctx)


@pytest.mark.parametrize("updater,options", [(GRPOUpdater(), GRPOOptions()),
                                             (NFTUpdater(), NFTOptions()),
                                             (REDIUpdater(), REDIOptions())],
                         ids=["grpo", "nft", "redi"])
def test_group_exports_of_episodes_hold_every_turn_and_the_ids_training_reads(
        tmp_path, chat_model, updater, options):
    """`loop export --what grpo|nft|redi` on episodes: the episode's own prompt, every message
    after it, and the stored ids with the mask of the model's tokens."""
    samples = _samples(chat_model)
    by_id = {s.attempt.id: s.attempt for s in samples}
    rows = updater.build_dataset(_context(tmp_path, chat_model, updater, options, samples))
    assert rows and len({frozenset(r) for r in rows}) == 1  # one key set: one table
    for row in rows:
        attempt = by_id[row["attempt_id"]]
        assert row["prompt"][0]["content"].endswith("Start at 0.")  # the reset text
        assert [m["role"] for m in row["completion"]] == [t.role for t in attempt.turns]
        assert row["completion"][-1]["content"] == attempt.completion
        assert row["prompt_ids"] == attempt.prompt_ids
        assert row["completion_ids"] == [i for t in attempt.turns for i in t.token_ids]
        assert row["completion_mask"] == attempt.loss_mask()
        assert (0 in row["completion_mask"]) == any(t.role == "tool" for t in attempt.turns)
        model = [lp for t in attempt.turns if t.trained for lp in t.logprobs]
        assert row["logprob_sum"] == pytest.approx(sum(model))
