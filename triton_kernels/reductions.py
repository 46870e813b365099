"""Deterministic multi-tensor reductions: ``sum ||x||^2`` and the final sums.

Two stages, no atomics: each program writes the partial sums of its chunk into
its own slot, then one small kernel adds the slots of each sum in a fixed
order. The same inputs and block size give bit-identical results.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import block_sum, load, locate
from .config import DTYPES, LAUNCH_OPTIONS, REDUCE_BLOCK
from .tables import Tables


@triton.jit
def _sumsq_chunk(X, t, offs, n, partials, DT: tl.constexpr, ACC: tl.constexpr,
                 MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    x = load(X, t, offs, n, DT, ACC, MASKED, ALIGNED)
    tl.store(partials + tl.program_id(0), block_sum(x * x))


@triton.jit
def _sumsq_kernel(X, numels, work, partials, DT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK: tl.constexpr, LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _sumsq_chunk(X, t, offs, n, partials, DT, ACC, False, ALIGNED)
    else:
        _sumsq_chunk(X, t, offs, n, partials, DT, ACC, True, ALIGNED)


@triton.jit
def _final_chunk(P, B, G, t, offs, n, partials, nblocks, DT: tl.constexpr, ACC: tl.constexpr,
                 MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    d = load(P, t, offs, n, DT, ACC, MASKED, ALIGNED) - load(B, t, offs, n, DT, ACC, MASKED,
                                                            ALIGNED)
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    tl.store(partials + pid, block_sum(g * g))
    tl.store(partials + nblocks + pid, block_sum(d * d))
    tl.store(partials + 2 * nblocks + pid, block_sum(d * g))


@triton.jit
def _final_kernel(P, B, G, numels, work, partials, nblocks, DT: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr, LARGE: tl.constexpr,
                  ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _final_chunk(P, B, G, t, offs, n, partials, nblocks, DT, ACC, False, ALIGNED)
    else:
        _final_chunk(P, B, G, t, offs, n, partials, nblocks, DT, ACC, True, ALIGNED)


@triton.jit
def _finish_kernel(partials, out, nblocks, ACC: tl.constexpr, RBLOCK: tl.constexpr):
    """``out[k] = sum(partials[k * nblocks : (k + 1) * nblocks])``, in a fixed order."""
    k = tl.program_id(0)
    acc = tl.full([RBLOCK], 0, ACC)  # tl.zeros is a library function: see common.block_sum
    for s in range(0, nblocks, RBLOCK):
        offs = s + tl.arange(0, RBLOCK)
        acc += tl.load(partials + k * nblocks + offs, mask=offs < nblocks, other=0.0)
    tl.store(out + k, block_sum(acc))


#: accumulation dtypes (torch -> Triton) of the partial sums
DTYPES_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def _finish(partials: Tensor, nsums: int, nblocks: int) -> Tensor:
    out = torch.empty(nsums, dtype=partials.dtype, device=partials.device)
    _finish_kernel[(nsums,)](partials, out, nblocks, ACC=DTYPES_ACC[partials.dtype],
                             RBLOCK=REDUCE_BLOCK, **LAUNCH_OPTIONS)
    return out


def sumsq(tables: Tables, tensors: Sequence[Tensor], acc: torch.dtype) -> Tensor:
    """``sum_i ||tensors[i]||^2`` as a 0-d ``acc`` tensor; two launches."""
    lay = tables.layout(tensors)
    if lay.nblocks == 0:  # only 0-size tensors
        return torch.zeros((), dtype=acc, device=tensors[0].device)
    x = tables.pointers(tensors)
    dt, acc_tl = DTYPES[tensors[0].dtype]
    partials = torch.empty(lay.nblocks, dtype=acc, device=tensors[0].device)
    _sumsq_kernel[(lay.nblocks,)](x.table, lay.numels, lay.work, partials, DT=dt, ACC=acc_tl,
                                  BLOCK=tables.block, LARGE=lay.large, ALIGNED=x.aligned,
                                  **LAUNCH_OPTIONS)
    return _finish(partials, 1, lay.nblocks).reshape(())


def final_sums(tables: Tables, points: Sequence[Tensor], backups: Sequence[Tensor],
               grads: Sequence[Tensor], acc: torch.dtype) -> Tensor:
    """``[||g||^2, ||d||^2, <d, g>]`` with ``d = points - backups``; two launches."""
    lay = tables.layout(points)
    if lay.nblocks == 0:
        return torch.zeros(3, dtype=acc, device=points[0].device)
    p, b, g = (tables.pointers(ts) for ts in (points, backups, grads))
    dt, acc_tl = DTYPES[points[0].dtype]
    partials = torch.empty(3 * lay.nblocks, dtype=acc, device=points[0].device)
    _final_kernel[(lay.nblocks,)](p.table, b.table, g.table, lay.numels, lay.work, partials,
                                  lay.nblocks, DT=dt, ACC=acc_tl, BLOCK=tables.block,
                                  LARGE=lay.large, ALIGNED=p.aligned and b.aligned and g.aligned,
                                  **LAUNCH_OPTIONS)
    return _finish(partials, 3, lay.nblocks)
