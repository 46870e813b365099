"""What a step leaves to read: its angle, norms and skip flag, and the skipped-step count.

The values live on the device (the step never waits for them); reading them is
one host synchronisation, made only when asked (:meth:`ReportingMixin.stats`) or
at points that synchronise anyway (a search, a checkpoint). Steps skipped since
the last read are warned about at that point (``nonfinite="warn"``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .backends.base import FOUND_INF, NORM_D, NORM_G, PSI, SKIPPED

_NAMES = ("psi", "grad_norm", "d_norm", "skipped", "skipped_steps")


class ReportingMixin:
    """Statistics of the last step, for :class:`~xsam_fast.XSAM`."""

    @property
    def last_stats(self) -> dict[str, Any]:
        """``alpha`` and 0-d device tensors ``psi``, ``grad_norm``, ``d_norm``, ``skipped``
        (1.0 if the last step was skipped) and ``skipped_steps``, of the last step."""
        sc = self._stepper.scalars.first()
        if sc is None:
            return {}
        values = sc[[PSI, NORM_G, NORM_D, FOUND_INF, SKIPPED]].clone()
        return dict(alpha=self.alpha, **dict(zip(_NAMES, values.unbind(0))))

    def stats(self) -> dict[str, Any]:
        """:attr:`last_stats` as Python values (one host synchronisation); warns when steps
        were skipped since the last report."""
        stats = self.last_stats
        if not stats:
            return {}
        psi, grad_norm, d_norm, skipped, count = torch.stack([stats[k] for k in _NAMES]).tolist()
        self._report_skips(count)
        return dict(
            alpha=self.alpha,
            psi=psi,
            grad_norm=grad_norm,
            d_norm=d_norm,
            skipped=bool(skipped),
            skipped_steps=int(count),
        )

    def skipped_steps(self) -> int:
        """Steps skipped so far because of a non-finite value (one host read)."""
        sc = self._stepper.scalars.first()
        return 0 if sc is None else int(sc[SKIPPED])

    def _report_skips(self, count: float | None = None) -> None:
        if self.nonfinite == "none":
            return
        if count is None:
            count = self.skipped_steps()
        if count > self._reported_skips:
            warnings.warn(
                f"XSAM: {int(count - self._reported_skips)} step(s) skipped since the "
                f"last report ({int(count)} in all): a non-finite gradient, sum or "
                "coefficient; theta_0 was kept",
                RuntimeWarning,
                stacklevel=3,
            )
            self._reported_skips = count

    def _restore_skipped(self, count: int) -> None:
        self._reported_skips = float(count)
        self._stepper.scalars.set(SKIPPED, float(count))
