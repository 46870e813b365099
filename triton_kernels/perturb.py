"""Passes that move the parameters without an optimizer update.

* ``backup_ascent``: ``backups <- params`` (optional), ``params += scale * grads``
* ``write_point``: ``out = backups + c_d (points - backups) + c_g grads`` (a search point)
* ``write_grad_restore``: ``grads <- c_d (points - backups) + c_g grads``, ``params <- backups``

``scale`` and ``coeffs`` are read from device memory. One launch per call.
"""
from __future__ import annotations

from typing import Sequence

import triton
import triton.language as tl
from torch import Tensor

from .common import load, locate, store
from .config import DTYPES, LAUNCH_OPTIONS
from .tables import Tables


@triton.jit
def _ascent_chunk(P, G, B, scale, t, offs, n, DT: tl.constexpr, ACC: tl.constexpr,
                  BACKUP: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    p = load(P, t, offs, n, DT, ACC, MASKED, ALIGNED)
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if BACKUP:
        store(B, t, offs, n, p, DT, MASKED, ALIGNED)
    store(P, t, offs, n, p + tl.load(scale).to(ACC) * g, DT, MASKED, ALIGNED)


@triton.jit
def _ascent_kernel(P, G, B, scale, numels, work, DT: tl.constexpr, ACC: tl.constexpr,
                   BACKUP: tl.constexpr, BLOCK: tl.constexpr, LARGE: tl.constexpr,
                   ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _ascent_chunk(P, G, B, scale, t, offs, n, DT, ACC, BACKUP, False, ALIGNED)
    else:
        _ascent_chunk(P, G, B, scale, t, offs, n, DT, ACC, BACKUP, True, ALIGNED)


@triton.jit
def _interp_chunk(OUT, X, B, G, coeffs, t, offs, n, DT: tl.constexpr, ACC: tl.constexpr,
                  RESTORE: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    b = load(B, t, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(X, t, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    direction = tl.load(coeffs).to(ACC) * d + tl.load(coeffs + 1).to(ACC) * g
    if RESTORE:  # G into grads, theta_0 into params
        store(G, t, offs, n, direction, DT, MASKED, ALIGNED)
        store(OUT, t, offs, n, b, DT, MASKED, ALIGNED)
    else:  # the point theta_0 + direction into out
        store(OUT, t, offs, n, b + direction, DT, MASKED, ALIGNED)


@triton.jit
def _interp_kernel(OUT, X, B, G, coeffs, numels, work, DT: tl.constexpr, ACC: tl.constexpr,
                   RESTORE: tl.constexpr, BLOCK: tl.constexpr, LARGE: tl.constexpr,
                   ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _interp_chunk(OUT, X, B, G, coeffs, t, offs, n, DT, ACC, RESTORE, False, ALIGNED)
    else:
        _interp_chunk(OUT, X, B, G, coeffs, t, offs, n, DT, ACC, RESTORE, True, ALIGNED)


def backup_ascent(tables: Tables, params: Sequence[Tensor], grads: Sequence[Tensor],
                  backups: Sequence[Tensor], scale: Tensor, backup: bool) -> None:
    lay = tables.layout(params)
    if lay.nblocks == 0:
        return
    lists = (params, grads, backups) if backup else (params, grads)
    ptrs = [tables.pointers(ts) for ts in lists]
    b_table = ptrs[2].table if backup else ptrs[0].table  # unused without backup
    dt, acc = DTYPES[params[0].dtype]
    _ascent_kernel[(lay.nblocks,)](ptrs[0].table, ptrs[1].table, b_table, scale, lay.numels,
                                   lay.work, DT=dt, ACC=acc, BACKUP=bool(backup),
                                   BLOCK=tables.block, LARGE=lay.large,
                                   ALIGNED=all(p.aligned for p in ptrs), **LAUNCH_OPTIONS)


def _interpolate(tables: Tables, out: Sequence[Tensor], points: Sequence[Tensor],
                 backups: Sequence[Tensor], grads: Sequence[Tensor], coeffs: Tensor,
                 restore: bool) -> None:
    lay = tables.layout(out)
    if lay.nblocks == 0:
        return
    ptrs = [tables.pointers(ts) for ts in (out, points, backups, grads)]
    dt, acc = DTYPES[out[0].dtype]
    _interp_kernel[(lay.nblocks,)](*(p.table for p in ptrs), coeffs, lay.numels, lay.work,
                                   DT=dt, ACC=acc, RESTORE=restore, BLOCK=tables.block,
                                   LARGE=lay.large, ALIGNED=all(p.aligned for p in ptrs),
                                   **LAUNCH_OPTIONS)


def write_point(tables: Tables, out: Sequence[Tensor], points: Sequence[Tensor],
                backups: Sequence[Tensor], grads: Sequence[Tensor], coeffs: Tensor) -> None:
    _interpolate(tables, out, points, backups, grads, coeffs, restore=False)


def write_grad_restore(tables: Tables, params: Sequence[Tensor], points: Sequence[Tensor],
                       backups: Sequence[Tensor], grads: Sequence[Tensor],
                       coeffs: Tensor) -> None:
    _interpolate(tables, params, points, backups, grads, coeffs, restore=True)
