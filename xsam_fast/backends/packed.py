"""Packed tensor lists, and the layouts the fast backends accept.

A backend packs each list of a bucket once per step plan (the gradients once per
backward pass): :class:`TensorList` keeps the tensors, and a backend's subclass
what its kernels need. :func:`check_layout` is the packing check: one device and
dtype, shapes (and, for the fast backends, strides) matching the list packed
first, dense and non-overlapping storage (:func:`is_dense`) where the kernels
walk memory in order.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor


class LayoutError(ValueError):
    """Tensors a backend cannot step together (device, dtype, shape, strides, density)."""


class TensorList:
    """A list of tensors packed by a backend (:meth:`Backend.pack`).

    The base class keeps the tensors; a backend may subclass it to keep what its
    kernels need (a C++ vector, a device pointer table). Packed lists are built
    once per step plan (params, backups, optimizer state) or once per backward
    pass (grads) and must not be mutated.
    """

    __slots__ = ("tensors", "_strides")

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = tuple(tensors)
        self._strides: list[tuple[int, ...]] | None = None

    @property
    def strides(self) -> list[tuple[int, ...]]:
        """The tensors' strides (computed once)."""
        if self._strides is None:
            self._strides = [t.stride() for t in self.tensors]
        return self._strides

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __getitem__(self, i: int) -> Tensor:
        return self.tensors[i]


def is_dense(t: Tensor) -> bool:
    """Whether ``t`` is dense and non-overlapping: its elements fill
    ``[data_ptr, data_ptr + numel)`` exactly (contiguous, channels_last, any
    permutation of dims). What ATen calls ``is_non_overlapping_and_dense``."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def check_layout(
    tensors: Sequence[Tensor], like: TensorList | None, *, dense: bool, grads: bool = False
) -> None:
    """Raise :class:`LayoutError` unless ``tensors`` share one device and dtype and match
    ``like`` index for index in device and shape; with ``dense``, they must also be dense
    and non-overlapping and have ``like``'s strides (the fast backends step memory in
    order). For packing; O(len(tensors)) in Python.

    ``grads``: ``tensors`` are the gradients (``p.grad``) of ``like``'s tensors, whose
    device, dtype and shape torch guarantees to be the parameters'; only their strides
    are compared (one call per tensor: this runs at every backward pass)."""
    if grads and like is not None and len(tensors) == len(like):
        strides = [t.stride() for t in tensors]  # (a missing gradient raises here)
        if not dense or strides == like.strides:
            return
    if not tensors:
        if like:
            raise LayoutError(f"0 tensors, {len(like)} expected")
        return
    device, dtype = tensors[0].device, tensors[0].dtype
    if like is not None and len(like) != len(tensors):
        raise LayoutError(f"{len(tensors)} tensors, {len(like)} expected")
    for i, t in enumerate(tensors):
        if t.device != device or t.dtype != dtype:
            raise LayoutError(
                f"tensor {i} is a {t.dtype} tensor on {t.device}, the first a "
                f"{dtype} tensor on {device}"
            )
        if dense and not is_dense(t):
            raise LayoutError(
                f"tensor {i} (shape {tuple(t.shape)}, strides {t.stride()}) is "
                "not dense and non-overlapping"
            )
        if like is not None:
            ref = like.tensors[i]
            if (
                t.shape != ref.shape
                or t.device != ref.device
                or (dense and t.stride() != ref.stride())
            ):
                raise LayoutError(
                    f"tensor {i}: shape {tuple(t.shape)}, strides {t.stride()} on "
                    f"{t.device}; expected {tuple(ref.shape)}, {ref.stride()} on "
                    f"{ref.device}"
                )
