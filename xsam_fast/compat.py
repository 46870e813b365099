"""Drop-in for the authors' class: ``from xsam_fast.compat import XSAM``.

Same constructor as the authors' ``utils/xsam.py`` (all positional, ``rho`` PER
ASCENT STEP as their ``train.py`` passes it after dividing by ``steps``), so
their training script runs unchanged but for the import line.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from . import validation as V
from .optimizer import XSAM as _XSAM


class XSAM(_XSAM):
    """The authors' signature on top of :class:`xsam_fast.XSAM` (``rho`` per ascent step)."""

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: type[torch.optim.Optimizer],
        steps: int,
        rho: float,
        rho_max: float,
        alpha: float,
        alpha_max: float,
        alpha_delta: float,
        eps: float,
        **kwargs: Any,
    ) -> None:
        steps = V.integer("steps", steps, minimum=1)
        rho = V.number("rho (the length of one ascent step here)", rho, minimum=0)
        super().__init__(
            params,
            base_optimizer,
            rho=rho * steps,
            steps=steps,
            rho_max=rho_max,
            alpha=alpha,
            alpha_max=alpha_max,
            alpha_delta=alpha_delta,
            eps=eps,
            **kwargs,
        )
