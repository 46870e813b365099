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

from .common import asam_t, block_sum, div, load, locate
from .config import DTYPES, LAUNCH_OPTIONS, REDUCE_BLOCK
from .tables import Tables


@triton.jit
def _sumsq_chunk(X, W, eta, t, offs, n, partials, DT: tl.constexpr, ACC: tl.constexpr,
                 ADAPTIVE: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    x = load(X, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # ||T g||^2, T from theta_0 in W
        x = asam_t(load(W, t, offs, n, DT, ACC, MASKED, ALIGNED), eta, ACC) * x
    tl.store(partials + tl.program_id(0), block_sum(x * x))


@triton.jit
def _sumsq_kernel(X, W, eta, numels, work, partials, DT: tl.constexpr, ACC: tl.constexpr,
                  ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr, LARGE: tl.constexpr,
                  ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _sumsq_chunk(X, W, eta, t, offs, n, partials, DT, ACC, ADAPTIVE, False, ALIGNED)
    else:
        _sumsq_chunk(X, W, eta, t, offs, n, partials, DT, ACC, ADAPTIVE, True, ALIGNED)


@triton.jit
def _final_chunk(P, B, G, eta, t, offs, n, partials, nblocks, DT: tl.constexpr,
                 ACC: tl.constexpr, ADAPTIVE: tl.constexpr, MASKED: tl.constexpr,
                 ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    b = load(B, t, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(P, t, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # [||T g||^2, ||d / T||^2, <d, g>]
        tt = asam_t(b, eta, ACC)
        gu = tt * g
        du = div(d, tt, ACC)
    else:
        gu = g
        du = d
    tl.store(partials + pid, block_sum(gu * gu))
    tl.store(partials + nblocks + pid, block_sum(du * du))
    tl.store(partials + 2 * nblocks + pid, block_sum(d * g))


@triton.jit
def _final_kernel(P, B, G, eta, numels, work, partials, nblocks, DT: tl.constexpr,
                  ACC: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr,
                  LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _final_chunk(P, B, G, eta, t, offs, n, partials, nblocks, DT, ACC, ADAPTIVE, False,
                     ALIGNED)
    else:
        _final_chunk(P, B, G, eta, t, offs, n, partials, nblocks, DT, ACC, ADAPTIVE, True,
                     ALIGNED)


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


def _eta(tables: Tables, eta: float | None, acc: torch.dtype, device) -> Tensor:
    """``eta`` as a 1-element device tensor (a never-read placeholder when None)."""
    return tables.scalars((0.0 if eta is None else eta,), acc, device)


def sumsq(tables: Tables, tensors: Sequence[Tensor], acc: torch.dtype,
          weights: Sequence[Tensor] | None = None, eta: float | None = None) -> Tensor:
    """``sum_i ||tensors[i]||^2`` (with ``eta``: ``||(|weights[i]| + eta) tensors[i]||^2``)
    as a 0-d ``acc`` tensor; two launches."""
    lay = tables.layout(tensors)
    if lay.nblocks == 0:  # only 0-size tensors
        return torch.zeros((), dtype=acc, device=tensors[0].device)
    x = tables.pointers(tensors)
    w = tables.pointers(weights) if eta is not None else x
    dt, acc_tl = DTYPES[tensors[0].dtype]
    partials = torch.empty(lay.nblocks, dtype=acc, device=tensors[0].device)
    _sumsq_kernel[(lay.nblocks,)](x.table, w.table, _eta(tables, eta, acc, tensors[0].device),
                                  lay.numels, lay.work, partials, DT=dt, ACC=acc_tl,
                                  ADAPTIVE=eta is not None, BLOCK=tables.block,
                                  LARGE=lay.large, ALIGNED=x.aligned and w.aligned,
                                  **LAUNCH_OPTIONS)
    return _finish(partials, 1, lay.nblocks).reshape(())


def final_sums(tables: Tables, points: Sequence[Tensor], backups: Sequence[Tensor],
               grads: Sequence[Tensor], acc: torch.dtype, eta: float | None = None) -> Tensor:
    """``[||g||^2, ||d||^2, <d, g>]`` with ``d = points - backups`` (with ``eta``:
    ``[||T g||^2, ||d / T||^2, <d, g>]``, ``T = |backups| + eta``); two launches."""
    lay = tables.layout(points)
    if lay.nblocks == 0:
        return torch.zeros(3, dtype=acc, device=points[0].device)
    p, b, g = (tables.pointers(ts) for ts in (points, backups, grads))
    dt, acc_tl = DTYPES[points[0].dtype]
    partials = torch.empty(3 * lay.nblocks, dtype=acc, device=points[0].device)
    _final_kernel[(lay.nblocks,)](p.table, b.table, g.table,
                                  _eta(tables, eta, acc, points[0].device), lay.numels,
                                  lay.work, partials, lay.nblocks, DT=dt, ACC=acc_tl,
                                  ADAPTIVE=eta is not None, BLOCK=tables.block,
                                  LARGE=lay.large, ALIGNED=p.aligned and b.aligned and g.aligned,
                                  **LAUNCH_OPTIONS)
    return _finish(partials, 3, lay.nblocks)
