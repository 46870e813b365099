"""Paired differences over seeds and the Student-t quantile behind their 95 % intervals."""

from __future__ import annotations

import math

import pytest

from xsam_fast.train.stats import paired_difference, t_quantile, t_two_sided_cdf

#: 0.975 quantiles of Student's t, from printed tables (4 decimals)
T_975 = {
    1: 12.7062,
    2: 4.3027,
    3: 3.1824,
    4: 2.7764,
    5: 2.5706,
    9: 2.2622,
    10: 2.2281,
    19: 2.0930,
    30: 2.0423,
    120: 1.9799,
}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_the_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T_975[df], abs=1e-4)


@pytest.mark.parametrize("df", [1, 2, 3, 7, 8, 25])
@pytest.mark.parametrize("p", [0.9, 0.95, 0.995])
def test_t_quantile_matches_scipy(df, p):
    stats = pytest.importorskip("scipy.stats")
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_t_cdf_limits():
    assert t_two_sided_cdf(0.0, 3) == 0.0
    assert t_two_sided_cdf(1e9, 4) == pytest.approx(1.0)
    assert t_two_sided_cdf(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| <= 1) = 1/2
    # df -> infinity tends to the normal distribution: P(|Z| <= 1.96) = 0.95
    assert t_two_sided_cdf(1.959964, 2000) == pytest.approx(0.95, abs=2e-4)
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_paired_difference_by_hand():
    a = {0: 97.0, 1: 96.0, 2: 98.0, 3: 95.0}
    b = {0: 80.0, 1: 82.0, 2: 81.0, 3: 83.0, 9: 10.0}  # seed 9 has no partner: ignored
    d = paired_difference("sam", "sgd", a, b)
    diffs = [17.0, 14.0, 17.0, 12.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)
    assert (d.n, d.mean, d.wins, d.losses) == (4, mean, 4, 0)
    assert d.sd == pytest.approx(sd) and d.se == pytest.approx(sd / 2)
    assert d.ci_low == pytest.approx(mean - T_975[3] * sd / 2, abs=1e-3)
    assert d.ci_high == pytest.approx(mean + T_975[3] * sd / 2, abs=1e-3)
    assert d.t == pytest.approx(mean / (sd / 2)) and d.separated()


def test_paired_difference_edge_cases():
    assert paired_difference("a", "b", {0: 1.0}, {1: 1.0}) is None
    one = paired_difference("a", "b", {0: 2.0}, {0: 1.0})
    assert one.mean == 1.0 and one.se is None and one.ci_low is None and not one.separated()
    noise = paired_difference("a", "b", {0: 1.0, 1: 3.0}, {0: 2.0, 1: 1.0})  # -1, +2
    assert noise.mean == 0.5 and noise.ci_low < 0 < noise.ci_high and not noise.separated()
    assert (noise.wins, noise.losses) == (1, 1)


def test_separated_is_the_interval_excluding_zero():
    """With 5 seeds, |mean / SE| = 2.5 is above 2 but below t(0.975, 4) = 2.78: not separated."""
    base, zeros = [-1.0, -0.5, 0.0, 0.5, 1.0], dict.fromkeys(range(5), 0.0)
    se = math.sqrt(0.625 / 5)  # sd of base: sqrt(0.625)
    for t, separated in ((2.5, False), (3.0, True)):
        d = paired_difference("a", "b", {s: x + t * se for s, x in enumerate(base)}, zeros)
        assert d.t == pytest.approx(t) and d.separated() == separated == (d.ci_low > 0)
