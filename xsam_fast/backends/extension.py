"""Backends whose phases are functions of a compiled extension (the C++ CPU and CUDA ones).

Both extensions expose the same functions, with the arguments of
:class:`~xsam_fast.backends.base.Backend`'s phases in the same order, taking their own
packed lists (a C++ ``PackedList``: the tensors, their layout and their addresses,
checked once when packed). :class:`ExtensionBackend` passes the calls through;
a subclass names its extension module and says where it runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

from torch import Tensor

from .base import Backend
from .packed import LayoutError, TensorList


def import_error_text(exc: BaseException) -> str:
    """``exc`` and the exceptions it was raised from, as ``"Type: message"`` joined by
    ``" <- "``: pybind11 reports a failing module initialiser only as ``ImportError:
    initialization failed``, with the reason in ``__cause__``."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


class PackedTensorList(TensorList):
    """A list packed by an :class:`ExtensionBackend`: the tensors and the extension's
    ``PackedList`` of them."""

    __slots__ = ("packed", "owner")

    def __init__(self, tensors: Sequence[Tensor], packed: object, owner: str) -> None:
        super().__init__(tensors)
        self.packed = packed
        self.owner = owner


class ExtensionBackend(Backend):
    """Phases as calls into :meth:`extension` (``sumsq``, ``final_sums``, ...)."""

    @classmethod
    def extension(cls) -> ModuleType:
        """The compiled module (only called when the backend is available)."""
        raise NotImplementedError

    def _mine(self, lst: TensorList) -> bool:
        return isinstance(lst, PackedTensorList) and lst.owner == self.name

    def _packed(self, lst: TensorList) -> object:
        """The C++ side of a list packed by this backend (LayoutError for any other list)."""
        if not self._mine(lst):
            raise LayoutError(
                f"a {type(lst).__name__} was not packed by the {self.name} backend "
                "(pack it with this backend's pack())"
            )
        return lst.packed

    def _maybe(self, lst: TensorList | None) -> object | None:
        return None if lst is None else self._packed(lst)

    # ------------------------------------------------------------------ lists
    def pack(
        self, tensors: Sequence[Tensor], like: TensorList | None = None, *, grads: bool = False
    ) -> PackedTensorList:
        """Checked in C++ at a few nanoseconds per tensor (so ``grads`` changes nothing);
        raises :class:`~xsam_fast.backends.base.LayoutError` for tensors this backend
        cannot step together. A ``like`` packed by another backend is packed here first."""
        if like is not None and not (
            isinstance(like, PackedTensorList) and like.owner == self.name
        ):
            like = self.pack(like.tensors)
        tensors = tuple(tensors)
        ext = self.extension()
        return PackedTensorList(
            tensors, ext.PackedList(tensors, None if like is None else like.packed), self.name
        )

    # ------------------------------------------------------------------ reductions
    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        self.extension().sumsq(self._packed(grads), out, accumulate, self._maybe(weights), eta)

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        p = self._packed
        self.extension().final_sums(p(points), p(backups), p(grads), out, accumulate, eta)

    # ------------------------------------------------------------------ scalars
    def ascent_scalars(self, sc, *, first, check):
        self.extension().ascent_scalars(sc, first, check)

    def update_scalars(self, sc, *, check):
        self.extension().update_scalars(sc, check)

    def plain_scalars(self, sc, *, check):
        self.extension().plain_scalars(sc, check)

    # ------------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        p = self._packed
        self.extension().backup_ascent(p(params), p(grads), p(backups), sc, hyper, backup, eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        p = self._packed
        self.extension().write_point(p(out), p(points), p(backups), p(grads), coeffs, eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        p = self._packed
        self.extension().write_grad_restore(p(params), p(points), p(backups), p(grads), coeffs, eta)

    def sgd_update(self, params, points, backups, grads, bufs, sc, hyper, *, weight_decay,
                   momentum, nesterov, maximize, init_bufs, eta=None):  # fmt: skip
        p = self._packed
        self.extension().sgd_update(
            p(params), p(points), p(backups), p(grads), self._maybe(bufs), sc, hyper,
            weight_decay, momentum, nesterov, maximize, init_bufs, eta,
        )  # fmt: skip

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, steps, sc,
                    hyper, *, weight_decay, decoupled, maximize, eta=None):  # fmt: skip
        p = self._packed
        self.extension().adam_update(
            p(params), p(points), p(backups), p(grads), p(exp_avgs), p(exp_avg_sqs), steps, sc,
            hyper, weight_decay, decoupled, maximize, eta,
        )  # fmt: skip
