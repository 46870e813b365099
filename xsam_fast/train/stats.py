"""Paired comparisons over seeds: mean difference, standard error, Student-t 95 % interval.

Methods trained under the same seed share initialisation, batch order and
augmentation, so their per-seed differences are paired samples; the interval
is ``mean ± t(0.975, n-1) * sd / sqrt(n)``. The t quantile is computed here
(no SciPy): the two-sided t distribution function has a closed form for
integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with ``df`` >= 1 degrees of freedom, ``t`` >= 0."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # 2/pi * (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    target = 2.0 * p - 1.0  # P(|T| <= q)
    lo, hi = 0.0, 1.0
    while t_two_sided_cdf(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass
class PairedDifference:
    """``a - b`` over the seeds both were run with (units of the inputs).

    ``se``, ``ci_low``, ``ci_high`` and ``t`` are None with fewer than two seeds.
    ``wins``/``losses``: seeds where ``a`` is larger / smaller.
    """

    a: str
    b: str
    n: int
    mean: float
    sd: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    wins: int
    losses: int

    def separated(self) -> bool:
        """Whether the interval excludes 0, i.e. ``|t|`` exceeds its t quantile
        (False with fewer than two seeds)."""
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(
    a: str, b: str, values_a: dict[Any, float], values_b: dict[Any, float], level: float = 0.95
) -> PairedDifference | None:
    """The paired difference ``values_a[s] - values_b[s]`` over their common keys ``s``
    (seeds), with a two-sided ``level`` t interval; None without a common key."""
    seeds = sorted(set(values_a) & set(values_b))
    if not seeds:
        return None
    diffs = [values_a[s] - values_b[s] for s in seeds]
    n, mean = len(diffs), statistics.fmean(diffs)
    sd = se = low = high = t = None
    if n > 1:
        sd = statistics.stdev(diffs)
        se = sd / math.sqrt(n)
        half = t_quantile(0.5 + level / 2, n - 1) * se
        low, high = mean - half, mean + half
        t = mean / se if se > 0 else (math.inf if mean else 0.0)
    return PairedDifference(
        a,
        b,
        n,
        mean,
        sd,
        se,
        low,
        high,
        t,
        wins=sum(d > 0 for d in diffs),
        losses=sum(d < 0 for d in diffs),
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
