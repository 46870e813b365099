"""Strategies for the alpha search: which grid points to evaluate, in which order.

A strategy receives the grid (the authors' ``arange(0, alpha_max + 1e-5,
alpha_delta)``) and ``evaluate``, a callable that returns the losses at a batch
of alphas (forward passes only; one host synchronisation per call). It returns
the chosen alpha and the ``(alpha, loss)`` pairs it evaluated, in grid order.
"""
from __future__ import annotations

from typing import Callable, Sequence

from .coefficients import best_alpha

Evaluate = Callable[[Sequence[float]], list[float]]
Strategy = Callable[[Sequence[float], Evaluate], "tuple[float, list[tuple[float, float]]]"]


def grid_search(alphas: Sequence[float], evaluate: Evaluate) -> tuple[float, list[tuple[float, float]]]:
    """The authors' exhaustive search: every grid point, first strict maximum wins."""
    losses = evaluate(alphas)
    return best_alpha(alphas, losses), list(zip(alphas, losses))


def fibonacci_search(alphas: Sequence[float], evaluate: Evaluate) -> tuple[float, list[tuple[float, float]]]:
    """Fibonacci search of the grid's maximum, exact when the loss is unimodal in alpha.

    Brackets the maximiser with Fibonacci-spaced probes (indices past the grid
    count as -inf, which keeps unimodality), reusing one probe per shrink, then
    evaluates what is left of the bracket. About 7 of the 21 default grid
    points. On a curve with several local maxima it may return a local one:
    use ``"grid"`` there.
    """
    n = len(alphas)
    cache: dict[int, float] = {}

    def f(i: int) -> float:
        if i >= n:
            return float("-inf")
        if i not in cache:
            cache[i] = evaluate([alphas[i]])[0]
        return cache[i]

    fib = [1, 1]
    while fib[-1] < n + 1:
        fib.append(fib[-1] + fib[-2])
    k = len(fib) - 1
    lo, hi = -1, -1 + fib[k]  # exclusive bracket holding every index 0..n-1
    while k > 3:
        x1, x2 = lo + fib[k - 2], lo + fib[k - 1]
        if f(x1) < f(x2):
            lo = x1
        else:
            hi = x2
        k -= 1
    for i in range(max(lo + 1, 0), min(hi, n)):
        f(i)
    order = sorted(cache)
    picked = [alphas[i] for i in order]
    losses = [cache[i] for i in order]
    return best_alpha(picked, losses), list(zip(picked, losses))


STRATEGIES: dict[str, Strategy] = {"grid": grid_search, "fibonacci": fibonacci_search}
