"""The unbiased pass@k estimator (loop.pass_at_k) against brute-force enumeration, and the config
rules of evaluate.samples / evaluate.pass_k."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from loop.config import ConfigError, build_config
from loop.pass_at_k import mean_pass_at_k, pass_at_k


def brute_force(n: int, c: int, k: int) -> Fraction:
    """The share of all k-subsets of n answers (the first c passing) holding a passing one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_enumeration_of_every_k_subset(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12), \
                (n, c, k)


def test_edge_values():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every 3 of 5 holds a pass
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the pass rate


def test_large_n_is_stable_where_the_binomials_overflow_floats():
    n, c, k = 2000, 3, 1000
    with pytest.raises(OverflowError):
        float(math.comb(n, k))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_impossible_counts_are_refused(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_over_problems():
    counts = [(4, 0), (4, 1), (4, 4)]
    want = (0.0 + float(brute_force(4, 1, 2)) + 1.0) / 3
    assert mean_pass_at_k(counts, 2) == pytest.approx(want)
    assert mean_pass_at_k([], 2) == 0.0


def test_config_defaults_and_k_list():
    assert build_config("arithmetic").evaluate.ks == []  # off by default
    ev = build_config("arithmetic", sets=["evaluate.samples=8"]).evaluate
    assert ev.ks == [1, 8] and ev.temperature is None
    ev = build_config("arithmetic", sets=["evaluate.samples=8",
                                          "evaluate.pass_k=[4, 1, 4]"]).evaluate
    assert ev.ks == [1, 4]


@pytest.mark.parametrize("sets, message", [
    (["evaluate.samples=4", "evaluate.pass_k=[1, 8]"],
     "config error: evaluate: pass_k 8 is not within 1..samples (4): pass@k needs k <= the "
     "samples drawn"),
    (["evaluate.pass_k=[1]"], "pass_k 1 is not within 1..samples (0)"),
    (["evaluate.samples=4", "evaluate.pass_k=[]"], "pass_k is empty"),
    (["evaluate.samples=4", "evaluate.pass_k=[0]"], "pass_k 0 is not within 1..samples (4)"),
])
def test_k_beyond_the_samples_is_a_one_line_error(sets, message):
    with pytest.raises(ConfigError) as caught:
        build_config("arithmetic", sets=sets)
    assert message in str(caught.value) and "\n" not in str(caught.value)
