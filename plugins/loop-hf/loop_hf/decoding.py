"""Batched decoding that drops finished rows, for CPUs (and small GPUs without vLLM).

transformers' `generate` keeps every row of a padded batch decoding until the longest one ends, so
one rambling answer holds a whole batch at the token limit (measured on the default run: 95 % of a
round was such sampling). Its continuous-batching `generate_batch` avoids that but ran slower than
static batching on our 2-core CPU (paged attention overhead: 103 vs 153 tok/s, SmolLM2, 64 prompts).
So this loop drives the model's own forward pass with transformers' DynamicCache and logits
processors, and after each step removes finished rows from the batch and the KV cache
(`DynamicCache.batch_select_indices`); each cache layer writes into room reserved for the whole
decode instead of growing by concatenation. The n samples of one prompt share a single prefill
(`batch_repeat_interleave`). Measured on the same 64 prompts: 223 tok/s, identical greedy output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Decoded:
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    logprobs: list[float]


@torch.inference_mode()
def decode_batch(
    model,
    prompt_ids: list[list[int]],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_ids: set[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    on_token: Callable[[int], None] | None = None,
    min_shared_prefix: int = 8,
) -> list[list[Decoded]]:
    """Decode `n` completions for each prompt; returns one list of n Decoded per prompt.

    temperature 0 is greedy (then n copies are identical; callers ask for n=1). Log-probabilities
    are those of the chosen tokens under the model's unscaled distribution.

    When every prompt of the batch starts with the same `min_shared_prefix` or more tokens (a
    task's system message and worked examples; an episode's history), that prefix is computed
    once and its KV cache shared by every row: only the rest of each prompt is prefilled. Same
    result up to float rounding (the rows' padding sits between prefix and rest, masked out).
    Even a short system message pays: the default task's prompts share 17 of their 29 tokens,
    and sharing them makes a greedy pass over its 200 held-out problems 1.45x faster
    (BENCHMARKS.md, "Shared-prefix decoding"); the one extra forward of the prefix costs less
    than its rows' prefill of those tokens.
    """
    from transformers import DynamicCache
    from transformers.generation.logits_process import TopPLogitsWarper

    device = model.device
    batch = len(prompt_ids)
    # Every row keeps at least its last token out of the shared prefix: its logits start decoding.
    shared = _common_prefix(prompt_ids) if batch > 1 else 0
    shared = min(shared, min(len(p) for p in prompt_ids) - 1)
    if shared < max(1, min_shared_prefix):
        shared = 0
    rests = [p[shared:] for p in prompt_ids]
    width = max(len(r) for r in rests)
    ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, rest in enumerate(rests):  # left padding: every row's last token lines up
        ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
        mask[row, width - len(rest):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)

    cache = DynamicCache()
    # every layer writes into room reserved for the whole decode (see _reserved_cache_layer)
    cache.layer_class_to_replicate = _reserved_cache_layer(
        shared + width + max_new_tokens)
    # The cache's keyword: the locked transformers (5.24) calls it `cache` and warns on every call
    # that passes the old `past_key_values`; earlier releases know only `past_key_values`.
    cache_kw = {_cache_keyword(model): cache}
    if shared:
        prefix = torch.tensor([prompt_ids[0][:shared]], dtype=torch.long, device=device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
              **cache_kw, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        mask = torch.cat([mask.new_ones((batch, shared)), mask], -1)
    # logits_to_keep: the vocabulary projection only for the last position (the prompt's other
    # positions need no logits; at 49k words that projection dominates a prefill). As an index,
    # not the int 1: an int slices the hidden states into a strided view, and torch.matmul,
    # given a strided batch and a weight that needs no gradient (a merged adapter's), copies
    # the whole vocabulary matrix once per row for bmm in bfloat16 (15 s at 128 rows).
    last = torch.tensor([width - 1], device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kw,
                use_cache=True, logits_to_keep=last)
    logits = out.logits[:, -1, :].float()
    if n > 1:  # the n samples share this prefill
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        positions = positions.repeat_interleave(n, dim=0)
    last_pos = positions[:, -1]

    top_p_warper = TopPLogitsWarper(top_p) if temperature > 0 and top_p < 1.0 else None
    eos = torch.tensor(sorted(eos_token_ids), device=device)

    rows = batch * n
    alive = torch.arange(rows, device=device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    finish = ["length"] * rows
    for step in range(max_new_tokens):
        if temperature > 0:
            chosen = _sample(logits, temperature, top_p_warper, generator)
        else:
            chosen = logits.argmax(-1)
        # log p(chosen) = logit - logsumexp(logits): one pass over the vocabulary, no B x V output
        chosen_logp = logits.gather(-1, chosen[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
        for row, token, lp in zip(alive.tolist(), chosen.tolist(), chosen_logp.tolist()):
            tokens[row].append(token)
            logps[row].append(lp)
        if on_token is not None:
            on_token(len(alive))
        done = torch.isin(chosen, eos)
        for row in alive[done].tolist():
            finish[row] = "stop"
        if step == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            alive, chosen, mask, last_pos = alive[keep], chosen[keep], mask[keep], last_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], -1)
        last_pos = last_pos + 1
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                    **cache_kw, use_cache=True)
        logits = out.logits[:, -1, :].float()

    results = [Decoded(tokens[r], finish[r], logps[r]) for r in range(rows)]
    return [results[p * n:(p + 1) * n] for p in range(batch)]


def _reserved_cache_layer(capacity: int):
    """A DynamicLayer whose keys and values live in a buffer with room for `capacity` positions:
    each step writes its new position into the buffer and the layer exposes the filled part as a
    view, where DynamicLayer's `torch.cat` copied the layer's whole cache every step (about 30 %
    of a decode step at the generate stage's shape, BENCHMARKS.md P1). Dropping finished rows or
    repeating rows copies only the filled part. Same values, so the same tokens."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self.length = 0
            self._keys = self._values = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self._keys is None or end > self._keys.shape[-2]:
                self._keys, self._values = (self._room(self._keys, key_states, end),
                                            self._room(self._values, value_states, end))
            self._keys[..., self.length:end, :] = key_states
            self._values[..., self.length:end, :] = value_states
            self.length = end
            self.keys = self._keys[..., :end, :]
            self.values = self._values[..., :end, :]
            return self.keys, self.values

        def _room(self, old, new, end: int):
            batch, heads, _, dim = new.shape
            buffer = new.new_empty((batch, heads, max(capacity, end), dim))
            if old is not None:
                buffer[..., :self.length, :] = old[..., :self.length, :]
            return buffer

        def _select(self, pick) -> None:
            # only the filled positions are copied, into buffers that keep their room
            for name in ("_keys", "_values"):
                old = getattr(self, name)
                filled = pick(old[..., :self.length, :])
                buffer = filled.new_empty((filled.shape[0], *old.shape[1:]))
                buffer[..., :self.length, :] = filled
                setattr(self, name, buffer)
            self.keys = self._keys[..., :self.length, :]
            self.values = self._values[..., :self.length, :]

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self.length:
                self._select(lambda t: t.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized and self.length:
                self._select(lambda t: t[indices, ...])

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("decode_batch never crops its cache")

    return ReservedLayer


def _common_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares."""
    first, length = prompts[0], min(len(p) for p in prompts)
    for other in prompts[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return length


def _cache_keyword(model) -> str:
    """`cache` where the model's forward takes it (the locked transformers), else the older
    `past_key_values`. inspect follows the deprecation wrapper to the real signature."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _sample(logits: torch.Tensor, temperature: float, top_p_warper,
            generator: torch.Generator | None, block: int = 256) -> torch.Tensor:
    """One token per row from softmax(logits / temperature) (top-p filtered when asked), by
    inverse transform sampling in two levels: a uniform draw per row picks a block of `block`
    words by the blocks' total weights, then a word within the block. Exact like
    `torch.multinomial`, which on CPU draws an exponential variate for every one of the 49k words
    of every row and cost more than the model's matmuls; the two levels avoid a cumulative sum
    over the whole vocabulary."""
    scores = logits
    if top_p_warper is not None:
        scores = top_p_warper(None, logits / temperature)  # -inf outside the nucleus
        temperature = 1.0
    # exp((s - max) / T), in place after the one subtraction (each pass over 49k words counts)
    weights = torch.sub(scores, scores.amax(-1, keepdim=True))
    if temperature != 1.0:
        weights.mul_(1.0 / temperature)
    weights.exp_()
    rows, vocab = weights.shape
    if vocab % block:
        weights = torch.nn.functional.pad(weights, (0, block - vocab % block))
    blocks = weights.view(rows, -1, block)
    totals = blocks.sum(-1).double()  # float32 sums of 256 words, then exact bookkeeping
    cdf = totals.cumsum(-1)
    draw = torch.rand((rows, 1), generator=generator, dtype=torch.float64,
                      device=weights.device) * cdf[:, -1:]
    # right: block k is drawn when cdf[k-1] <= u < cdf[k], so an all-zero block never is
    chosen_block = torch.searchsorted(cdf, draw, right=True).clamp_(max=cdf.shape[1] - 1)
    before = torch.where(chosen_block > 0, cdf.gather(-1, (chosen_block - 1).clamp(min=0)), 0.0)
    inner = blocks[torch.arange(rows, device=weights.device), chosen_block.squeeze(-1)]
    inner_cdf = inner.cumsum(-1, dtype=torch.float64)
    # the draw's place inside its block, rescaled to the block's own running sum
    share = (draw - before) / totals.gather(-1, chosen_block)
    target = torch.minimum(share * inner_cdf[:, -1:],
                           torch.nextafter(inner_cdf[:, -1:], torch.zeros_like(share)))
    word = torch.searchsorted(inner_cdf, target, right=True).clamp_(max=block - 1)
    return (chosen_block * block + word).squeeze(-1)
