"""The store's fast encoders write exactly what the plain json calls wrote: ids are found again by
their bytes, and stored JSON is read by users' SQL."""

from __future__ import annotations

import hashlib
import json

import pytest

from loop.schema import stable_id
from loop.store import _json, _json_ints, _json_text

PARTS = [
    ("run-1", "task-2"),
    ("a b", "ünïcode ✓", "日本"),
    ('has "quotes"', "back\\slash"),
    ("tab\there", "new\nline", "\x00nul", "\u2028sep"),
    ("\ud800 lone surrogate",),
    ("run", 3, 1.5, None, True),
    ("nested", ["x", 1], {"b": 2, "a": 1}),
    ("",),
    (),
]


def _old_stable_id(*parts, length=20):
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@pytest.mark.parametrize("parts", PARTS, ids=repr)
def test_stable_id_is_byte_for_byte_the_json_encoders_id(parts):
    if any(isinstance(p, str) and "\ud800" in p for p in parts):
        # a lone surrogate cannot be UTF-8 encoded: the old id refused it, and so does the new
        with pytest.raises(UnicodeEncodeError):
            json.dumps(parts, ensure_ascii=False).encode()
        with pytest.raises(UnicodeEncodeError):
            stable_id(*parts)
        return
    assert stable_id(*parts) == _old_stable_id(*parts)
    assert stable_id(*parts, length=8) == _old_stable_id(*parts, length=8)


@pytest.mark.parametrize("values", [[1, 2, 3], [], [0, -5, 2**40], (1, 2), [True, 2], [1.0, 2],
                                    None], ids=repr)
def test_token_ids_json_is_the_json_of_the_list(values):
    expected = None if values is None else json.dumps(values, ensure_ascii=False)
    assert _json_ints(values) == expected


@pytest.mark.parametrize("value", [{}, {"a": "ü"}, ["x", {"k": None}], "plain", 3, None,
                                   {"bad": "\udcff"}], ids=repr)
def test_json_text_matches_json_dumps_and_keeps_lone_surrogates(value):
    text = _json(value)
    if value is None:
        assert text is None
        return
    assert json.loads(text) == value
    text.encode("utf-8")  # storable
    if "\udcff" not in json.dumps(value, ensure_ascii=False):
        assert text == json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("value", [
    [{"role": "system", "content": "Answer."}, {"role": "user", "content": "ünï \"q\" \\ \n"}],
    {"b": 1, "a": [1.5, -0.0, 1e300, 2**70, True, False, None]}, {1: "int key", 2.5: "x",
    True: "y", None: "z"}, [float("nan"), float("inf"), -float("inf")], "\u2028 \x00", 7,
    3.25, (1, (2, 3)), {"nested": {"deep": [{"k": "v"}]}}, [], {}], ids=repr)
def test_json_text_is_json_dumps(value):
    """The encoder built once writes exactly what json.dumps(ensure_ascii=False) writes."""
    assert _json_text(value) == json.dumps(value, ensure_ascii=False)


def test_json_text_refuses_what_json_dumps_refuses():
    with pytest.raises(TypeError):
        _json_text({"a": object()})
    loop = []
    loop.append(loop)
    with pytest.raises((ValueError, RecursionError)):  # no circular check: it recurses
        _json_text(loop)
    assert _json_text({"after": "errors"}) == '{"after": "errors"}'  # no state left behind


def test_rows_inserted_sorted_keep_the_first_of_duplicates(store, tmp_path):
    from loop.schema import Verdict
    from test_search_index import _attempt, _setup

    task = _setup(store, tmp_path)
    store.insert_attempts([_attempt(task, i, str(i)) for i in range(3)])
    # out of attempt-id order, and a1's verdict twice: the first one given is the one kept
    store.insert_verdicts([("a2", "math", Verdict(passed=True), 1.0),
                           ("a1", "math", Verdict(passed=False, feedback="first"), 1.0),
                           ("a0", "math", Verdict(passed=True), 1.0),
                           ("a1", "math", Verdict(passed=True, feedback="second"), 1.0)])
    kept = store.verdicts(["a0", "a1", "a2"])
    assert {a: v["math"].passed for a, v in kept.items()} == {"a0": True, "a1": False,
                                                              "a2": True}
    assert kept["a1"]["math"].feedback == "first"


def test_rows_go_in_batches_and_land_in_one_transaction(store, tmp_path, monkeypatch):
    """Store._insert_many builds ROWS_PER_INSERT rows at a time: every row is stored, in the order
    given, a duplicate in a later batch is still ignored, and a row that fails in a later batch
    takes the earlier batches with it (one transaction), inside a stage's or on its own."""
    import sqlite3

    import loop.store
    from test_search_index import _attempt, _setup

    monkeypatch.setattr(loop.store, "ROWS_PER_INSERT", 3)
    task = _setup(store, tmp_path)
    attempts = [_attempt(task, i, str(i)) for i in range(7)]
    store.insert_attempts([*attempts, attempts[1].model_copy(update={"completion": "dup"})])
    rows = store.db.execute("select id, completion from attempts order by rowid").fetchall()
    assert rows == [(f"a{i}", str(i)) for i in range(7)]

    dangling = _attempt(task, 9, "orphan").model_copy(update={"parent_id": "no-such-attempt"})
    fresh = [_attempt(task, i, str(i)) for i in range(10, 15)]
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_attempts([*fresh, dangling])  # on its own: its own transaction
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction():  # a stage's
            store.insert_attempts([*fresh, dangling])
    assert store.db["attempts"].count == 7
