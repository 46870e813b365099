"""Host side of the multi-tensor launches: packed tensor lists and what they hold.

One launch covers every tensor of a bucket. A list is packed once
(:meth:`Packer.pack`; params, backups and optimizer state once per step plan,
gradients once per backward pass) into a :class:`TritonList`, which holds

* its *pointer table*: the int64 ``data_ptr()`` of each tensor, on the device.
  The kernels read a tensor's 16-byte alignment from the low bits of its entries
  (one flag per tensor, no separate table);
* its *layout* (:class:`Layout`): the int64 lengths of the tensors and an int32
  work list of ``(tensor index, chunk index)`` pairs, one per program (chunks of
  ``block`` elements in memory order; a 0-size tensor has none). Lists packed
  ``like`` another share its layout object; lists packed on their own share one
  when their device, dtype, shapes and strides are equal, so a launch checks that
  its lists line up with an identity test.

Tables are cached by their content (LRU): packing the same tensors again, or
tensors of the same shapes, builds nothing. Host tensors reach a CUDA device
through pinned memory with ``non_blocking=True``: packing never synchronises.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor

from ..backends.packed import LayoutError, TensorList, check_layout
from ..coefficients import accumulation_dtype
from .config import DTYPES, LAUNCH_OPTIONS, check_block

#: above this length a tensor's offsets need int64 (with room for one chunk)
INT32_LIMIT = 2**31 - 1


def to_device(host: Tensor, device: torch.device) -> Tensor:
    """Copy a freshly built host tensor to ``device`` without synchronising."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class _LRU:
    """A small least-recently-used cache of built tables."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Hashable, Any] = OrderedDict()
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        value = self.data.get(key)
        if value is None:
            self.misses += 1
            value = self.data[key] = build()
            if len(self.data) > self.size:
                self.data.popitem(last=False)
        else:
            self.data.move_to_end(key)
        return value


class Layout:
    """Lengths and work list of a packed list, on its device.

    ``numels``: int64 [T]; ``work``: int32 [2 * nblocks], chunks of ``block`` elements;
    ``large``: some tensor needs int64 offsets; ``key``: (device, dtype, shapes and
    strides) it was built for.
    """

    __slots__ = ("numels", "work", "nblocks", "block", "large", "device", "dtype", "key")

    def __init__(self, key: tuple, block: int) -> None:
        device, dtype, shapes = key
        numels = [s.numel() for s, _ in shapes]
        n = torch.tensor(numels, dtype=torch.int64)
        chunks = (n + block - 1) // block
        self.nblocks = int(chunks.sum())
        tensor_index = torch.repeat_interleave(torch.arange(len(numels)), chunks)
        first = torch.cumsum(chunks, 0) - chunks  # first program of each tensor
        chunk_index = torch.arange(self.nblocks) - torch.repeat_interleave(first, chunks)
        work = torch.stack([tensor_index, chunk_index], dim=1).to(torch.int32).reshape(-1)
        self.large = max(numels, default=0) > INT32_LIMIT - block
        self.numels = to_device(n, device) if numels else None
        self.work = to_device(work, device) if numels else None
        self.block, self.device, self.dtype, self.key = block, device, dtype, key


class TritonList(TensorList):
    """A packed list: the tensors, their device pointer table and their layout."""

    __slots__ = ("table", "layout")

    def __init__(self, tensors: Sequence[Tensor], table: Tensor | None, layout: Layout) -> None:
        super().__init__(tensors)
        self.table = table
        self.layout = layout

    @property
    def device(self) -> torch.device | None:
        return self.layout.device

    @property
    def dtype(self) -> torch.dtype | None:
        return self.layout.dtype


def same_layout(first: TritonList, *others: TritonList | None) -> Layout:
    """The layout shared by ``first`` and ``others`` (None entries are skipped); raises
    :class:`LayoutError` when a list was packed for other shapes, strides or dtype, and
    :class:`TypeError` when it was not packed by this backend."""
    lists = (first, *others)
    for lst in lists:
        if lst is not None and not isinstance(lst, TritonList):
            raise TypeError(f"expected a list packed by the triton backend, got {type(lst)}")
    layout = first.layout
    for lst in others:
        if lst is not None and lst.layout is not layout and lst.layout.key != layout.key:
            raise LayoutError(
                "tensor lists of one call must be packed for the same device, "
                "dtype, shapes and strides (pack them with like=)"
            )
    return layout


class Packer:
    """Packs tensor lists into :class:`TritonList` s, for chunks of ``block`` elements.

    ``supports(device, dtype)`` says which tensors the kernels can run on. Layouts and
    pointer tables are cached (``size`` of each, least recently used dropped).
    """

    def __init__(
        self, block: int, supports: Callable[[torch.device, torch.dtype], bool], size: int = 256
    ) -> None:
        self.block = check_block(block)
        self.supports = supports
        self._layouts = _LRU(size)
        self._tables = _LRU(size)
        self._etas: dict[tuple, Tensor] = {}

    @property
    def builds(self) -> int:
        """How many layouts and pointer tables were built so far (cache misses)."""
        return self._layouts.misses + self._tables.misses

    def pack(
        self, tensors: Sequence[Tensor], like: TensorList | None = None, *, grads: bool = False
    ) -> TritonList:
        if like is not None and not isinstance(like, TritonList):
            raise TypeError(f"like= must be a list packed by the triton backend, got {type(like)}")
        check_layout(tensors, like, dense=True, grads=grads)
        if not tensors:
            return TritonList((), None, self._layout((None, None, ())))
        device, dtype = tensors[0].device, tensors[0].dtype
        if like is not None:
            if dtype != like.dtype:
                raise LayoutError(f"{dtype} tensors packed like {like.dtype} tensors")
            layout = like.layout
        else:
            if not self.supports(device, dtype):
                raise LayoutError(f"the triton backend cannot run on {dtype} tensors on {device}")
            layout = self._layout((device, dtype, tuple((t.shape, t.stride()) for t in tensors)))
        ptrs = tuple([t.data_ptr() for t in tensors])
        table = self._tables.get(
            (device, ptrs), lambda: to_device(torch.tensor(ptrs, dtype=torch.int64), device)
        )
        return TritonList(tensors, table, layout)

    def _layout(self, key: tuple) -> Layout:
        return self._layouts.get(key, lambda: Layout(key, self.block))

    def launch(
        self,
        kernel: Any,
        lay: Layout,
        args: tuple,
        eta: float | None,
        tail: tuple = (),
        **switches: bool,
    ) -> None:
        """``kernel(*args, eta, numels, work, *tail)``, one program per chunk of ``lay``.

        Adds the constexprs every multi-tensor kernel takes: the element and
        accumulation dtypes (``DT``, ``ACC``), ``ADAPTIVE`` (``eta`` given), ``BLOCK``
        and ``LARGE`` of ``lay``; then ``switches`` and the backend's launch options.
        """
        dt, acc = DTYPES[lay.dtype]
        kernel[(lay.nblocks,)](
            *args,
            self.eta(eta, accumulation_dtype(lay.dtype), lay.device),
            lay.numels,
            lay.work,
            *tail,
            DT=dt,
            ACC=acc,
            ADAPTIVE=eta is not None,
            BLOCK=lay.block,
            LARGE=lay.large,
            **switches,
            **LAUNCH_OPTIONS,
        )

    def eta(self, eta: float | None, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``eta`` as a 1-element ``dtype`` tensor on ``device`` (a placeholder, never read,
        when None). Built once per value and never dropped, so that a captured CUDA graph
        keeps reading a live tensor."""
        key = (device, dtype, 0.0 if eta is None else float(eta))
        value = self._etas.get(key)
        if value is None:
            value = self._etas[key] = to_device(torch.tensor([key[2]], dtype=dtype), device)
        return value
