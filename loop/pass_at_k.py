"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code", section 2.1).

For one problem with `n` sampled answers of which `c` passed, the chance that at least one of
`k` answers drawn without replacement from those `n` passes is

    pass@k = 1 - C(n - c, k) / C(n, k)

and its mean over problems estimates the model's pass@k without the bias of drawing only k
answers. The binomials overflow floats long before n is large (C(1000, 500) has 300 digits), so
the ratio is computed as the product prod_{i = n-c+1}^{n} (1 - k / i), which only ever holds
numbers in [0, 1].
"""

from __future__ import annotations

from typing import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with `n` samples of which `c` passed (0 <= c <= n, 1 <= k <= n).

    Raises ValueError for counts outside those ranges: an estimate from impossible counts would
    be silently wrong."""
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and n >= 1 (got n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n (got k={k}, n={n})")
    if n - c < k:  # every draw of k holds a passing answer
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    fail_all = 1.0
    for i in range(n - c + 1, n + 1):
        fail_all *= 1.0 - k / i
    return 1.0 - fail_all


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """The mean of `pass_at_k(n, c, k)` over problems given as (n, c) pairs; 0.0 for none."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    return sum(values) / len(values) if values else 0.0
