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


STRATEGIES: dict[str, Strategy] = {"grid": grid_search}
