"""decode_batch's KV cache layer: it writes each step into room reserved up front (no copy of
the whole cache per step, as DynamicLayer's torch.cat makes) and holds exactly what a
DynamicLayer holds through every update, row selection and repeat."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from loop_hf.decoding import _reserved_cache_layer


def _kv(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, length, 8, generator=g),
            torch.randn(batch, 3, length, 8, generator=g))


def test_the_reserved_layer_holds_what_a_dynamic_layer_holds_without_regrowing():
    reserved, plain = _reserved_cache_layer(capacity=12)(), DynamicLayer()
    steps = [("update", _kv(1, 4, 0)), ("repeat", 3), ("update", _kv(3, 2, 1)),
             ("update", _kv(3, 1, 2)), ("select", torch.tensor([0, 2])),
             ("update", _kv(2, 1, 3)), ("update", _kv(2, 1, 4))]
    storage = None
    for op, arg in steps:
        for layer in (reserved, plain):
            if op == "update":
                out = layer.update(*arg)
            elif op == "repeat":
                layer.batch_repeat_interleave(arg)
            else:
                layer.batch_select_indices(arg)
        if op == "update":
            assert torch.equal(out[0], plain.keys) and torch.equal(out[1], plain.values)
            # a decode step writes into the same buffer: the keys' storage does not move
            if storage is not None and arg[0].shape[-2] == 1:
                assert reserved.keys.untyped_storage().data_ptr() == storage
            storage = reserved.keys.untyped_storage().data_ptr()
        else:
            storage = None  # selecting and repeating rows copy the filled part, once
        assert torch.equal(reserved.keys, plain.keys)
        assert torch.equal(reserved.values, plain.values)
        assert reserved.get_seq_length() == plain.get_seq_length()
    assert reserved.get_seq_length() == 9


def test_the_layer_grows_past_its_reserve_when_asked_to():
    layer = _reserved_cache_layer(capacity=2)()
    first, second = _kv(2, 2, 0), _kv(2, 3, 1)
    layer.update(*first)
    keys, values = layer.update(*second)
    assert torch.equal(keys, torch.cat([first[0], second[0]], -2))
    assert torch.equal(values, torch.cat([first[1], second[1]], -2))
