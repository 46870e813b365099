"""Recognising a gradient that an earlier pass already used, without reading its values.

A mark holds a weak reference to one parameter's ``.grad`` and that tensor's version
counter (bumped by every in-place write). Against it a later pass's gradient is
``"fresh"`` (another tensor, as after ``zero_grad()`` with ``set_to_none=True``, or
written more than once since, as after ``zero_grad(set_to_none=False)`` and a
backward), ``"unchanged"`` (no backward ran since the mark) or ``"accumulated"``
(exactly one in-place write: a backward that added onto the marked gradient, the
missing ``zero_grad()`` between the passes of a manual-API step). Host only: no
device value is read.
"""

from __future__ import annotations

import weakref
from typing import Literal

from torch import Tensor

Verdict = Literal["fresh", "unchanged", "accumulated"]


class GradMark:
    """One parameter's gradient as a pass left it (weakly held)."""

    def __init__(self) -> None:
        self._owner: weakref.ref | None = None
        self._grad: weakref.ref | None = None
        self._version = 0
        self._view = False

    def set(self, owner: Tensor | None) -> None:
        """Mark ``owner.grad`` as used (no mark when it has none)."""
        grad = None if owner is None else owner.grad
        if grad is None:
            self.clear()
            return
        self._owner, self._grad = weakref.ref(owner), weakref.ref(grad)
        self._version, self._view = grad._version, grad._is_view()

    def clear(self) -> None:
        self._owner = self._grad = None

    def holds(self) -> bool:
        """Whether the marked parameter still holds the marked gradient tensor."""
        owner = None if self._owner is None else self._owner()
        return owner is not None and owner.grad is not None and owner.grad is self._tensor()

    def _tensor(self) -> Tensor | None:
        return None if self._grad is None else self._grad()

    def verdict(self) -> Verdict:
        """What the marked parameter's gradient is now, relative to the mark. A written
        view (DDP's ``gradient_as_bucket_view``) counts as fresh: the writes to its
        bucket move its version too."""
        if not self.holds():
            return "fresh"
        writes = self._tensor()._version - self._version  # type: ignore[union-attr]
        if writes == 0:
            return "unchanged"
        return "accumulated" if writes == 1 and not self._view else "fresh"
