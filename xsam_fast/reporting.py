"""What a step leaves to read: its angle, norms and skip flag, and the skipped-step count.

The values live on the device (the step never waits for them); reading them is
one host synchronisation, made only when asked (:meth:`ReportingMixin.stats`) or
at points that synchronise anyway (a search, a checkpoint). Steps skipped since
the last read are warned about at that point (``nonfinite="warn"``), and also
without any read: after every step the skipped-step count is copied to host
memory (:class:`SkipMirror`) and looked at once the copy has landed, so a run
whose steps are all skipped warns even when nobody calls ``stats()``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .backends.base import FOUND_INF, NORM_D, NORM_G, PSI, SKIPPED

_NAMES = ("psi", "grad_norm", "d_norm", "skipped", "skipped_steps")


class ReportingMixin:
    """Statistics of the last step, for :class:`~xsam_fast.XSAM`."""

    @property
    def last_stats(self) -> dict[str, Any]:
        """``alpha`` and 0-d device tensors ``psi`` (radians), ``grad_norm``, ``d_norm``,
        ``skipped`` (1.0 if the last step was skipped) and ``skipped_steps``, of the last
        step."""
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
                stacklevel=_outside_stacklevel(),
            )
            self._reported_skips = count

    def _poll_skips(self) -> None:
        """After a completed step (``nonfinite="warn"``): warn about skipped steps seen in
        the host copy of the count, at the 1st, 2nd, 4th, 8th... skip (``stats()`` reports
        every one). Never waits for the device."""
        sc = self._stepper.scalars.first()
        if self.nonfinite != "warn" or sc is None:
            return
        mirror = self._skip_mirror
        if mirror is None or mirror.device != sc.device:
            if not SkipMirror.supports(sc.device):
                return
            mirror = self._skip_mirror = SkipMirror(sc.device)
        count = mirror.poll(sc[SKIPPED : SKIPPED + 1])
        if count is not None and count >= max(1.0, 2 * self._reported_skips):
            self._report_skips(count)

    def _restore_skipped(self, count: int) -> None:
        self._reported_skips = float(count)
        self._stepper.scalars.set(SKIPPED, float(count))


_INSIDE = tuple(os.path.dirname(f) + os.sep for f in (__file__, torch.__file__))


def _outside_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for its caller, of the first frame outside
    xsam_fast and torch: the user's line that led to the warning."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return level


class SkipMirror:
    """A device's skipped-step count copied to host memory, read once the copy has landed.

    On the CPU the copy is done when it returns; on a CUDA device it is a
    ``non_blocking`` copy into pinned memory followed by an event, and the host reads
    the value a later step finds the event complete (``Event.query``, which does not
    wait). Nothing is copied while a CUDA graph is being captured. The host buffer is
    read through its NumPy view: host memory, not a device value.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self._host = torch.zeros(1, dtype=torch.float64, pin_memory=True)
            self._values = self._host.numpy()
            self._event: torch.cuda.Event | None = torch.cuda.Event()
        else:
            self._values = np.zeros(1)
            self._host = torch.from_numpy(self._values)
            self._event = None
        self._pending = False

    def __reduce__(self) -> tuple:  # a copy (deepcopy, pickle) gets a buffer of its own
        return SkipMirror, (self.device,)

    @staticmethod
    def supports(device: torch.device) -> bool:
        return device.type in ("cpu", "cuda")

    def poll(self, count: Tensor) -> float | None:
        """The count from the last copy that has landed (None if none has), and a new copy
        of ``count`` (a 1-element float64 tensor on :attr:`device`) started."""
        event = self._event
        if event is None:
            self._host.copy_(count)
            return float(self._values[0])
        if torch.cuda.is_current_stream_capturing() or (self._pending and not event.query()):
            return None
        value = float(self._values[0]) if self._pending else None
        self._host.copy_(count, non_blocking=True)
        event.record()
        self._pending = True
        return value
