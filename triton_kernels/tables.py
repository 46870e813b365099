"""Host side of the multi-tensor launches: work lists, pointer tables, scalars.

One launch covers every tensor of a bucket. The kernels find their data through

* a *layout*: the int64 lengths of the bucket's tensors and an int32 work list
  of ``(tensor index, chunk index)`` pairs, one per program (chunks of
  ``block`` elements; a 0-size tensor has none). It depends on the lengths only.
* one *pointer table* per tensor list: the int64 ``data_ptr()`` of each tensor.
  It depends on the addresses only, so a step in which only the gradients were
  reallocated rebuilds only the gradient table.
* small *scalar* tensors of hyper-parameters in the accumulation dtype (Triton
  passes Python floats as float32, which would lose float64 precision).

All three are built on the host and cached by their content (LRU), so a step
in which nothing moved builds nothing. They reach a CUDA device through pinned
memory with ``non_blocking=True``: building a table never synchronises.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor

from .config import ALIGN_HINTS, check_block

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


@dataclass(frozen=True)
class Layout:
    """Lengths and work list of a bucket, on its device."""

    numels: Tensor  # int64 [T]
    work: Tensor  # int32 [2 * nblocks]: (tensor index, chunk index) per program
    nblocks: int
    large: bool  # some tensor needs int64 offsets


@dataclass(frozen=True)
class Pointers:
    """Pointer table of one tensor list, on its device."""

    table: Tensor  # int64 [T]
    aligned: bool  # every address is a multiple of 16 bytes


class Tables:
    """Cached layouts, pointer tables and scalars for chunks of ``block`` elements."""

    def __init__(self, block: int, size: int = 256) -> None:
        self.block = check_block(block)
        self._layouts = _LRU(size)
        self._pointers = _LRU(size)
        self._scalars = _LRU(size)

    @property
    def builds(self) -> int:
        """How many tables were built so far (cache misses), for tests."""
        return self._layouts.misses + self._pointers.misses + self._scalars.misses

    def layout(self, tensors: Sequence[Tensor]) -> Layout:
        device = tensors[0].device
        numels = tuple(t.numel() for t in tensors)
        return self._layouts.get((device, numels), lambda: self._build_layout(numels, device))

    def _build_layout(self, numels: tuple[int, ...], device: torch.device) -> Layout:
        n = torch.tensor(numels, dtype=torch.int64)
        chunks = (n + self.block - 1) // self.block
        nblocks = int(chunks.sum())
        tensor_index = torch.repeat_interleave(torch.arange(len(numels)), chunks)
        first = torch.cumsum(chunks, 0) - chunks  # first program of each tensor
        chunk_index = torch.arange(nblocks) - torch.repeat_interleave(first, chunks)
        work = torch.stack([tensor_index, chunk_index], dim=1).to(torch.int32).reshape(-1)
        large = max(numels, default=0) > INT32_LIMIT - self.block
        return Layout(to_device(n, device), to_device(work, device), nblocks, large)

    def pointers(self, tensors: Sequence[Tensor]) -> Pointers:
        device = tensors[0].device
        ptrs = tuple(t.data_ptr() for t in tensors)
        return self._pointers.get((device, ptrs), lambda: Pointers(
            to_device(torch.tensor(ptrs, dtype=torch.int64), device),
            ALIGN_HINTS and all(p % 16 == 0 for p in ptrs)))

    def scalars(self, values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (device, dtype, tuple(float(v) for v in values))
        return self._scalars.get(key, lambda: to_device(torch.tensor(key[2], dtype=dtype), device))
